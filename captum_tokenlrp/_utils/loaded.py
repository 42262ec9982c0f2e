"""A model, its image processor and its predictions, as the command line and the explorer app load them."""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._adapters import adapter_for
from ..baselines import GenericAttentionExplainability
from ..models import BUNDLED_MODEL_DIR, load_bundled_model
from ..models import load_model as load_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CliError(Exception):
    """A problem the user can fix; printed as one message, without a traceback."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    name: str
    #: sha256 of the model's configuration and of its weights as loaded (before any dtype cast).
    config_sha256: str
    weights_sha256: str


def _sha256_config(config) -> str:
    settings = config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "_attn_implementation"):
        settings.pop(volatile, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _sha256_weights(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_model(name: str, device: str, dtype: str) -> LoadedModel:
    """The model (in the class of its checkpoint's own architecture) and its image processor."""
    from transformers import AutoImageProcessor

    local = name == "bundled" or Path(name).expanduser().exists()
    source = str(BUNDLED_MODEL_DIR) if name == "bundled" else name
    try:
        model = load_bundled_model() if name == "bundled" else load_checkpoint(name)
    except FileNotFoundError as error:  # a local path that is not a checkpoint folder
        raise CliError(str(error)) from None
    except ValueError as error:  # a checkpoint of a family no adapter explains
        raise CliError(str(error).splitlines()[0]) from None
    except OSError as error:
        raise CliError(
            f"Could not load model {name!r} ({type(error).__name__}: {str(error).splitlines()[0]}).\n"
            "The HuggingFace Hub may be out of reach and the model not cached. Use --model bundled "
            "for the offline model that ships with the package, or --model /path/to/checkpoint for a "
            "local directory written by save_pretrained (set HF_HUB_OFFLINE=1 to use the cache only)."
        ) from None
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        where = f"{source} has no usable preprocessor_config.json" if local else f"no image processor for {name!r}"
        raise CliError(
            f"Could not load the image processor: {where} ({str(error).splitlines()[0]}). Save the model's "
            "processor beside it: processor.save_pretrained(checkpoint_dir)."
        ) from None
    config_hash, weights_hash = _sha256_config(model.config), _sha256_weights(model)
    try:
        model = model.to(device=device, dtype=DTYPES[dtype])
    except (RuntimeError, AssertionError) as error:
        raise CliError(f"Cannot move the model to device {device!r}: {error}") from None
    display = name if not local or name == "bundled" else str(Path(name).expanduser().resolve())
    return LoadedModel(model.eval(), processor, display, config_hash, weights_hash)


def preprocess(processor, images: Sequence) -> torch.Tensor:
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def forward_options(loaded: LoadedModel, interpolate_pos_encoding: bool) -> dict[str, bool] | None:
    """``additional_forward_args`` for the model: ``interpolate_pos_encoding`` where it takes one.

    Models that always interpolate (DINOv2) need no flag and get none.
    """
    if not interpolate_pos_encoding or adapter_for(loaded.model).any_image_size:
        return None
    if "interpolate_pos_encoding" not in inspect.signature(loaded.model.forward).parameters:
        raise CliError(f"--interpolate-pos-encoding: {type(loaded.model).__name__} does not take that argument.")
    return {"interpolate_pos_encoding": True}


@contextmanager
def keep_logits(model: torch.nn.Module) -> Iterator[list]:
    """Keep a classifier's logits from the forward pass the explanation runs anyway (no extra pass)."""
    kept: list[torch.Tensor] = []

    def hook(_module, _inputs, output) -> None:
        logits = getattr(output, "logits", None)
        if logits is not None:
            kept.append(logits.detach().float().cpu())

    handle = model.register_forward_hook(hook)
    try:
        yield kept
    finally:
        handle.remove()


def class_name(model: torch.nn.Module, index: int) -> str:
    labels = getattr(model.config, "id2label", None) or {}
    return str(labels.get(index, labels.get(str(index), f"class {index}")))


def prediction(model: torch.nn.Module, logits: torch.Tensor) -> tuple[int, str, float]:
    """A classifier's predicted class for one image's logits `(num_labels,)`: index, name, probability."""
    probabilities = logits.float().softmax(dim=-1)
    best = int(probabilities.argmax())
    return best, class_name(model, best), float(probabilities[best])


def prediction_arrays(model: torch.nn.Module, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """The prediction as ``.npz`` entries: ``predicted_class``, ``class_name``, ``probability``."""
    index, name, probability = prediction(model, logits)
    return {"predicted_class": np.array(index), "class_name": np.array(name), "probability": np.array(probability)}


def prompt_explainer(loaded: LoadedModel, prompts: Sequence[str] | None):
    """GAE on the image-text similarity, with the checkpoint's own tokenizer, for ``--prompts``."""
    if not prompts:
        return None
    if not getattr(adapter_for(loaded.model), "has_text", False):
        raise CliError(
            f"--prompts needs an image-text model (CLIPModel, SiglipModel); {type(loaded.model).__name__} has no "
            "text tower."
        )
    from transformers import AutoTokenizer

    source = loaded.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise CliError(
            f"--prompts: no tokenizer for {source} ({str(error).splitlines()[0]}). Save it beside the model: "
            "processor.save_pretrained(checkpoint_dir)."
        ) from None
    return GenericAttentionExplainability(loaded.model, tokenizer=tokenizer)
