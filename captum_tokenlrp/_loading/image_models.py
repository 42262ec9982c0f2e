"""An image model with its image processor, as the image commands and the app load it."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .._adapters import adapter_for
from ..baselines import GenericAttentionExplainability
from ..models import BUNDLED_MODEL_DIR, PRETRAINED_MODELS, load_bundled_model, pretrained_model_dir
from ..models import load_model as load_checkpoint
from .checksums import sha256_config, sha256_weights
from .errors import CliError
from .hints import text_model_hint
from .names import DTYPES, MINILM


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    name: str
    #: sha256 of the model's configuration and of its weights as loaded (before any dtype cast).
    config_sha256: str
    weights_sha256: str


def load_model(name: str, device: str, dtype: str) -> LoadedModel:
    """The model (in the class of its checkpoint's own architecture) and its image processor."""
    from transformers import AutoImageProcessor

    if name == MINILM and not Path(name).exists():
        raise CliError(
            f"--model {MINILM} is the text model all-MiniLM-L6-v2: explain texts with tokenlrp explain-text. "
            "The image commands take 'bundled' (the offline shapes ViT), a save_pretrained folder or a hub id."
        )
    local = name in ("bundled", *PRETRAINED_MODELS) or Path(name).expanduser().exists()
    source = str(BUNDLED_MODEL_DIR) if name == "bundled" else name
    try:
        if name in PRETRAINED_MODELS:  # a real model from an extra, e.g. dinov2-small: its converted folder
            source = str(pretrained_model_dir(name))
        model = load_bundled_model() if name == "bundled" else load_checkpoint(source)
    except ImportError as error:  # the extra is missing: the message is the line that installs it
        raise CliError(f"--model {name}: {error}") from None
    except FileNotFoundError as error:  # a local path that is not a checkpoint folder
        raise CliError(str(error)) from None
    except ValueError as error:  # a checkpoint of a family no adapter explains
        raise CliError(str(error).splitlines()[0] + text_model_hint(name)) from None
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
    config_hash, weights_hash = sha256_config(model.config), sha256_weights(model)
    try:
        model = model.to(device=device, dtype=DTYPES[dtype])
    except (RuntimeError, AssertionError) as error:
        raise CliError(f"Cannot move the model to device {device!r}: {error}") from None
    display = name if not local or name in ("bundled", *PRETRAINED_MODELS) else str(Path(name).expanduser().resolve())
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
