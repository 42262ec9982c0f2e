"""What identifies a loaded model in a run's manifest: sha256 of its configuration, weights and tokenizer."""

from __future__ import annotations

import hashlib
import json

import torch


def sha256_config(config) -> str:
    """The configuration's settings, less what changes with the transformers version or how it was loaded."""
    settings = config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "_attn_implementation"):
        settings.pop(volatile, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def sha256_weights(model: torch.nn.Module) -> str:
    """Every tensor of the state dict by name, with its dtype and bytes (as loaded: before any dtype cast)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


#: A fixed text whose tokenization enters the tokenizer's hash (with the vocabulary).
TOKENIZER_PROBE = "Token relevance, 2025: a probe sentence (with punctuation) -- and UNUSUAL words."


def sha256_tokenizer(tokenizer) -> str:
    """The vocabulary, the special tokens and how a fixed probe text is tokenized (not the class or its path)."""
    vocabulary = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else []
    special = {str(name): str(value) for name, value in getattr(tokenizer, "special_tokens_map", {}).items()}
    probe = tokenizer(TOKENIZER_PROBE)["input_ids"]
    settings = {"vocabulary": vocabulary, "special": special, "probe": list(probe)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
