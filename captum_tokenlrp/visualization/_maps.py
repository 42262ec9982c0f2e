"""Every accepted relevance input (a patch grid, token relevance with its layout, a pixel map) read as
one map to draw; the types and options the figures share."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .._adapters import TokenLayout
from .._core.geometry import patch_grid

Interpolation = Literal["nearest", "bilinear"]


ScalePolicy = Literal["row", "panel", "shared"]


ArrayLike = Tensor | np.ndarray


_SCALES = ("row", "panel", "shared")


_EXPECTED_MAPS = (
    "a patch grid (grid_rows, grid_cols); token relevance (num_tokens,) or (1, num_tokens) with "
    "layout=lrp.token_layout(pixel_values); or a pixel map of the image's size, (height, width), "
    "(channels, height, width) or (1, channels, height, width)"
)


def _as_array(value: object, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().double().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    raise TypeError(
        f"Expected {name} as a torch.Tensor or numpy.ndarray, got {type(value).__name__}; "
        f"wrap it with torch.as_tensor(...) or numpy.asarray(...)."
    )


def _check_layout(layout: object) -> None:
    if layout is not None and not isinstance(layout, TokenLayout):
        raise TypeError(
            f"Expected layout as a TokenLayout (lrp.token_layout(pixel_values)), got {type(layout).__name__}."
        )


def _token_vector_to_grid(vector: np.ndarray, layout: TokenLayout | None, name: str, shape: tuple) -> np.ndarray:
    if layout is None:
        raise ValueError(
            f"{name} of shape {shape} is token relevance, which cannot be drawn without knowing which "
            f"tokens are special (CLS, registers) and how the patches form the grid: pass "
            f"layout=lrp.token_layout(pixel_values), or a patch grid, patch_grid(relevance, layout)."
        )
    if vector.shape[-1] != layout.num_tokens:
        raise ValueError(
            f"{name} of shape {shape} has {vector.shape[-1]} tokens but the layout has {layout.num_tokens} "
            f"({layout.num_special_tokens} special + {layout.grid[0]} x {layout.grid[1]} patches); pass the "
            f"layout of the same inputs, lrp.token_layout(pixel_values)."
        )
    return patch_grid(torch.from_numpy(vector), layout).numpy()


def _relevance_map(
    relevance: object, image_shape: tuple[int, ...], layout: TokenLayout | None, name: str
) -> tuple[np.ndarray, bool]:
    """Any accepted relevance input -> ``(map, is_pixel_map)``: a patch grid or a pixel map of the image's size.

    Parameters
    ----------
    relevance : Tensor or ndarray
        See the module docstring for the accepted shapes.
    image_shape : tuple of int
        `(height, width, channels)` of the displayed image.
    layout : TokenLayout or None
        Needed for token relevance.
    name : str
        How error messages call the input.

    Returns
    -------
    (ndarray, bool)
        The map, `(grid_rows, grid_cols)` or `(height, width)`, float64, and whether it is a pixel map.
    """
    _check_layout(layout)
    array = _as_array(relevance, name)
    shape = tuple(array.shape)
    height, width, channels = image_shape
    # One row is token relevance `(1, num_tokens)` unless it is what the image or layout says it is: a pixel map
    # of a photo one pixel tall (explain_image's original_map is (1, W) there), or a one-row patch grid.
    pixel_sized = shape == (height, width) and (layout is None or shape[1] != layout.num_tokens)
    one_row_grid = layout is not None and shape == layout.grid
    if array.ndim == 1 or (array.ndim == 2 and shape[0] == 1 and not pixel_sized and not one_row_grid):
        return _token_vector_to_grid(array.reshape(-1), layout, name, shape), False
    if array.ndim == 2:
        if shape == (height, width):
            return array, True
        if layout is not None and shape != layout.grid:
            raise ValueError(
                f"{name} of shape {shape} is neither the layout's patch grid {layout.grid} nor a pixel map of "
                f"the image's size {(height, width)}. Expected {_EXPECTED_MAPS}."
            )
        cell_h, cell_w = height / shape[0], width / shape[1]
        if max(cell_h, cell_w) > 2 * min(cell_h, cell_w):
            raise ValueError(
                f"{name} of shape {shape} is not a patch grid of this {height} x {width} image (its cells would "
                f"be {cell_h:.3g} x {cell_w:.3g} pixels) nor a pixel map of its size. Expected {_EXPECTED_MAPS}; "
                f"per-head maps go one at a time (maps[h]) or to plot_rule_grid(per_head=...)."
            )
        return array, False
    if array.ndim == 4:
        if shape[0] != 1:
            raise ValueError(
                f"{name} of shape {shape} is a batch of {shape[0]} maps; pass one, e.g. attributions[0]. "
                f"Expected {_EXPECTED_MAPS}."
            )
        array = array[0]
    if array.ndim == 3:
        if array.shape[1:] != (height, width) or array.shape[0] not in (1, channels):
            raise ValueError(
                f"{name} of shape {shape} is not a pixel map (channels, height, width) of this image, which is "
                f"({channels}, {height}, {width}). Expected {_EXPECTED_MAPS}; per-head maps go one at a time "
                f"(maps[h]) or to plot_rule_grid(per_head=...)."
            )
        return array.sum(axis=0), True
    raise ValueError(f"{name} has shape {shape} ({array.ndim} dimensions). Expected {_EXPECTED_MAPS}.")


def _head_maps(maps: object, layout: TokenLayout | None, name: str) -> list[np.ndarray]:
    """Per-head maps `(num_heads, ...)` (or `(num_heads, num_tokens)` with a layout) -> one map per head."""
    _check_layout(layout)
    array = _as_array(maps, name)
    if array.ndim == 3 and array.shape[0] == 1 and layout is not None and array.shape[-1] == layout.num_tokens:
        array = array[0]  # (1, num_heads, num_tokens): a batch of one
    if array.ndim == 2:
        return list(_token_vector_to_grid(array, layout, name, tuple(array.shape)))  # (num_heads, rows, cols)
    if array.ndim != 3:
        raise ValueError(
            f"Expected {name} as per-head maps (num_heads, grid_rows, grid_cols), (num_heads, height, width) or "
            f"(num_heads, num_tokens) with layout=lrp.token_layout(pixel_values); got shape {tuple(array.shape)}."
        )
    return list(array)


def _upsample(grid: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Patch grid -> pixels, for display only (relevance itself is per patch)."""
    options = {"align_corners": False} if interpolation == "bilinear" else {}
    upsampled = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None, None], size=size, mode=interpolation, **options
    )
    return upsampled[0, 0].numpy()


def _check_options(interpolation: str, scale: str | None = None) -> None:
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}.")
    if scale is not None and scale not in _SCALES:
        raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}.")


def _resolve_scale(scale: str, shared_scale: bool | None, default: str) -> str:
    """``shared_scale`` (deprecated) -> ``scale``: True is "shared", False is "panel" (its old meaning)."""
    if shared_scale is None:
        return scale
    warnings.warn(
        "shared_scale is deprecated; use scale='shared' (shared_scale=True) or scale='panel' (shared_scale=False).",
        DeprecationWarning,
        stacklevel=3,
    )
    if scale != default:
        raise ValueError(
            f"Pass scale only (shared_scale is its deprecated alias), got scale={scale!r} and shared_scale."
        )
    return "shared" if shared_scale else "panel"
