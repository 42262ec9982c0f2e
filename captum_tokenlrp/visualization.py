"""Figures of token relevance (matplotlib). Functions return the Figure; nothing is shown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._utils.pixels import patch_grid

__all__ = [
    "image_for_display",
    "patch_grid",
    "plot_method_comparison",
    "plot_overlay",
    "plot_rule_grid",
    "to_captum_image",
]

Interpolation = Literal["nearest", "bilinear"]


def image_for_display(image: Tensor | np.ndarray) -> np.ndarray:
    """A `(channels, height, width)` tensor or `(height, width, channels)` array as HWC floats in [0, 1].

    Normalised model inputs are min-max rescaled per image, which is enough to recognise it.
    """
    array = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim != 3:
        raise ValueError(f"Expected one image (C, H, W) or (H, W, C), got shape {array.shape}.")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def to_captum_image(attribution: Tensor | tuple[Tensor]) -> np.ndarray:
    """One attribution (or image) as the `(height, width, channels)` numpy array Captum's plots take.

    ``captum.attr.visualization.visualize_image_attr(to_captum_image(attr), to_captum_image(image), ...)``

    Parameters
    ----------
    attribution : Tensor or 1-tuple of Tensor
        `(channels, height, width)` or a batch of one, `(1, channels, height, width)`.
    """
    if isinstance(attribution, tuple):
        if len(attribution) != 1:
            raise ValueError(f"Expected a 1-tuple of attributions, got {len(attribution)} items.")
        attribution = attribution[0]
    if not isinstance(attribution, Tensor):
        raise TypeError(f"Expected a torch.Tensor, got {type(attribution).__name__}.")
    if attribution.dim() == 4 and attribution.shape[0] == 1:
        attribution = attribution[0]
    if attribution.dim() != 3:
        raise ValueError(
            f"Expected one map of shape (channels, height, width) or (1, channels, height, width), "
            f"got {tuple(attribution.shape)}; index the batch first, e.g. attributions[0]."
        )
    return attribution.detach().float().cpu().permute(1, 2, 0).numpy()


def _upsample(grid: Tensor, size: tuple[int, int], interpolation: str = "nearest") -> np.ndarray:
    """Patch grid -> pixels, for display only (relevance itself is per patch)."""
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}.")
    options = {"align_corners": False} if interpolation == "bilinear" else {}
    upsampled = torch.nn.functional.interpolate(
        grid.detach()[None, None].float().cpu(), size=size, mode=interpolation, **options
    )
    return upsampled[0, 0].numpy()


def _colour_limits(grids, shared: bool) -> tuple[float | None, float | None]:
    """One colour scale over all ``grids`` when ``shared``, else None (one scale per panel)."""
    if not shared:
        return None, None
    values = torch.cat([grid.detach().flatten().float().cpu() for grid in grids])
    return float(values.min()), float(values.max())


def _draw(axis, background: np.ndarray, grid: Tensor, interpolation: str, cmap: str, alpha: float, vmin, vmax):
    axis.imshow(background, cmap="gray" if background.shape[-1] == 1 else None)
    overlay = _upsample(grid, background.shape[:2], interpolation)
    image = axis.imshow(overlay, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    axis.set_xticks([])
    axis.set_yticks([])
    return image


def plot_overlay(
    image: Tensor | np.ndarray,
    relevance_grid: Tensor,
    *,
    interpolation: Interpolation = "nearest",
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str | None = None,
    colorbar: bool = True,
    size: float = 3.5,
):
    """One relevance map over its image.

    Parameters
    ----------
    image : Tensor or ndarray
        `(channels, height, width)` or `(height, width, channels)`.
    relevance_grid : Tensor
        `(grid_rows, grid_cols)`, e.g. from :func:`patch_grid`; upsampled to the image for display
        (``"nearest"`` shows patches as they are, ``"bilinear"`` smooths them).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size * (1.25 if colorbar else 1.0), size))
    axis = figure.subplots()
    drawn = _draw(axis, image_for_display(image), relevance_grid, interpolation, cmap, alpha, None, None)
    if colorbar:
        figure.colorbar(drawn, ax=axis, fraction=0.046, pad=0.04)
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_method_comparison(
    image: Tensor | np.ndarray,
    maps: Mapping[str, Tensor],
    *,
    shared_scale: bool = False,
    interpolation: Interpolation = "nearest",
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str | None = None,
    panel_size: float = 2.2,
):
    """One image, one column per method: the image itself, then each method's map over it.

    Parameters
    ----------
    maps : mapping of str to Tensor
        Method name -> `(grid_rows, grid_cols)` map. Methods on different scales (IG is signed,
        rollout sums to 1) are best compared with ``shared_scale=False``.
    """
    from matplotlib.figure import Figure

    background = image_for_display(image)
    vmin, vmax = _colour_limits(maps.values(), shared_scale)
    figure = Figure(figsize=(panel_size * (len(maps) + 1), panel_size + 0.4))
    axes = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
    axes[0].imshow(background)
    axes[0].set_title("image", fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for axis, (name, grid) in zip(axes[1:], maps.items(), strict=True):
        _draw(axis, background, grid, interpolation, cmap, alpha, vmin, vmax)
        axis.set_title(name, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_rule_grid(
    image: Tensor | np.ndarray,
    fused: Mapping[str, Tensor],
    per_head: Mapping[str, Tensor] | None = None,
    *,
    shared_scale: bool = False,
    interpolation: Interpolation = "nearest",
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str | None = None,
    panel_size: float = 1.8,
):
    """The paper's figure: one row per rule (or method), the fused map then one map per head.

    Parameters
    ----------
    image : Tensor or ndarray
        The input image, `(channels, height, width)` or `(height, width, channels)`.
    fused : mapping of str to Tensor
        Row label -> fused map of shape `(grid_rows, grid_cols)`.
    per_head : mapping of str to Tensor, optional
        Row label -> per-head maps of shape `(num_heads, grid_rows, grid_cols)`.
    shared_scale : bool, default False
        One colour scale for every panel instead of one per panel.
    interpolation : {"nearest", "bilinear"}
        How patch maps are upsampled for display.
    alpha : float
        Opacity of the relevance overlay on the image.

    Returns
    -------
    matplotlib.figure.Figure
    """
    # A bare Figure (no pyplot): no global state, no GUI backend, nothing shown.
    from matplotlib.figure import Figure

    per_head = dict(per_head or {})
    rows: Sequence[str] = list(fused)
    num_heads = max((maps.shape[0] for maps in per_head.values()), default=0)
    background = image_for_display(image)
    panels = {label: [fused[label]] + (list(per_head[label]) if label in per_head else []) for label in rows}
    vmin, vmax = _colour_limits([p for maps in panels.values() for p in maps], shared_scale)
    columns = 1 + num_heads
    figure = Figure(figsize=(panel_size * columns, panel_size * len(rows)))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, label in enumerate(rows):
        for c in range(columns):
            axis = axes[r][c]
            if c >= len(panels[label]):
                axis.set_axis_off()
                continue
            _draw(axis, background, panels[label][c], interpolation, cmap, alpha, vmin, vmax)
            if r == 0:
                axis.set_title("fused" if c == 0 else f"head {c}", fontsize=9)
            if c == 0:
                axis.set_ylabel(label, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
