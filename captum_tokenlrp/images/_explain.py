"""One call from an image file to its relevance on the original image (:func:`explain_image`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .._adapters import TokenLayout
from .._utils.geometry import patch_grid as _patch_grid
from .._utils.validation import TextPrompts, one_prompt
from ._geometry import ImageGeometry, processor_geometry
from ._loading import load_image
from ._mapping import map_to_original
from ._processor import pil_layout_kwargs


@dataclass(frozen=True)
class ImageExplanation:
    """An attribution's relevance for one image, on the model's grid and on the original image.

    Attributes
    ----------
    image : PIL.Image.Image
        The image after :func:`load_image` (RGB, upright): the one ``original_map`` aligns with.
    pixel_values : Tensor
        `(1, channels, H_in, W_in)`, what the model received (its device and dtype).
    token_relevance : Tensor
        `(num_tokens,)`; with per-head relevance, the mean over heads.
    patch_grid : Tensor
        `(rows, cols)`: the patch tokens of ``token_relevance`` on the grid.
    original_map : Tensor
        `(H_orig, W_orig)`: ``patch_grid`` on the original image (:func:`map_to_original`); its sum is the
        patches' sum.
    covered : Tensor
        bool `(H_orig, W_orig)`: original pixels the model input shows (``original_map`` is 0 elsewhere).
    layout : TokenLayout
        Special tokens, grid and patch size.
    geometry : ImageGeometry
        The processor's resize and crop for this image.
    head_relevance : Tensor or None
        `(heads, num_tokens)` when the attribution returned one map per head, else None.
    head_maps : Tensor or None
        `(heads, H_orig, W_orig)`: each head's map on the original image, else None.
    """

    image: Image.Image
    pixel_values: Tensor
    token_relevance: Tensor
    patch_grid: Tensor
    original_map: Tensor
    covered: Tensor
    layout: TokenLayout
    geometry: ImageGeometry
    head_relevance: Tensor | None = None
    head_maps: Tensor | None = None


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


def explain_image(
    attribution: Any,
    image: str | os.PathLike[str] | Image.Image,
    processor: Any,
    *,
    target: Any = None,
    additional_forward_args: Any = None,
    **kwargs: Any,
) -> ImageExplanation:
    """Load an image, run the processor and the attribution, and map the relevance onto the image.

    Parameters
    ----------
    attribution : TokenAttribution
        Any of the package's attributions (``TokenRelevanceLRP``, the baselines): it needs
        ``model``, ``token_relevance(pixel_values, target, additional_forward_args, **kwargs)`` and
        ``token_layout(pixel_values, additional_forward_args)``.
    image : str, os.PathLike or PIL.Image.Image
        Read with :func:`load_image`.
    processor : image processor
        The model's HuggingFace image processor, or a processor holding one (``CLIPProcessor``), called
        as ``processor(images=..., return_tensors="pt")`` (with ``input_data_format="channels_last"`` for
        transformers 4.x numpy processors, which otherwise misread images 1 or 3 pixels high).
    target, additional_forward_args, **kwargs
        Passed to ``token_relevance`` (e.g. ``head_fusion=None`` for one map per head). For an image-text
        model ``target`` may be one prompt (several raise a ``ValueError``: call once per prompt).

    Returns
    -------
    ImageExplanation
        Shapes in its docstring; ``head_relevance`` and ``head_maps`` are set when the relevance has a
        heads axis `(1, heads, num_tokens)`, and then ``token_relevance`` is their mean over heads.

    Raises
    ------
    ValueError
        From :func:`load_image` or :func:`processor_geometry`.
    RuntimeError
        If the processor's output size differs from the predicted geometry.
    """
    for name in ("model", "token_relevance", "token_layout"):
        if not hasattr(attribution, name):
            raise TypeError(
                f"Expected an attribution of this package (with model, token_relevance and token_layout), "
                f"got {type(attribution).__name__} without {name}."
            )
    processor = getattr(processor, "image_processor", processor)  # a CLIPProcessor: its image part
    adapter = getattr(attribution, "_adapter", None)  # the package's attributions; duck-typed ones have none
    if adapter is not None:
        target = one_prompt(target, adapter, getattr(attribution, "tokenizer", None), "explain_image")
    prompts = target if isinstance(target, TextPrompts) else None
    loaded = load_image(image)
    device, dtype = _model_device_dtype(attribution.model)
    pixel_values = processor(images=loaded, return_tensors="pt", **pil_layout_kwargs(processor))["pixel_values"]
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    geometry = processor_geometry(processor, (loaded.height, loaded.width))
    if tuple(pixel_values.shape[-2:]) != geometry.input:
        raise RuntimeError(
            f"{type(processor).__name__} produced {tuple(pixel_values.shape[-2:])} pixels but its attributes "
            f"predict {geometry.input}; processor_geometry does not model this processor."
        )
    relevance = attribution.token_relevance(pixel_values, target, additional_forward_args, **kwargs).detach()
    if prompts is not None:  # (1, 1 prompt, ...): the prompt axis is not a heads axis
        relevance = relevance[:, 0]
    layout = attribution.token_layout(pixel_values, additional_forward_args)
    if relevance.dim() not in (2, 3) or relevance.shape[0] != 1:
        raise ValueError(
            f"Expected token relevance (1, num_tokens) or (1, heads, num_tokens), got {tuple(relevance.shape)}."
        )
    per_head = relevance.dim() == 3
    head_relevance = relevance[0] if per_head else None
    tokens = relevance[0].mean(dim=0) if per_head else relevance[0]
    grid = _patch_grid(tokens, layout)
    head_maps = None
    if head_relevance is not None:
        head_maps = map_to_original(_patch_grid(head_relevance, layout), geometry, patch_size=layout.patch_size)
    return ImageExplanation(
        image=loaded,
        pixel_values=pixel_values,
        token_relevance=tokens,
        patch_grid=grid,
        original_map=map_to_original(grid, geometry, patch_size=layout.patch_size),
        covered=geometry.covered_mask(device=grid.device),
        layout=layout,
        geometry=geometry,
        head_relevance=head_relevance,
        head_maps=head_maps,
    )
