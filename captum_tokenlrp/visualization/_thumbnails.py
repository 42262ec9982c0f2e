"""The photo at its own proportions: the processor's geometry for figures, and small PIL thumbnails."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._drawing import _pixel_aspect
from ._maps import ArrayLike, _as_array
from ._scale import CLIP_PERCENTILE, colour_scale


def display_geometry(processor: Any, image: Any, input_size: Sequence[int] | None = None) -> Any:
    """The processor's :class:`~captum_tokenlrp.images.ImageGeometry` for ``image``, to draw figures at the
    photo's aspect (``geometry=``), or None where the package does not model the processor.

    Parameters
    ----------
    processor : image processor
        The model's HuggingFace image processor (or a processor holding one).
    image : PIL.Image.Image or (height, width)
        The photo as loaded (:func:`captum_tokenlrp.images.load_image`), or its size.
    input_size : (int, int), optional
        `(height, width)` of the ``pixel_values`` the processor made: a geometry that predicts another
        size is not returned.

    Returns
    -------
    ImageGeometry or None
    """
    from ..images import processor_geometry

    size = (image.height, image.width) if hasattr(image, "height") else tuple(image)
    try:
        geometry = processor_geometry(getattr(processor, "image_processor", processor), size)
    except (TypeError, ValueError):
        return None  # a processor with its own resize code: figures then show the input as the model sees it
    if input_size is not None and tuple(geometry.input) != tuple(int(v) for v in input_size):
        return None
    return geometry


def photo_thumbnail(
    grid: ArrayLike,
    photo: Any,
    geometry: Any,
    width: int = 128,
    *,
    clip: float | None = CLIP_PERCENTILE,
    cmap: str = "inferno",
    alpha: float = 0.5,
):
    """A small PIL image of the photo at its own proportions with the patch map on the part the model saw.

    For thumbnails (the report, the app): the map is placed through the processor's resize and crop
    (``geometry``), so a photo the processor warped is not drawn squashed, and the border a centre crop
    cut off is drawn grey and dimmed, not covered by a stretched map.

    Parameters
    ----------
    grid : Tensor or ndarray
        `(grid_rows, grid_cols)` patch relevance (absolute values are drawn).
    photo : PIL.Image.Image
        The photo as loaded (:func:`captum_tokenlrp.images.load_image`).
    geometry : ImageGeometry
        ``processor_geometry(processor, photo)`` (or :func:`display_geometry`).
    width : int
        Thumbnail width in pixels; the height follows the photo's aspect.
    clip : float or None
        The colour scale, as :func:`colour_scale` (robust by default).
    cmap : str
        Matplotlib colour map.
    alpha : float
        Opacity of the map over the photo.

    Returns
    -------
    PIL.Image.Image
        RGB, ``width`` x ``round(width * height / photo width)``.
    """
    from matplotlib import colormaps
    from PIL import Image

    values = np.abs(_as_array(grid, "grid"))
    if values.ndim != 2:
        raise ValueError(f"Expected grid as a patch grid (grid_rows, grid_cols), got shape {tuple(values.shape)}.")
    _pixel_aspect(geometry)  # checks its type
    if tuple(geometry.original) != (photo.height, photo.width):
        raise ValueError(
            f"geometry is for a {geometry.original[1]} x {geometry.original[0]} photo, got one of "
            f"{photo.width} x {photo.height}; pass processor_geometry(processor, photo)."
        )
    height = max(1, round(width * photo.height / photo.width))
    # Each thumbnail pixel's centre -> resized image -> model input -> patch cell.
    ys = (np.arange(height) + 0.5) * geometry.resized[0] / height - geometry.crop[0]
    xs = (np.arange(width) + 0.5) * geometry.resized[1] / width - geometry.crop[1]
    rows = np.floor(ys * values.shape[0] / geometry.input[0]).astype(int)
    cols = np.floor(xs * values.shape[1] / geometry.input[1]).astype(int)
    inside = ((rows >= 0) & (rows < values.shape[0]))[:, None] & ((cols >= 0) & (cols < values.shape[1]))[None, :]
    cells = values[np.clip(rows, 0, values.shape[0] - 1)][:, np.clip(cols, 0, values.shape[1] - 1)]
    scale = colour_scale([values], clip=clip)
    span = scale.high - scale.low
    normalised = np.clip((cells - scale.low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(cells)
    colours = colormaps[cmap](normalised)[..., :3]
    base = np.asarray(photo.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    outside = np.repeat(0.6 * base.mean(axis=-1, keepdims=True), 3, axis=-1)  # grey and dimmed: not seen
    blended = np.where(inside[..., None], (1 - alpha) * base + alpha * colours, outside)
    return Image.fromarray((blended * 255).round().astype(np.uint8))
