"""Figures of token relevance (matplotlib). Functions return the Figure; nothing is shown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ._adapters import TokenLayout

__all__ = ["image_for_display", "patch_grid", "plot_rule_grid"]


def patch_grid(relevance: Tensor, layout: TokenLayout) -> Tensor:
    """Patch-token relevance reshaped to the patch grid.

    Parameters
    ----------
    relevance : Tensor
        `(..., num_tokens)`, in the model's token order (special tokens first).
    layout : TokenLayout
        From :meth:`TokenRelevanceLRP.token_layout`.

    Returns
    -------
    Tensor
        `(..., grid_rows, grid_cols)`.
    """
    if relevance.shape[-1] != layout.num_tokens:
        raise ValueError(
            f"Expected relevance over {layout.num_tokens} tokens (last dimension), got {relevance.shape[-1]}."
        )
    return relevance[..., layout.patch_slice].reshape(*relevance.shape[:-1], *layout.grid)


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


def _upsample(grid: Tensor, size: tuple[int, int]) -> np.ndarray:
    upsampled = torch.nn.functional.interpolate(grid[None, None].float(), size=size, mode="nearest")
    return upsampled[0, 0].cpu().numpy()


def plot_rule_grid(
    image: Tensor | np.ndarray,
    fused: Mapping[str, Tensor],
    per_head: Mapping[str, Tensor] | None = None,
    *,
    shared_scale: bool = False,
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
    height, width = background.shape[:2]
    panels = {label: [fused[label]] + (list(per_head[label]) if label in per_head else []) for label in rows}
    vmin = vmax = None
    if shared_scale:
        values = torch.cat([p.flatten().float().cpu() for maps in panels.values() for p in maps])
        vmin, vmax = float(values.min()), float(values.max())
    columns = 1 + num_heads
    figure = Figure(figsize=(panel_size * columns, panel_size * len(rows)))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, label in enumerate(rows):
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c >= len(panels[label]):
                axis.set_axis_off()
                continue
            axis.imshow(background, cmap="gray" if background.shape[-1] == 1 else None)
            axis.imshow(_upsample(panels[label][c], (height, width)), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
            if r == 0:
                axis.set_title("fused" if c == 0 else f"head {c}", fontsize=9)
            if c == 0:
                axis.set_ylabel(label, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure
