"""The image figures: one overlay, methods side by side, and the paper's rules x (fused, heads) grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._adapters import TokenLayout
from ._drawing import (
    _COLORBAR_INCHES,
    _NOTE_INCHES,
    _check_geometry,
    _colorbar,
    _draw,
    _draw_image,
    _mark,
    _scale_note,
    _title,
    _view_note,
)
from ._images import image_for_display
from ._maps import ArrayLike, Interpolation, ScalePolicy, _check_options, _head_maps, _relevance_map, _resolve_scale
from ._scale import CLIP_PERCENTILE, colour_scale


def plot_overlay(
    image: ArrayLike,
    relevance: ArrayLike,
    *,
    layout: TokenLayout | None = None,
    interpolation: Interpolation = "nearest",
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str | None = None,
    colorbar: bool = True,
    size: float = 3.5,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    processor: Any = None,
    clip: float | None = CLIP_PERCENTILE,
    geometry: Any = None,
):
    """One relevance map over its image.

    Parameters
    ----------
    image : Tensor or ndarray
        `(channels, height, width)` or `(height, width, channels)`.
    relevance : Tensor or ndarray
        A patch grid `(grid_rows, grid_cols)` (e.g. from :func:`patch_grid`), upsampled to the image
        (``"nearest"`` shows patches as they are, ``"bilinear"`` smooths them); token relevance
        `(num_tokens,)` or `(1, num_tokens)` with ``layout``; or a pixel map of the image's size,
        `(height, width)`, `(channels, height, width)` or `(1, channels, height, width)` (as ``attribute()``
        returns; summed over channels), drawn as it is.
    layout : TokenLayout, optional
        ``lrp.token_layout(pixel_values)``; required for token relevance.
    interpolation : {"nearest", "bilinear"}
        How a patch grid is upsampled for display.
    alpha : float
        Opacity of the relevance over the image.
    cmap : str
        Matplotlib colour map of the relevance.
    title : str, optional
        Above the panel.
    colorbar : bool
        Draw a colour bar (with an arrow when the top is clipped, see ``clip``).
    size : float
        Panel height in inches (the width adds 25 % with the colour bar).
    mean, std, processor : optional
        The image's normalisation, undone for display; see :func:`image_for_display`.
    clip : float or None, default 99
        Robust colour scales: each scale's top is at most 2 x this percentile of its maps (see
        :func:`colour_scale`), so one outlying token cannot leave the rest dark; clipped patch cells are
        outlined and the colour bar gets an arrow. ``None``: minimum to maximum.
    geometry : ImageGeometry, optional
        ``captum_tokenlrp.images.processor_geometry(processor, photo)``: the panels are drawn at the photo's
        proportions (a processor that warps a 640 x 480 photo to 224 x 224 is undone for display) and the
        note says which part of the photo the model saw. Without it the input is drawn as the model sees it.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    _check_options(interpolation)
    background = image_for_display(image, mean=mean, std=std, processor=processor)
    relevance_map = _relevance_map(relevance, background.shape, layout, "relevance")
    aspect = _check_geometry(geometry, background)
    proportions = background.shape[1] / (background.shape[0] * aspect)
    figure = Figure(figsize=(size * proportions + (0.25 * size if colorbar else 0.0), size), layout="constrained")
    axis = figure.subplots()
    limits = colour_scale([relevance_map[0]], clip=clip)
    drawn = _draw(axis, background, relevance_map, interpolation, cmap, alpha, limits, aspect)
    if colorbar:
        _colorbar(figure, drawn, axis, limits.extend)
    if title:
        axis.set_title(title, fontsize=10)
    return figure


def plot_method_comparison(
    image: ArrayLike,
    maps: Mapping[str, ArrayLike],
    *,
    layout: TokenLayout | None = None,
    scale: ScalePolicy = "panel",
    shared_scale: bool | None = None,
    interpolation: Interpolation = "nearest",
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str | None = None,
    panel_size: float = 2.2,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    processor: Any = None,
    clip: float | None = CLIP_PERCENTILE,
    geometry: Any = None,
):
    """One image, one column per method: the image itself, then each method's map over it.

    Parameters
    ----------
    image : Tensor or ndarray
        `(channels, height, width)` or `(height, width, channels)`.
    maps : mapping of str to Tensor or ndarray
        Method name -> its map, in any shape :func:`plot_overlay` accepts (patch grid `(grid_rows, grid_cols)`,
        token relevance `(num_tokens,)` with ``layout``, or a pixel map of the image's size).
    layout : TokenLayout, optional
        ``lrp.token_layout(pixel_values)``; required for token relevance.
    scale : {"panel", "row", "shared"}, default "panel"
        ``"panel"``: one colour scale (and colour bar) per method, as methods differ in units (IG is
        signed, rollout sums to 1); ``"shared"`` (or ``"row"``, the same for this one-row figure): one
        colour scale over all maps and one colour bar. Each scale spans its maps' minimum to maximum; a
        line under the panels states the policy.
    shared_scale : bool, optional
        Deprecated alias: True is ``scale="shared"``, False ``scale="panel"``.
    interpolation : {"nearest", "bilinear"}
        How patch grids are upsampled for display.
    alpha : float
        Opacity of the relevance over the image.
    cmap : str
        Matplotlib colour map of the relevance.
    title : str, optional
        Above the figure.
    panel_size : float
        Panel height in inches; each colour bar adds 0.6 inch to the width.
    mean, std, processor, clip, geometry : optional
        As in :func:`plot_overlay`: the normalisation undone for display, the robust colour scales, the
        photo's own proportions.

    Returns
    -------
    matplotlib.figure.Figure
        Axes: the image, one per method, then the colour bars.
    """
    from matplotlib.figure import Figure

    scale = _resolve_scale(scale, shared_scale, "panel")
    _check_options(interpolation, scale)
    if not maps:
        raise ValueError("maps is empty; pass at least one method name -> map.")
    background = image_for_display(image, mean=mean, std=std, processor=processor)
    relevance = {name: _relevance_map(m, background.shape, layout, f"maps[{name!r}]") for name, m in maps.items()}
    aspect = _check_geometry(geometry, background)
    panel_width = panel_size * background.shape[1] / (background.shape[0] * aspect)
    bars = len(maps) if scale == "panel" else 1
    height = panel_size + 2 * _NOTE_INCHES + (0.35 if title else 0.0)
    figure = Figure(figsize=(panel_width * (len(maps) + 1) + _COLORBAR_INCHES * bars, height), layout="constrained")
    axes = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
    _draw_image(axes[0], background, aspect)
    axes[0].set_title("image", fontsize=9)
    shared = colour_scale([values for values, _ in relevance.values()], clip=clip)
    drawn, clipped = None, False
    for axis, (name, values) in zip(axes[1:], relevance.items(), strict=True):
        limits = colour_scale([values[0]], clip=clip) if scale == "panel" else shared
        clipped |= limits.clipped
        drawn = _draw(axis, background, values, interpolation, cmap, alpha, limits, aspect)
        axis.set_title(name, fontsize=9)
        if scale == "panel":
            _colorbar(figure, drawn, axis, limits.extend)
    if scale != "panel":
        _colorbar(figure, drawn, list(axes[1:]), shared.extend)
    notes = [_scale_note(scale, 1, "method", clipped), _view_note(geometry, background.shape[:2])]
    figure.supxlabel("\n".join(notes), fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def plot_rule_grid(
    image: ArrayLike,
    fused: Mapping[str, ArrayLike],
    per_head: Mapping[str, ArrayLike] | None = None,
    *,
    layout: TokenLayout | None = None,
    scale: ScalePolicy = "row",
    shared_scale: bool | None = None,
    interpolation: Interpolation = "nearest",
    alpha: float = 0.6,
    cmap: str = "inferno",
    title: str | None = None,
    prediction: tuple[str, float] | None = None,
    panel_size: float = 1.8,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    processor: Any = None,
    clip: float | None = CLIP_PERCENTILE,
    geometry: Any = None,
    diagnostics: Any = None,
):
    """The paper's figure: one row per rule (or method): the image, the fused map, then one map per head.

    Parameters
    ----------
    image : Tensor or ndarray
        The input image, `(channels, height, width)` or `(height, width, channels)`; shown in the first
        column (titled "image") of every row, under the maps.
    fused : mapping of str to Tensor or ndarray
        Row label -> fused map, in any shape :func:`plot_overlay` accepts: a patch grid
        `(grid_rows, grid_cols)`, token relevance `(num_tokens,)` with ``layout``, or a pixel map.
    per_head : mapping of str to Tensor or ndarray, optional
        Row label (a key of ``fused``) -> per-head maps `(num_heads, grid_rows, grid_cols)`,
        `(num_heads, height, width)`, or `(num_heads, num_tokens)` with ``layout``. Rows with fewer
        heads leave their last panels empty. Columns are titled ``head 0`` .. ``head {num_heads - 1}``:
        the index of the heads axis, as ``token_relevance(..., head_fusion=None)[:, h]`` reads it.
    layout : TokenLayout, optional
        ``lrp.token_layout(pixel_values)``; required for token relevance.
    scale : {"row", "panel", "shared"}, default "row"
        Colour scales: ``"row"``, one per row (rule) with one colour bar at the row's end; ``"panel"``,
        one per panel with a colour bar each; ``"shared"``, one for the whole figure and one colour bar.
        Each scale spans its maps' minimum to maximum, the top clipped as ``clip`` says; a line under
        the panels states the policy.
    shared_scale : bool, optional
        Deprecated alias: True is ``scale="shared"``, False ``scale="panel"``.
    interpolation : {"nearest", "bilinear"}
        How patch grids are upsampled for display.
    alpha : float
        Opacity of the relevance over the image.
    cmap : str
        Matplotlib colour map of the relevance.
    title : str, optional
        Above the figure.
    prediction : (str, float), optional
        A classifier's predicted class name and probability, shown in the title as
        ``"predicted: star (p = 0.97)"`` (on a second line under ``title``).
    panel_size : float
        Panel height in inches; each column of colour bars adds 0.6 inch to the width.
    mean, std, processor : optional
        The image's normalisation, undone for display; see :func:`image_for_display`.
    clip : float or None, default 99
        Robust colour scales: each scale's top is at most 2 x this percentile of its maps (see
        :func:`colour_scale`), so one token (an attention sink's patch) cannot leave the other panels
        dark; clipped patch cells are outlined and the colour bar gets an arrow. ``None``: minimum to maximum.
    geometry : ImageGeometry, optional
        ``captum_tokenlrp.images.processor_geometry(processor, photo)``: the panels are drawn at the photo's
        proportions (a processor that warps a 640 x 480 photo to 224 x 224 is undone for display) and the
        note says which part of the photo the model saw. Without it the input is drawn as the model sees it.
    diagnostics : Diagnostics, optional
        From :func:`captum_tokenlrp.diagnostics.diagnose` on the same input: each head's attention-sink
        patches get a white ring in that head's column (its title a ``*``), high-norm patches a white
        cross in the image column, and a line under the figure names them (the largest four of each).

    Returns
    -------
    matplotlib.figure.Figure
        Axes: the panels row by row (`rows x (2 + num_heads)`), then the colour bars.
    """
    # A bare Figure (no pyplot): no global state, no GUI backend, nothing shown.
    from matplotlib.figure import Figure

    scale = _resolve_scale(scale, shared_scale, "row")
    _check_options(interpolation, scale)
    if not fused:
        raise ValueError("fused is empty; pass at least one row label -> fused map.")
    per_head = dict(per_head or {})
    unknown = sorted(set(per_head) - set(fused))
    if unknown:
        raise ValueError(
            f"per_head has rows that fused lacks: {unknown}; its keys must be keys of fused {list(fused)}."
        )
    background = image_for_display(image, mean=mean, std=std, processor=processor)
    panels: dict[str, list[tuple[np.ndarray, bool]]] = {}
    for label in fused:
        row = [_relevance_map(fused[label], background.shape, layout, f"fused[{label!r}]")]
        heads = _head_maps(per_head[label], layout, f"per_head[{label!r}]") if label in per_head else []
        for h, head in enumerate(heads):
            row.append(_relevance_map(head, background.shape, layout, f"per_head[{label!r}][{h}]"))
        panels[label] = row
    rows, num_heads = len(panels), max(len(row) for row in panels.values()) - 1
    columns = 2 + num_heads
    aspect = _check_geometry(geometry, background)
    notes_lines = _diagnostics_lines(diagnostics, layout)
    title_text = _title(title, prediction)
    bar_columns = columns - 1 if scale == "panel" else 1
    panel_width = panel_size * background.shape[1] / (background.shape[0] * aspect)
    width = panel_width * columns + _COLORBAR_INCHES * bar_columns
    note_inches = _NOTE_INCHES * (2 + len(notes_lines)) * 0.6
    height = panel_size * rows + note_inches + (0.25 * (title_text.count("\n") + 1) + 0.1 if title_text else 0.0)
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    shared = colour_scale([values for row in panels.values() for values, _ in row], clip=clip)
    clipped = False
    size = background.shape[:2]
    for r, (label, row) in enumerate(panels.items()):
        _draw_image(axes[r][0], background, aspect)
        axes[r][0].set_ylabel(label, fontsize=9)
        if diagnostics is not None:
            _mark(axes[r][0], diagnostics.high_norm_cells(), diagnostics.layout.grid, size, "x")
        row_scale = colour_scale([values for values, _ in row], clip=clip)
        drawn = None
        for c in range(1, columns):
            axis = axes[r][c]
            if c > len(row):
                axis.set_axis_off()
                continue
            if scale == "panel":
                limits = colour_scale([row[c - 1][0]], clip=clip)
            else:
                limits = row_scale if scale == "row" else shared
            clipped |= limits.clipped
            drawn = _draw(axis, background, row[c - 1], interpolation, cmap, alpha, limits, aspect)
            if diagnostics is not None and c >= 2:
                _mark(axis, diagnostics.sink_cells(c - 2), diagnostics.layout.grid, size, "o")
            if scale == "panel":
                _colorbar(figure, drawn, axis, limits.extend)
        if scale == "row":
            _colorbar(figure, drawn, list(axes[r][1:]), row_scale.extend)
        if r == 0:
            for c in range(columns):
                axes[0][c].set_title(_column_title(c, diagnostics), fontsize=9)
    if scale == "shared":
        _colorbar(figure, drawn, [axis for row_axes in axes for axis in row_axes[1:]], shared.extend)
    notes = [_scale_note(scale, rows, "rule", clipped), _view_note(geometry, size), *notes_lines]
    figure.supxlabel("\n".join(notes), fontsize=7)
    if title_text:
        figure.suptitle(title_text, fontsize=10)
    return figure


def _column_title(column: int, diagnostics: Any) -> str:
    """"image", "fused", then "head 0" ..: the heads axis' own index; a ``*`` where the head has a sink."""
    if column < 2:
        return "image" if column == 0 else "fused"
    head = column - 2
    sink = diagnostics is not None and any(s.head == head for s in diagnostics.sinks)
    return f"head {head}{' *' if sink else ''}"


def _diagnostics_lines(diagnostics: Any, layout: TokenLayout | None) -> list[str]:
    """The lines the figure prints for :func:`~captum_tokenlrp.diagnostics.diagnose`'s findings (checked first)."""
    if diagnostics is None:
        return []
    from ..diagnostics import Diagnostics

    if not isinstance(diagnostics, Diagnostics):
        raise TypeError(
            f"Expected diagnostics from captum_tokenlrp.diagnostics.diagnose(model, pixel_values), got "
            f"{type(diagnostics).__name__}."
        )
    if layout is not None and layout.grid != diagnostics.layout.grid:
        raise ValueError(
            f"diagnostics are for a {diagnostics.layout.grid} patch grid, the maps for {layout.grid}: "
            f"diagnose the same pixel_values."
        )
    lines = diagnostics.summary()
    if lines:
        lines[-1] += "   (* / ring: head with a sink and its token; cross: high-norm token)"
    else:
        lines = [
            f"no attention sink (>= {100 * diagnostics.sink_share:.0f} % of a head's attention on one token) "
            f"and no high-norm token (>= {diagnostics.norm_ratio:g}x the median norm)"
        ]
    return lines
