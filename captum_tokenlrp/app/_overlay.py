"""A relevance map blended over the photo with a labelled colour bar, drawn with PIL (live sliders)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from torch import Tensor

from ._inputs import AppInputError


def overlay_image(
    image: Image.Image,
    relevance_map: Tensor,
    opacity: float,
    title: str,
    side: int = 480,
    *,
    percent_per_value: float | None = None,
    high: float | None = None,
) -> Image.Image:
    """The map blended over the image, scaled so that its longer side is ``side``, with a labelled colour bar.

    Drawn with PIL rather than matplotlib (about 10 ms instead of 200), since the sliders redraw it live.

    Parameters
    ----------
    image : PIL.Image.Image
        The original image, `(H, W)`.
    relevance_map : Tensor
        `(H, W)`: relevance on the original pixels (:meth:`Explorer.original_map`).
    opacity : float
        Weight of the colour map over the image, in [0, 1].
    title : str
        Written above the panel.
    percent_per_value : float, optional
        Converts a value of ``relevance_map`` (relevance per original pixel) into the percent of the total
        relevance that a patch of that density holds (:func:`percent_per_pixel_value`); the bar is then
        labelled in that unit, the one of the "Top patches" table. Without it the bar shows the raw values.
    high : float, optional
        Top of the colour scale in the map's values (the robust top of :func:`robust_top`); the map's
        maximum by default. Pixels above it are drawn in the top colour and outlined in cyan, and the bar's
        top label reads "≥".
    """
    from PIL import ImageDraw

    if not 0.0 <= opacity <= 1.0:
        raise AppInputError(f"Opacity must lie in [0, 1], got {opacity}.")
    values = relevance_map.double().numpy()
    low, maximum = float(values.min()), float(values.max())
    high = maximum if high is None else min(float(high), maximum)
    clipped = maximum > high
    colours = Image.fromarray(inferno_colours(values, low, high))
    scale = side / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    blended = Image.blend(image.convert("RGB").resize(size, resample), colours.resize(size, resample), opacity)
    if clipped:
        outside = Image.fromarray((values > high).astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        pixels = np.asarray(blended).copy()
        pixels[outline(np.asarray(outside) > 0)] = CLIPPED_RGB
        blended = Image.fromarray(pixels)
    bar_width, margin, header = 16, 70, 22
    canvas = Image.new("RGB", (size[0] + bar_width + margin, size[1] + header), "white")
    canvas.paste(blended, (0, header))
    ramp = np.linspace(1.0, 0.0, size[1])[:, None].repeat(bar_width, axis=1)
    bar = Image.fromarray(inferno_colours(ramp, 0.0, 1.0))
    canvas.paste(bar, (size[0] + 6, header))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    x = size[0] + bar_width + 10
    above = ">= " if clipped else ""  # the top colour also stands for the clipped values above it
    if percent_per_value is None:
        draw.text((x, header), f"{above}{high:.3g}", fill="black")
        draw.text((x, header + size[1] - 12), f"{low:.3g}", fill="black")
    else:
        draw.text((x, header), f"{above}{high * percent_per_value:.3g} %", fill="black")
        draw.text((x, header + size[1] - 12), f"{low * percent_per_value:.3g} %", fill="black")
        draw.text((x, header + size[1] // 2 - 12), "of total\nper patch", fill="black")
    return canvas


#: Outline of the cells (pixels) a robust colour scale clips: the colour :mod:`.visualization` outlines them in.
CLIPPED_RGB = (0, 255, 255)


#: Rings (attention sinks) and crosses (high-norm tokens) on the paper's figure, as :mod:`.visualization`.
MARKER_RGB = (255, 255, 255)


def outline(mask: np.ndarray) -> np.ndarray:
    """The border pixels of a boolean mask's regions (True pixels with a False or missing 4-neighbour)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def inferno_colours(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`(H, W)` values -> `(H, W, 3)` uint8 inferno colours on the scale ``low .. high``."""
    from matplotlib import colormaps

    spread = high - low
    normalised = np.clip((values - low) / spread, 0.0, 1.0) if spread > 0 else np.zeros_like(values)
    return (colormaps["inferno"](normalised)[..., :3] * 255).astype(np.uint8)
