"""Checks on user input: each failure says what was expected, what arrived and how to fix it."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._adapters import ModelAdapter, TokenLayout

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


def parse_text_target(target: object, adapter: ModelAdapter, tokenizer: Any) -> TextPrompts | None:
    """``target`` as :class:`TextPrompts` when it is text for an image-text model, else None.

    Text is a string, a sequence of strings (tokenized with ``tokenizer``), a tokenizer's output
    (a mapping with ``input_ids``), or :class:`TextPrompts`.
    """
    if isinstance(target, TextPrompts):
        prompts = target
    elif isinstance(target, Mapping) and "input_ids" in target:
        ids = torch.as_tensor(target["input_ids"])
        mask = target.get("attention_mask")
        prompts = TextPrompts(ids.reshape(-1, ids.shape[-1]), None if mask is None else torch.as_tensor(mask))
    elif isinstance(target, str) or (
        isinstance(target, (list, tuple)) and target and all(isinstance(item, str) for item in target)
    ):
        texts = [target] if isinstance(target, str) else list(target)
        if tokenizer is None:
            raise TypeError(
                f"target {texts!r} is text: set the attribution's tokenizer first (e.g. "
                "attribution.tokenizer = processor.tokenizer), or pass tokenized text, "
                "target=tokenizer(texts, padding=True, return_tensors='pt')."
            )
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        return parse_text_target(encoded, adapter, tokenizer)
    else:
        return None
    if not getattr(adapter, "has_text", False):
        raise TypeError(
            f"Text prompts need an image-text model (CLIPModel, SiglipModel); {type(adapter.model).__name__} "
            "has no text tower. Pass an integer target, or load the full image-text model."
        )
    return prompts


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

    A class index for a classifier, an output token index for a model without a head. Every
    integer type Captum accepts is accepted: int, numpy integers, sequences and arrays of them,
    integer tensors (one value or one per sample).
    """
    if target is None:
        return None
    targets = _per_sample_targets(target, batch)
    upper = adapter.num_labels if adapter.is_classifier else layout.num_tokens
    what = "class index" if adapter.is_classifier else "output token index"
    bad = targets[(targets < 0) | (targets >= upper)]
    if bad.numel():
        raise ValueError(f"target {bad[0].item()} is out of range: expected a {what} in [0, {upper}).")
    return targets


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
