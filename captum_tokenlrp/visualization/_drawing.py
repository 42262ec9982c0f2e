"""The matplotlib pieces every figure is drawn with: panels, outlines, markers, colour bars, notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._maps import _upsample
from ._scale import _CLIPPED_COLOUR, _SINK_COLOUR, CLIP_HEADROOM, CLIP_PERCENTILE, ColourScale

#: Width in inches kept for one colour bar and its tick labels.
_COLORBAR_INCHES = 0.6


#: Height in inches of the line that states the colour-scale policy.
_NOTE_INCHES = 0.3


def _plain(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def _draw_image(axis, background: np.ndarray, aspect: float = 1.0) -> None:
    gray = background.shape[-1] == 1
    axis.imshow(
        background[..., 0] if gray else background, cmap="gray" if gray else None, vmin=0, vmax=1, aspect=aspect
    )
    _plain(axis)


def _cell_centres(cells: Sequence[tuple[int, int]], grid: tuple[int, int], size: tuple[int, int]):
    """Image coordinates (x, y) of the centres of patch-grid cells on an image of ``size`` (height, width)."""
    height, width = size
    xs = [(col + 0.5) * width / grid[1] - 0.5 for _, col in cells]
    ys = [(row + 0.5) * height / grid[0] - 0.5 for row, _ in cells]
    return xs, ys


def _outline_cells(axis, mask: np.ndarray, size: tuple[int, int], colour: str) -> None:
    """An outline around each True cell of a patch-grid mask, on an image of ``size``."""
    from matplotlib.patches import Rectangle

    height, width = size
    cell_h, cell_w = height / mask.shape[0], width / mask.shape[1]
    for row, col in zip(*np.nonzero(mask), strict=True):
        axis.add_patch(
            Rectangle(
                (col * cell_w - 0.5, row * cell_h - 0.5), cell_w, cell_h, fill=False, edgecolor=colour, linewidth=1.0
            )
        )


def _mark(axis, cells: Sequence[tuple[int, int]], grid: tuple[int, int], size: tuple[int, int], marker: str) -> None:
    """Diagnostics on a panel: a ring ("o", attention sink) or a cross ("x", high-norm token) per cell."""
    if not cells:
        return
    xs, ys = _cell_centres(cells, grid, size)
    style = {"markerfacecolor": "none"} if marker == "o" else {}
    axis.plot(xs, ys, linestyle="none", marker=marker, markersize=7, markeredgewidth=1.5, color=_SINK_COLOUR, **style)


def _draw(
    axis,
    background: np.ndarray,
    relevance: tuple[np.ndarray, bool],
    interpolation: str,
    cmap: str,
    alpha: float,
    scale: ColourScale,
    aspect: float = 1.0,
):
    """The image, then the relevance over it (a pixel map as it is, a patch grid upsampled); clipped patch
    cells outlined (a pixel map's clipped pixels are only counted: outlining each would hide the map)."""
    values, is_pixels = relevance
    _draw_image(axis, background, aspect)
    overlay = values if is_pixels else _upsample(values, background.shape[:2], interpolation)
    drawn = axis.imshow(overlay, cmap=cmap, alpha=alpha, vmin=scale.low, vmax=scale.high, aspect=aspect)
    if not is_pixels and scale.clipped:
        _outline_cells(axis, scale.outside(values), background.shape[:2], _CLIPPED_COLOUR)
    _plain(axis)
    return drawn


def _colorbar(figure, drawn, axes, extend: str = "neither") -> None:
    bar = figure.colorbar(drawn, ax=axes, fraction=0.05, pad=0.03, aspect=15, extend=extend)
    bar.ax.tick_params(labelsize=6)


def _scale_note(scale: str, rows: int, row_kind: str, clipped: bool = False) -> str:
    if scale == "panel":
        note = "colour scale: one per panel"
    elif scale == "row" and rows > 1:
        note = f"colour scale: one per row ({row_kind})"
    else:
        note = "colour scale: one for all panels"
    if clipped:
        note += (
            f"; its top is at most {CLIP_HEADROOM:g} x the {CLIP_PERCENTILE:g}th percentile, "
            f"cells above it are clipped (outlined in {_CLIPPED_COLOUR})"
        )
    return note


def _view_note(geometry: Any, input_size: tuple[int, int]) -> str:
    """What the image column shows: the model's input, and (with a geometry) which part of the photo at what aspect."""
    height, width = input_size
    if geometry is None:
        return f"image: the model's {width} x {height} input, as the processor made it (aspect as the model sees it)"
    top, left, bottom, right = geometry.visible
    scale_y, scale_x = geometry.original[0] / geometry.resized[0], geometry.original[1] / geometry.resized[1]
    shown_h, shown_w = round((bottom - top) * scale_y), round((right - left) * scale_x)
    whole = (shown_h, shown_w) == tuple(geometry.original)
    part = "all of the" if whole else f"the {shown_w} x {shown_h} px centre crop of the"
    return (
        f"image: the model's {width} x {height} input, showing {part} {geometry.original[1]} x "
        f"{geometry.original[0]} px photo, drawn at the photo's aspect"
    )


def _pixel_aspect(geometry: Any) -> float:
    """imshow ``aspect`` (height / width of one input pixel in the photo) so the panel has the photo's proportions."""
    if geometry is None:
        return 1.0
    from ..images import ImageGeometry

    if not isinstance(geometry, ImageGeometry):
        raise TypeError(
            f"Expected geometry as an ImageGeometry (captum_tokenlrp.images.processor_geometry(processor, "
            f"image)), got {type(geometry).__name__}."
        )
    return (geometry.original[0] / geometry.resized[0]) / (geometry.original[1] / geometry.resized[1])


def _check_geometry(geometry: Any, background: np.ndarray) -> float:
    aspect = _pixel_aspect(geometry)
    if geometry is not None and tuple(geometry.input) != tuple(background.shape[:2]):
        raise ValueError(
            f"geometry is for a {geometry.input[0]} x {geometry.input[1]} model input, but the image is "
            f"{background.shape[0]} x {background.shape[1]}; pass the geometry of this image's processor call."
        )
    return aspect


def _title(title: str | None, prediction: tuple[str, float] | None) -> str | None:
    if prediction is None:
        return title
    try:
        label, probability = prediction
        probability = float(probability)
    except (TypeError, ValueError):
        raise TypeError(f"Expected prediction as (class name, probability), got {prediction!r}.") from None
    if not isinstance(label, str) or not 0.0 <= probability <= 1.0:
        raise ValueError(
            f"Expected prediction as (class name, probability in [0, 1]), got {prediction!r}; "
            f"e.g. (model.config.id2label[index], float(probabilities[index]))."
        )
    line = f"predicted: {label} (p = {probability:.2f})"
    return f"{title}\n{line}" if title else line
