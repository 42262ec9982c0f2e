"""Checks on user input: each failure says what was expected, what arrived and how to fix it."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._adapters import ModelAdapter, TokenLayout
from .stack import user_stacklevel

TargetType = int | np.integer | list[int] | tuple[int, ...] | np.ndarray | Tensor | None


def format_pixel_inputs(inputs: object) -> tuple[Tensor, bool]:
    """Accept a tensor or a 1-tuple of one (Captum convention); return it and whether it was a tuple."""
    is_tuple = isinstance(inputs, tuple)
    if is_tuple:
        if len(inputs) != 1:
            raise ValueError(
                f"Expected pixel_values as a tensor or a 1-tuple of one, got a tuple of {len(inputs)} "
                "items. Pass extra model arguments through additional_forward_args."
            )
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"Expected pixel_values as a torch.Tensor of shape (batch_size, channels, height, width), "
            f"got {type(inputs).__name__}. Use the model's image processor to build one."
        )
    return inputs, is_tuple


def forward_arguments(additional_forward_args: object) -> tuple[tuple, dict[str, Any]]:
    """Split ``additional_forward_args`` into positional and keyword arguments for ``model``.

    Captum passes extra arguments positionally after the inputs (a tuple, or one
    non-tuple value); a mapping is taken as keyword arguments, which is clearer
    for HuggingFace models (``{"interpolate_pos_encoding": True}``). A mapping as
    the *last* item of a tuple is keyword arguments too: Captum's wrappers
    (``NoiseTunnel``, ``sensitivity_max``, ...) turn a dict into a 1-tuple before
    it reaches :meth:`attribute`, and no HuggingFace vision model takes a
    mapping positionally.
    """
    if additional_forward_args is None:
        return (), {}
    if isinstance(additional_forward_args, Mapping):
        return (), dict(additional_forward_args)
    if isinstance(additional_forward_args, tuple):
        if additional_forward_args and isinstance(additional_forward_args[-1], Mapping):
            return additional_forward_args[:-1], dict(additional_forward_args[-1])
        return additional_forward_args, {}
    return (additional_forward_args,), {}


def bound_forward_arguments(
    model: torch.nn.Module, pixel_values: Tensor, args: tuple, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Name every argument of ``model.forward`` the call would receive."""
    try:
        bound = inspect.signature(model.forward).bind(pixel_values, *args, **kwargs)
    except TypeError as error:
        raise TypeError(
            f"additional_forward_args do not fit {type(model).__name__}.forward: {error}. "
            "Pass a dict of keyword arguments, e.g. {'interpolate_pos_encoding': True}."
        ) from None
    named = dict(bound.arguments)
    named.update(named.pop("kwargs", {}) or {})
    return named


def check_forward_arguments(adapter: ModelAdapter, named: Mapping[str, Any]) -> None:
    """Refuse arguments that would make the model's attention differ from the recomputed one."""
    for name in adapter.attention_altering_arguments:
        if named.get(name) is not None:
            raise ValueError(
                f"{name} is not supported: token relevance recomputes the attention from the "
                f"query and key projections, so a {name} would make it differ from the model's "
                f"own attention. Call without {name}."
            )


def check_pixel_values(pixel_values: Tensor, adapter: ModelAdapter, interpolate_pos_encoding: bool) -> TokenLayout:
    """Validate ``pixel_values`` for the model and return the token layout it gives."""
    if pixel_values.dim() != 4:
        raise ValueError(
            "Expected pixel_values of shape (batch_size, channels, height, width), got shape "
            f"{tuple(pixel_values.shape)} ({pixel_values.dim()} dimensions). For one image use "
            "image.unsqueeze(0)."
        )
    model_device = next(adapter.model.parameters()).device
    check_materialised(adapter.model)
    if pixel_values.device != model_device:
        raise ValueError(
            f"pixel_values are on {pixel_values.device} but the model is on {model_device}; "
            f"move them with pixel_values.to({str(model_device)!r})."
        )
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError("Expected at least one image, got an empty batch (batch_size 0).")
    if channels != adapter.num_channels:
        raise ValueError(
            f"Expected {adapter.num_channels} channels, got {channels} "
            f"(pixel_values shape {tuple(pixel_values.shape)}). Images must be (batch, channels, H, W)."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"Expected floating-point pixel_values (as the image processor returns), got {pixel_values.dtype}."
        )
    model_dtype = next(adapter.model.parameters()).dtype
    if pixel_values.dtype != model_dtype:
        raise TypeError(
            f"pixel_values are {pixel_values.dtype} but the model is {model_dtype}; "
            f"cast them with pixel_values.to({model_dtype})."
        )
    layout = adapter.token_layout(height, width)
    patch_h, patch_w = layout.patch_size
    if height < patch_h or width < patch_w:
        raise ValueError(f"Image of {height}x{width} pixels is smaller than one patch ({patch_h}x{patch_w}).")
    if not interpolate_pos_encoding and not adapter.any_image_size and (height, width) != adapter.image_size:
        raise ValueError(
            f"Image size {height}x{width} does not match the model's {adapter.image_size[0]}x"
            f"{adapter.image_size[1]}. Resize it, or pass "
            "additional_forward_args={'interpolate_pos_encoding': True}."
        )
    # One reduction first (cheap); the elementwise check only confirms a non-finite sum.
    if not bool(torch.isfinite(pixel_values.sum())) and not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("pixel_values contain NaN or infinite entries; relevance would be undefined.")
    return layout


def check_materialised(model: torch.nn.Module) -> None:
    """Refuse a model whose weights are on the meta device: it has shapes but no values to explain."""
    if any(parameter.device.type == "meta" for parameter in model.parameters()):
        raise ValueError(
            f"The weights of {type(model).__name__} are on the meta device: they were never loaded (built "
            "under init_empty_weights() or torch.device('meta'), or loaded with device_map='meta'), so there is "
            "nothing to explain. Load the weights, e.g. "
            f"{type(model).__name__}.from_pretrained(path) without a meta device_map, or "
            "model.to_empty(device='cpu') followed by model.load_state_dict(state_dict)."
        )


@dataclass(frozen=True)
class TextPrompts:
    """Tokenized prompts an image-text model (CLIP, SigLIP) compares the image with.

    Attributes
    ----------
    input_ids : Tensor
        `(num_prompts, sequence_length)`.
    attention_mask : Tensor or None
        `(num_prompts, sequence_length)`, where the tokenizer gives one.
    """

    input_ids: Tensor
    attention_mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __repr__(self) -> str:
        return f"TextPrompts({len(self)} prompt{'s' if len(self) != 1 else ''} of {self.input_ids.shape[-1]} tokens)"

    def select(self, index: int) -> TextPrompts:
        """Prompt ``index`` alone."""
        mask = None if self.attention_mask is None else self.attention_mask[index : index + 1]
        return TextPrompts(self.input_ids[index : index + 1], mask)

    def model_inputs(self, device: torch.device) -> dict[str, Tensor]:
        """Keyword arguments of the image-text model's forward."""
        inputs = {"input_ids": self.input_ids.to(device)}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask.to(device)
        return inputs


def _strings(value: object) -> list[str] | None:
    """``value`` as a list of strings when it is a string or a non-empty sequence of them, else None."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, str) for item in value):
        return list(value)
    return None


def _text_tower_limits(adapter: ModelAdapter) -> tuple[int | None, int | None]:
    """`(longest prompt in tokens, vocabulary size)` of an image-text model's text tower; None where unknown."""
    text_config = getattr(adapter.model.config, "text_config", None)
    limit = getattr(text_config, "max_position_embeddings", None)
    vocabulary = getattr(text_config, "vocab_size", None)
    return (
        limit if isinstance(limit, int) and limit > 0 else None,
        vocabulary if isinstance(vocabulary, int) and vocabulary > 0 else None,
    )


def call_tokenizer(tokenizer: Any, texts: list[str], **options: Any) -> Mapping[str, Any]:
    """``tokenizer(texts, **options)`` without HuggingFace's "longer than the maximum" notice where the
    tokenizer takes ``verbose`` (too long a text is truncated or refused here, with a message of our own)."""
    try:
        return tokenizer(texts, verbose=False, **options)
    except TypeError:  # a tokenizer without HuggingFace's options
        return tokenizer(texts, **options)


def _tokenize_prompts(texts: list[str], tokenizer: Any, limit: int | None) -> Mapping[str, Any]:
    """``texts`` tokenized as one padded batch, prompts longer than the text tower's ``limit`` truncated to it
    with a warning (CLIP's text tower has 77 positions; a longer prompt cannot run at all)."""
    empty = [index for index, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(
            f"Prompt {empty[0]} is empty ({texts[empty[0]]!r}): an image-text model compares the image with the "
            "prompt's words. Pass at least one word, e.g. target='a photo of a cat'."
        )
    encoded = call_tokenizer(tokenizer, texts, padding=True, return_tensors="pt")
    length = int(torch.as_tensor(encoded["input_ids"]).shape[-1])
    if limit is None or length <= limit:
        return encoded
    try:
        truncated = tokenizer(texts, padding=True, return_tensors="pt", truncation=True, max_length=limit)
    except TypeError:  # a tokenizer without HuggingFace's truncation options
        truncated = None
    if truncated is None or int(torch.as_tensor(truncated["input_ids"]).shape[-1]) > limit:
        raise ValueError(
            f"The prompts give {length} tokens but the model's text tower takes at most {limit} "
            f"(text_config.max_position_embeddings), and {type(tokenizer).__name__} does not truncate "
            "(truncation=True, max_length=...). Shorten the prompts, or pass the model's own tokenizer "
            "(e.g. attribution.tokenizer = processor.tokenizer)."
        )
    warnings.warn(
        f"A prompt gives {length} tokens but the model's text tower takes at most {limit}: it was truncated to "
        f"its first {limit} tokens (special tokens included), and the map explains that part. Shorten the "
        "prompt to explain all of it.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
    return truncated


def _check_prompt_ids(prompts: TextPrompts, adapter: ModelAdapter) -> None:
    """Refuse token ids the text tower cannot embed: too many for its positions, or outside its vocabulary."""
    limit, vocabulary = _text_tower_limits(adapter)
    ids = prompts.input_ids
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"Prompt input_ids must be integer token ids, got dtype {ids.dtype}.")
    if limit is not None and ids.shape[-1] > limit:
        raise ValueError(
            f"The prompts have {ids.shape[-1]} tokens but the model's text tower takes at most {limit} "
            "(text_config.max_position_embeddings). Tokenize with truncation: "
            f"tokenizer(texts, padding=True, truncation=True, max_length={limit}, return_tensors='pt'), or pass "
            "the prompt strings (they are truncated, with a warning)."
        )
    if vocabulary is not None and (found := _outside(ids, vocabulary)) is not None:
        bad = found[0] if found[0] < 0 else found[1]
        raise ValueError(
            f"Prompt token id {bad} is outside the text tower's vocabulary [0, {vocabulary}) "
            "(text_config.vocab_size): tokenize the prompts with the model's own tokenizer."
        )


def parse_text_target(target: object, adapter: ModelAdapter, tokenizer: Any) -> TextPrompts | None:
    """``target`` as :class:`TextPrompts` when it is text for an image-text model, else None.

    Text is a string, a sequence of strings (tokenized with ``tokenizer``; prompts longer than the
    text tower's positions are truncated with a warning), a tokenizer's output (a mapping with
    ``input_ids``), or :class:`TextPrompts`. A model without a text tower takes strings as class
    names (see :func:`class_indices`), so None is returned for them.
    """
    if isinstance(target, TextPrompts):
        prompts = target
    elif isinstance(target, Mapping) and "input_ids" in target:
        ids = torch.as_tensor(target["input_ids"])
        mask = target.get("attention_mask")
        prompts = TextPrompts(ids.reshape(-1, ids.shape[-1]), None if mask is None else torch.as_tensor(mask))
    elif (texts := _strings(target)) is not None:
        if not getattr(adapter, "has_text", False):
            return None  # a class name, or a clear error, from parse_targets
        if tokenizer is None:
            raise TypeError(
                f"target {texts!r} is text: set the attribution's tokenizer first (e.g. "
                "attribution.tokenizer = processor.tokenizer), or pass tokenized text, "
                "target=tokenizer(texts, padding=True, return_tensors='pt')."
            )
        encoded = _tokenize_prompts(texts, tokenizer, _text_tower_limits(adapter)[0])
        return parse_text_target(encoded, adapter, tokenizer)
    else:
        return None
    if not getattr(adapter, "has_text", False):
        raise TypeError(
            f"Text prompts need an image-text model (CLIPModel, SiglipModel); {type(adapter.model).__name__} "
            "has no text tower. Pass an integer target, or load the full image-text model."
        )
    _check_prompt_ids(prompts, adapter)
    return prompts


def class_indices(target: object, model: torch.nn.Module, is_classifier: bool) -> object:
    """``target`` with class names replaced by their indices in ``model.config.id2label``; else unchanged.

    A string names one class for the whole batch, a sequence of strings one per sample (as the
    command line's ``--target-class`` takes a name). A name on a model without classes, or a name
    the model does not know, is refused with the known ones listed.
    """
    names = _strings(target)
    if names is None:
        return target
    name = type(model).__name__
    if not is_classifier:
        raise TypeError(
            f"target {target!r} is a class name, but {name} has no classification head, so it has no classes to "
            "name. Pass an integer target (an output token index), or use a classifier "
            "(e.g. ViTForImageClassification) whose config.id2label names its classes."
        )
    id2label = getattr(model.config, "id2label", None) or {}
    labels = {str(label): int(index) for index, label in id2label.items()}
    unknown = [item for item in names if item not in labels]
    if unknown:
        raise ValueError(
            f"target {unknown[0]!r} is not a class of {name}; its classes (config.id2label) are: "
            f"{', '.join(repr(label) for label in labels) or 'none named'}. Pass one of them or a class index."
        )
    indices = [labels[item] for item in names]
    return indices[0] if isinstance(target, str) else indices


def one_prompt(target: object, adapter: ModelAdapter, tokenizer: Any, caller: str) -> object:
    """``target`` unchanged, or as :class:`TextPrompts` when it is text; more than one prompt is refused
    (``caller`` returns one map per image)."""
    prompts = parse_text_target(target, adapter, tokenizer)
    if prompts is None:
        return target
    if len(prompts) != 1:
        raise ValueError(
            f"{caller} returns one map per image, got {len(prompts)} prompts: call it once per prompt, or use "
            "token_relevance for a (batch, prompts, tokens) map."
        )
    return prompts


def _outside(ids: Tensor, size: int) -> tuple[int, int] | None:
    """``(smallest, largest)`` of ``ids`` when one of them falls outside an embedding table ``[0, size)``, else None."""
    if not ids.numel():
        return None
    low, high = int(ids.min()), int(ids.max())
    return (low, high) if low < 0 or high >= size else None


def _embedding(model: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Embedding | None:
    """The model's first ``nn.Embedding`` whose attribute name is one of ``names``, or None."""
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and path.rsplit(".", 1)[-1] in names:
            return module
    return None


def text_length_limit(model: torch.nn.Module) -> int | None:
    """The longest input, in tokens, of a text model with learned absolute position embeddings (BERT: 512,
    GPT-2: 1024); None for rotary models (Llama, Qwen2, ...), which have no table to run out of.

    RoBERTa counts positions from its padding index + 1, so two of its 514 positions are never used.
    """
    positions = _embedding(model, ("position_embeddings", "wpe"))
    if positions is None:
        return None
    offset = 0 if positions.padding_idx is None else positions.padding_idx + 1
    return positions.num_embeddings - offset


def check_token_ids(input_ids: Tensor, named: Mapping[str, Any], model: torch.nn.Module) -> None:
    """Refuse, before the model runs, ids it cannot embed: token ids outside its vocabulary, sequences longer
    than its position table, position or token type ids outside theirs (each would be an ``IndexError`` deep
    inside the model)."""
    name = type(model).__name__
    embeddings = model.get_input_embeddings() if callable(getattr(model, "get_input_embeddings", None)) else None
    vocabulary = getattr(embeddings, "num_embeddings", None)
    if isinstance(vocabulary, int) and (found := _outside(input_ids, vocabulary)) is not None:
        bad = found[0] if found[0] < 0 else found[1]
        row, column = (input_ids == bad).nonzero()[0].tolist()
        raise ValueError(
            f"input_ids[{row}, {column}] is token id {bad}, outside {name}'s vocabulary [0, {vocabulary}). "
            "Tokenize the text with the model's own tokenizer (AutoTokenizer.from_pretrained of the same "
            "checkpoint)."
        )
    positions = _embedding(model, ("position_embeddings", "wpe"))
    position_ids = named.get("position_ids")
    if positions is not None and isinstance(position_ids, Tensor) and position_ids.numel():
        if (found := _outside(position_ids, positions.num_embeddings)) is not None:
            raise ValueError(
                f"position_ids must lie in [0, {positions.num_embeddings}) ({name}'s position table), got values "
                f"from {found[0]} to {found[1]}."
            )
    elif (limit := text_length_limit(model)) is not None and input_ids.shape[-1] > limit:
        raise ValueError(
            f"The inputs have {input_ids.shape[-1]} tokens but {name} takes at most {limit} (its learned position "
            f"embeddings). Truncate them: tokenizer(texts, truncation=True, max_length={limit}, "
            "return_tensors='pt'), or pass the texts as strings with tokenizer= set (they are truncated, with a "
            "warning), or explain the text in parts."
        )
    types = _embedding(model, ("token_type_embeddings",))
    token_type_ids = named.get("token_type_ids")
    if types is not None and isinstance(token_type_ids, Tensor):
        if (found := _outside(token_type_ids, types.num_embeddings)) is not None:
            raise ValueError(
                f"token_type_ids must lie in [0, {types.num_embeddings}) ({name} knows {types.num_embeddings} "
                f"segment types), got values from {found[0]} to {found[1]}."
            )


def _is_integer(value: object) -> bool:
    """A Python or numpy integer (Captum accepts both), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _per_sample_targets(target: TargetType, batch: int) -> Tensor:
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target must be an int, a sequence of ints or a tensor, got bool {target!r}.")
    if _is_integer(target):
        return torch.full((batch,), int(target), dtype=torch.long)
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise TypeError(f"target array must hold integers, got dtype {target.dtype}.")
        target = torch.from_numpy(np.ascontiguousarray(target))
    if isinstance(target, (list, tuple)):
        if not all(_is_integer(t) for t in target):
            raise TypeError(f"target sequence must hold ints, got {target!r}.")
        values = torch.tensor([int(t) for t in target], dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target tensor must hold integers, got dtype {target.dtype}.")
        values = target.detach().to("cpu", torch.long).reshape(-1)
        if values.numel() == 1:
            values = values.expand(batch)
    else:
        raise TypeError(f"target must be an int, a sequence of ints or a tensor, got {type(target).__name__}.")
    if values.numel() != batch:
        raise ValueError(f"Expected one target per sample ({batch}), got {values.numel()}.")
    return values


def parse_targets(target: TargetType, adapter: ModelAdapter, layout: TokenLayout, batch: int) -> Tensor | None:
    """``target`` as a `(batch_size,)` long tensor on the CPU (None stays None), type and range checked.

    A class index (or a class name of ``config.id2label``) for a classifier; an output token index for
    a model without a head, negative ones counting from the end (returned in ``[0, num_tokens)``).
    Every integer type Captum accepts is accepted: int, numpy integers, sequences and arrays of them,
    integer tensors (one value or one per sample).
    """
    if target is None:
        return None
    targets = _per_sample_targets(class_indices(target, adapter.model, adapter.is_classifier), batch)
    if adapter.is_classifier:
        upper = adapter.num_labels
        bad = targets[(targets < 0) | (targets >= upper)]
        if bad.numel():
            raise ValueError(f"target {bad[0].item()} is out of range: expected a class index in [0, {upper}).")
        return targets
    # A token position: negative counts from the end, as in Python (and as the text models take it).
    tokens = layout.num_tokens
    bad = targets[(targets < -tokens) | (targets >= tokens)]
    if bad.numel():
        raise ValueError(
            f"target {bad[0].item()} is out of range: expected an output token index in [-{tokens}, {tokens}) "
            f"(the model has {tokens} tokens; negative indices count from the end)."
        )
    return targets.remainder(tokens)


def explicit_start(
    target: TargetType,
    initial_relevance: Tensor | None,
    adapter: ModelAdapter,
    layout: TokenLayout,
    batch: int,
    device: torch.device,
) -> Tensor | None:
    """The start ``R^(L)`` the arguments ask for, `(batch_size, num_tokens)` float32, checked; or None.

    None means the model's own start (:meth:`ModelAdapter.default_start`, known after the
    forward pass): no target and no initial relevance, or a classifier's target (a class index,
    checked but not used: the rules do not depend on the class).
    """
    num_tokens = layout.num_tokens
    targets = parse_targets(target, adapter, layout, batch)
    if initial_relevance is not None:
        if targets is not None and not adapter.is_classifier:
            raise ValueError("Give either target (one output token) or initial_relevance (any start vector), not both.")
        return _check_initial_relevance(initial_relevance, batch, num_tokens, device)
    if adapter.is_classifier or targets is None:
        return None
    start = torch.zeros(batch, num_tokens, dtype=torch.float32, device=device)
    start[torch.arange(batch), targets] = 1.0
    return start


def resolve_start(
    explicit: Tensor | None, adapter: ModelAdapter, layout: TokenLayout, batch: int, device: torch.device
) -> Tensor:
    """``explicit``, or the adapter's default start expanded to `(batch_size, num_tokens)`; after the forward."""
    if explicit is not None:
        return explicit
    default = adapter.default_start(layout).to(device, torch.float32)
    return default.expand(batch, layout.num_tokens).clone()


def _check_initial_relevance(relevance: object, batch: int, num_tokens: int, device: torch.device) -> Tensor:
    if not isinstance(relevance, Tensor):
        raise TypeError(
            f"initial_relevance must be a torch.Tensor of shape ({num_tokens},) or ({batch}, {num_tokens}), "
            f"got {type(relevance).__name__}."
        )
    if relevance.shape == (num_tokens,):
        relevance = relevance.expand(batch, num_tokens)
    if relevance.shape != (batch, num_tokens):
        raise ValueError(
            f"initial_relevance must have shape ({num_tokens},) or ({batch}, {num_tokens}) "
            f"(num_tokens includes the special tokens), got {tuple(relevance.shape)}."
        )
    relevance = relevance.detach().to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(relevance).all()):
        raise ValueError("initial_relevance contains NaN or infinite entries.")
    if bool((relevance < 0).any()):
        raise ValueError("initial_relevance must be non-negative; the rules conserve non-negative relevance.")
    if bool((relevance.sum(dim=-1) == 0).any()):
        raise ValueError("initial_relevance is all zero for some sample; there would be nothing to propagate.")
    return relevance.clone()
