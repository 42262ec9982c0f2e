"""The paper's figure (rules x (image, fused, heads)) drawn with PIL, with the diagnostics' marks."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .._core.geometry import patch_grid
from ..visualization import CLIP_HEADROOM, CLIP_PERCENTILE, colour_scale
from ._explorer import Capture, Explorer
from ._maps import fused_and_heads
from ._overlay import CLIPPED_RGB, MARKER_RGB, inferno_colours
from ._settings import ViewSettings

#: Opacity of the maps in the paper's figure (the overlay's slider leaves the figure as it is).
FIGURE_OPACITY = 0.6


#: The paper's figure's margins: left of the first panel (the rules' names), above the first row (title and
#: column names), and between panels.
FIGURE_LEFT, FIGURE_TOP, FIGURE_GAP = 64, 44, 4


def paper_figure(
    explorer: Explorer, capture: Capture, settings: ViewSettings, prediction: tuple[str, float] | None, tile: int = 96
) -> Image.Image:
    """The paper's figure: one row per rule with the model input, the fused map, then one map per head.

    Drawn with PIL (a few tens of ms, where matplotlib's :func:`~captum_tokenlrp.visualization.plot_rule_grid`
    takes seconds), one robust colour scale per row as that function's default
    (:func:`~captum_tokenlrp.visualization.colour_scale`: clipped cells outlined in cyan), stated under the
    panels; the image's attention sinks ringed on their head's panels (``*`` on the head) and its high-norm
    tokens crossed on the image column, as that function marks them.
    """
    from PIL import ImageDraw

    from ..visualization import image_for_display

    background = image_for_display(capture.pixel_values[0].float().cpu(), processor=explorer.loaded.processor)
    photo = Image.fromarray((background * 255).round().astype(np.uint8)).resize((tile, tile), Image.Resampling.BILINEAR)
    rows = list(settings.rules)
    diagnostics = capture.diagnostics
    sink_heads = {sink.head for sink in diagnostics.sinks} if diagnostics is not None else set()
    columns = [
        "image",
        "fused",
        *(f"head {index}{' *' if index in sink_heads else ''}" for index in range(explorer.num_heads)),
    ]
    left, top, gap, bottom = FIGURE_LEFT, FIGURE_TOP, FIGURE_GAP, 50
    width = left + len(columns) * (tile + gap)
    canvas = Image.new("RGB", (width, top + len(rows) * (tile + gap) + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    title = f"{explorer.name} - fused: {settings.head_fusion}"
    if prediction is not None:
        title += f" - predicted: {prediction[0]} (p = {prediction[1]:.2f})"
    draw.text((4, 4), title, fill="black")
    for column, name in enumerate(columns):
        draw.text((left + column * (tile + gap) + 2, top - 14), name, fill="black")
    cells = capture.layout.grid
    clipped_any = False
    for row, rule in enumerate(rows):
        fused_rel, head_rel = fused_and_heads(explorer, capture, rule, settings)
        grids = [patch_grid(fused_rel, capture.layout), *patch_grid(head_rel, capture.layout)]
        maps = [grid.double().numpy() for grid in grids]
        scale = colour_scale(maps)  # one per row, robust: one sink's patch does not darken the whole row
        clipped_any |= scale.clipped
        _, y = figure_panel_origin(row, 0, tile)
        draw.text((4, y + tile // 2 - 6), f"rule ({rule})", fill="black")
        canvas.paste(photo, (left, y))
        if diagnostics is not None:
            for cell in diagnostics.high_norm_cells():
                _cross(draw, figure_cell_box(left, y, tile, cells, cell))
        for column, values in enumerate(maps, start=1):
            colours = Image.fromarray(inferno_colours(values, scale.low, scale.high)).resize(
                (tile, tile), Image.Resampling.NEAREST
            )
            x, _ = figure_panel_origin(row, column, tile)
            canvas.paste(Image.blend(photo, colours, FIGURE_OPACITY), (x, y))
            for cell in zip(*np.nonzero(scale.outside(values)), strict=True):
                draw.rectangle(figure_cell_box(x, y, tile, cells, cell), outline=CLIPPED_RGB)
            if diagnostics is not None and column >= 2:
                for cell in diagnostics.sink_cells(column - 2):
                    draw.ellipse(_inset(figure_cell_box(x, y, tile, cells, cell), 0.2), outline=MARKER_RGB, width=2)
    note = "colour scale: one per row (rule)"
    if clipped_any:
        note += (
            f"; its top is at most {CLIP_HEADROOM:g} x the {CLIP_PERCENTILE:g}th percentile of the row's maps, "
            "cells above it clipped (outlined in cyan)"
        )
    else:
        note += ", its minimum to maximum (nothing clipped)"
    draw.text((4, canvas.height - bottom + 2), note, fill="black")
    draw.text((4, canvas.height - bottom + 16), "inferno: dark = low, bright = high", fill="black")
    if diagnostics is not None:
        marks = (
            "ring: an attention sink's token on its head (* on the head); cross: a high-norm token"
            if diagnostics.sinks or diagnostics.high_norm_tokens
            else "no attention sink and no high-norm token"
        )
        draw.text((4, canvas.height - bottom + 30), marks, fill="black")
    return canvas


def figure_panel_origin(row: int, column: int, tile: int = 96) -> tuple[int, int]:
    """Top left ``(x, y)`` of the paper's figure's panel in ``row`` (rule) and ``column`` (0: the image,
    1: fused, 2 + h: head h)."""
    return FIGURE_LEFT + column * (tile + FIGURE_GAP), FIGURE_TOP + row * (tile + FIGURE_GAP)


def figure_cell_box(x: int, y: int, tile: int, grid: tuple[int, int], cell: tuple[int, int]) -> tuple[int, ...]:
    """The pixel box ``(x0, y0, x1, y1)`` of patch-grid ``cell`` (row, col) in a figure panel whose top left is
    ``(x, y)``, ``tile`` pixels square (corners inclusive, as PIL draws them)."""
    row, col = (int(value) for value in cell)
    x0, x1 = x + col * tile // grid[1], x + (col + 1) * tile // grid[1] - 1
    y0, y1 = y + row * tile // grid[0], y + (row + 1) * tile // grid[0] - 1
    return x0, y0, x1, y1


def _inset(box: tuple[int, ...], share: float) -> tuple[int, ...]:
    """``box`` shrunk by ``share`` of its size on each side (at most 1 pixel of room left)."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * share), round((y1 - y0) * share)
    return x0 + dx, y0 + dy, max(x0 + dx, x1 - dx), max(y0 + dy, y1 - dy)


def _cross(draw, box: tuple[int, ...]) -> None:
    """A cross over ``box`` (a high-norm token's cell), in the markers' colour."""
    x0, y0, x1, y1 = _inset(box, 0.2)
    draw.line((x0, y0, x1, y1), fill=MARKER_RGB, width=2)
    draw.line((x0, y1, x1, y0), fill=MARKER_RGB, width=2)
