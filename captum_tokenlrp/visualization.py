"""Figures of token relevance (matplotlib). Functions return the Figure; nothing is shown.

Every plotting function reads a relevance map through one helper, so each accepts the same inputs
(tensors or numpy arrays):

- a patch grid `(grid_rows, grid_cols)`, e.g. from :func:`patch_grid`; upsampled to the image for display;
- token relevance `(num_tokens,)` or `(1, num_tokens)` together with ``layout=lrp.token_layout(pixel_values)``
  (which tokens are special and how the patches form the grid comes from the model, never from the length);
- a pixel map of the image's size: `(height, width)`, `(channels, height, width)` (summed over channels,
  Captum's convention for ``attribute()``) or a batch of one `(1, channels, height, width)`; drawn as it is.

Anything else raises a ``ValueError`` (or ``TypeError``) that says what was expected and what arrived.

Text relevance (:class:`~captum_tokenlrp.TextTokenRelevanceLRP`) is drawn as token heat-strips by
:func:`plot_text_relevance`: one block per rule, a row for the fused map and one per head, a column per token.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._adapters import TokenLayout
from ._core.geometry import patch_grid
from ._utils.stack import user_stacklevel

__all__ = [
    "CLIP_HEADROOM",
    "CLIP_PERCENTILE",
    "LINE_TOKENS",
    "ColourScale",
    "colour_scale",
    "display_geometry",
    "image_for_display",
    "patch_grid",
    "photo_thumbnail",
    "plot_method_comparison",
    "plot_overlay",
    "plot_rule_grid",
    "plot_text_relevance",
    "to_captum_image",
    "token_labels",
]

Interpolation = Literal["nearest", "bilinear"]
ScalePolicy = Literal["row", "panel", "shared"]
ArrayLike = Tensor | np.ndarray

_SCALES = ("row", "panel", "shared")
_EXPECTED_MAPS = (
    "a patch grid (grid_rows, grid_cols); token relevance (num_tokens,) or (1, num_tokens) with "
    "layout=lrp.token_layout(pixel_values); or a pixel map of the image's size, (height, width), "
    "(channels, height, width) or (1, channels, height, width)"
)
#: Width in inches kept for one colour bar and its tick labels.
_COLORBAR_INCHES = 0.6
#: Height in inches of the line that states the colour-scale policy.
_NOTE_INCHES = 0.3


# ------------------------------------------------------------------ images
def _normalisation(
    mean: Sequence[float] | float | None, std: Sequence[float] | float | None, processor: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-channel ``(mean, std)`` to undo, from explicit values or an image processor; None for neither."""
    if processor is not None:
        processor = getattr(processor, "image_processor", processor)  # a CLIPProcessor: its image part
        if mean is not None or std is not None:
            raise ValueError("Pass either processor or mean and std, not both.")
        if not getattr(processor, "do_normalize", True):
            return None  # the processor did not normalise: nothing to undo
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
        if mean is None or std is None:
            raise TypeError(
                f"processor must have image_mean and image_std (a HuggingFace image processor), got "
                f"{type(processor).__name__} without them. Pass mean=... and std=... instead."
            )
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(
            f"Pass both mean and std (the processor's image_mean and image_std), got mean={mean!r} and std={std!r}."
        )
    mean_array = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    std_array = np.atleast_1d(np.asarray(std, dtype=np.float64))
    if mean_array.ndim != 1 or std_array.ndim != 1 or not (std_array > 0).all():
        raise ValueError(f"mean and std must be numbers or one per channel, std > 0; got mean={mean!r}, std={std!r}.")
    return mean_array, std_array


def _denormalise(hwc: np.ndarray, normalisation: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``x * std + mean`` per channel (last axis), clipped to [0, 1]."""
    mean, std = normalisation
    channels = hwc.shape[-1]
    for name, values in (("mean", mean), ("std", std)):
        if values.size not in (1, channels):
            raise ValueError(
                f"{name} has {values.size} values but the image has {channels} channels; "
                f"pass one value per channel (or one for all)."
            )
    return np.clip(hwc * std + mean, 0.0, 1.0)


def image_for_display(
    image: ArrayLike,
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    processor: Any = None,
) -> np.ndarray:
    """One image as `(height, width, channels)` floats in [0, 1], for display.

    Parameters
    ----------
    image : Tensor or ndarray
        `(channels, height, width)` (a model input, e.g. ``pixel_values[0]``) or `(height, width, channels)`.
    mean, std : float or sequence of float, optional
        The normalisation the image went through (one value per channel, or one for all): it is undone,
        ``image * std + mean``, and the result clipped to [0, 1]. Give both or neither.
    processor : HuggingFace image processor, optional
        Reads ``mean`` and ``std`` from its ``image_mean`` and ``image_std`` (nothing is undone when its
        ``do_normalize`` is False). Not together with ``mean`` and ``std``.

    Returns
    -------
    ndarray
        `(height, width, channels)`, float64 in [0, 1]. Without ``mean``, ``std`` or ``processor`` the image
        is min-max rescaled (enough to recognise a normalised input; colours are approximate).
    """
    normalisation = _normalisation(mean, std, processor)
    array = image.detach().double().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim != 3:
        raise ValueError(
            f"Expected one image (channels, height, width) or (height, width, channels), got shape "
            f"{tuple(array.shape)}; index a batch first, e.g. pixel_values[0]."
        )
    if normalisation is not None:
        return _denormalise(array, normalisation)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def to_captum_image(
    attribution: Tensor | tuple[Tensor],
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    processor: Any = None,
) -> np.ndarray:
    """One attribution (or image) as the `(height, width, channels)` numpy array Captum's plots take.

    ``visualize_image_attr(to_captum_image(attr[0]), to_captum_image(pixel_values[0], processor=processor), ...)``

    Parameters
    ----------
    attribution : Tensor or 1-tuple of Tensor
        `(channels, height, width)` or a batch of one, `(1, channels, height, width)`.
    mean, std : float or sequence of float, optional
        For an image: the normalisation to undo, ``x * std + mean`` per channel, then clipped to [0, 1]
        (Captum's ``original_image`` and ``masked_image`` expect an image in [0, 1]). Give both or neither.
    processor : HuggingFace image processor, optional
        Reads ``mean`` and ``std`` from its ``image_mean`` and ``image_std``. Not together with them.

    Returns
    -------
    ndarray
        `(height, width, channels)`, float32: the values as they are, or the image in [0, 1] when a
        normalisation is given.
    """
    normalisation = _normalisation(mean, std, processor)
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
    hwc = attribution.detach().double().cpu().permute(1, 2, 0).numpy()
    if normalisation is not None:
        hwc = _denormalise(hwc, normalisation)
    return hwc.astype(np.float32)


# ------------------------------------------------------------------ relevance maps
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


#: Percentile of a colour scale's maps that its top is measured against (see :func:`colour_scale`).
CLIP_PERCENTILE = 99.0
#: A scale's top is at most this many times its maps' ``CLIP_PERCENTILE`` (the bottom likewise for negatives).
CLIP_HEADROOM = 2.0
#: Outline of the cells a robust colour scale clips, and the rings and crosses of :mod:`.diagnostics`.
_CLIPPED_COLOUR = "cyan"
_SINK_COLOUR = "white"


@dataclass(frozen=True)
class ColourScale:
    """The colour limits of a group of maps drawn on one scale, and the values they leave out.

    Attributes
    ----------
    low, high : float
        ``vmin`` and ``vmax`` of the colour map.
    minimum, maximum : float
        The maps' own extremes; above ``high`` (below ``low``) a value is *clipped*: drawn in the top
        (bottom) colour and outlined in the figures.
    """

    low: float
    high: float
    minimum: float
    maximum: float

    @property
    def clipped(self) -> bool:
        """Whether some value lies outside ``[low, high]``."""
        return self.maximum > self.high or self.minimum < self.low

    @property
    def extend(self) -> str:
        """Matplotlib's colour-bar ``extend``: an arrow on the side that is clipped."""
        top, bottom = self.maximum > self.high, self.minimum < self.low
        return "both" if top and bottom else "max" if top else "min" if bottom else "neither"

    def outside(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of the clipped values."""
        return (values > self.high) | (values < self.low)


def colour_scale(maps: Sequence[ArrayLike] | ArrayLike, *, clip: float | None = CLIP_PERCENTILE) -> ColourScale:
    """Colour limits for maps drawn on one scale, robust to a few outlying cells.

    One token that holds most of a map's relevance (an attention sink's patch) would otherwise set the
    top of the scale and leave every other cell dark. So the top is the maps' maximum, but at most
    ``CLIP_HEADROOM`` (2) times the largest of the maps' ``clip``-th percentiles (each map's own): a smooth
    map keeps its full range (its maximum is rarely twice its 99th percentile), a map with a few outlying
    cells is scaled to the rest and those cells are clipped. Negative values (signed maps) are treated the
    same way below zero.

    Parameters
    ----------
    maps : array or sequence of arrays
        Every value drawn on the scale (any shapes; NaN ignored).
    clip : float in (0, 100) or None, default 99
        The percentile; ``None`` spans the minimum to the maximum exactly.

    Returns
    -------
    ColourScale
        The limits, with the maps' extremes (``scale.clipped`` says whether anything lies outside).
    """
    if isinstance(maps, (Tensor, np.ndarray)):
        maps = [maps]
    arrays = [values[np.isfinite(values)] for values in (_as_array(m, "maps").ravel() for m in maps)]
    arrays = [values for values in arrays if values.size]
    if not arrays:
        return ColourScale(0.0, 1.0, 0.0, 1.0)
    minimum, maximum = min(float(v.min()) for v in arrays), max(float(v.max()) for v in arrays)
    low, high = minimum, maximum
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < 100:
            raise ValueError(f"clip must be a percentile in (0, 100) or None, got {clip!r}.")
        # Each map's own percentile, the largest of them: a map that is larger throughout keeps its range,
        # and a pixel map's many values do not outvote a patch grid's few.
        # "lower": an observed value, never interpolated towards the maximum (a 4 x 4 grid's 99th percentile
        # is its second largest cell, so one outlier is caught on small grids too).
        top = max(float(np.percentile(values, clip, method="lower")) for values in arrays)
        bottom = min(float(np.percentile(values, 100 - clip, method="higher")) for values in arrays)
        if top > 0:
            high = min(maximum, CLIP_HEADROOM * top)
        if bottom < 0:
            low = max(minimum, CLIP_HEADROOM * bottom)
    return ColourScale(low, high, minimum, maximum)


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
    from .images import processor_geometry

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


def _pixel_aspect(geometry: Any) -> float:
    """imshow ``aspect`` (height / width of one input pixel in the photo) so the panel has the photo's proportions."""
    if geometry is None:
        return 1.0
    from .images import ImageGeometry

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


# ------------------------------------------------------------------ figures
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
    """ "image", "fused", then "head 0" ..: the heads axis' own index; a ``*`` where the head has a sink."""
    if column < 2:
        return "image" if column == 0 else "fused"
    head = column - 2
    sink = diagnostics is not None and any(s.head == head for s in diagnostics.sinks)
    return f"head {head}{' *' if sink else ''}"


def _diagnostics_lines(diagnostics: Any, layout: TokenLayout | None) -> list[str]:
    """The lines the figure prints for :func:`~captum_tokenlrp.diagnostics.diagnose`'s findings (checked first)."""
    if diagnostics is None:
        return []
    from .diagnostics import Diagnostics

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


# ------------------------------------------------------------------ text
_TEXT_SCALES = ("row", "shared")


def _text_vector(value: object, name: str, num_tokens: int) -> np.ndarray:
    """Token relevance `(num_tokens,)` or a batch of one `(1, num_tokens)` -> `(num_tokens,)`."""
    array = _as_array(value, name)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or array.shape[0] != num_tokens:
        raise ValueError(
            f"Expected {name} as token relevance (num_tokens,) for the {num_tokens} tokens given, got shape "
            f"{tuple(array.shape)}; index the batch first (relevance[0]), per-head maps go to per_head."
        )
    return array


def _text_heads(value: object, name: str, num_tokens: int) -> np.ndarray:
    """Per-head relevance `(num_heads, num_tokens)` or `(1, num_heads, num_tokens)` -> `(num_heads, num_tokens)`."""
    array = _as_array(value, name)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] != num_tokens or array.shape[0] == 0:
        raise ValueError(
            f"Expected {name} as per-head relevance (num_heads, num_tokens) for the {num_tokens} tokens given, got "
            f"shape {tuple(array.shape)}; use token_relevance(..., head_fusion=None)[0]."
        )
    return array


#: Tokens per line of :func:`plot_text_relevance` before a text is wrapped.
LINE_TOKENS = 40
_CONTINUES = "\u00b7"  # middle dot: the token continues the previous word
_MISSING_GLYPH = "\u25a1"  # white square: no installed font draws the character
_BYTE_LEVEL_MARKS = ("\u0120", "\u010a")  # GPT-2's space and newline, in its byte-to-character alphabet


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes: printable bytes stand for themselves, the others for 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    characters, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[chr(byte)] = byte
        else:
            characters[chr(256 + extra)] = byte
            extra += 1
    return characters


def _is_special(token: str) -> bool:
    return (token.startswith("[") and token.endswith("]")) or (token.startswith("<") and token.endswith(">"))


def _rtl(label: str) -> str:
    """A right-to-left word (Hebrew, Arabic) in visual order: matplotlib draws characters left to right."""
    import unicodedata

    kinds = {unicodedata.bidirectional(character) for character in label}
    return label[::-1] if kinds & {"R", "AL"} and not kinds & {"L"} else label


def token_labels(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Readable labels for a tokenizer's token strings, and the notes that explain their marks.

    Sub-word pieces are marked, not shown in the tokenizer's own code: a piece that continues the previous
    word gets a leading ``·`` (WordPiece's ``##ing``, a byte-level BPE piece without GPT-2's ``Ġ`` space,
    a SentencePiece piece without ``▁``); word-start markers are dropped; GPT-2's byte-level characters
    are decoded back to text (``Ċ`` is ``\n``, ``æĹ¥`` is 日); a space alone is ``␣``. Right-to-left words
    are reversed into visual order (matplotlib lays characters out left to right and does not join
    Arabic letters). Special tokens (``[CLS]``, ``<s>``) are kept as they are.

    Parameters
    ----------
    tokens : sequence of str
        ``lrp.tokens(input_ids)[0]``.

    Returns
    -------
    (list of str, list of str)
        One label per token, and a note per mark used (for the figure's legend line).
    """
    byte_level = any(mark in token for token in tokens for mark in _BYTE_LEVEL_MARKS)
    sentencepiece = not byte_level and any(token.startswith("\u2581") for token in tokens)
    wordpiece = not byte_level and not sentencepiece and any(t.startswith("##") and len(t) > 2 for t in tokens)
    decoder = _byte_decoder() if byte_level else {}
    labels, marked, previous_word = [], False, False
    for token in tokens:
        if _is_special(token):
            labels.append(token)
            previous_word = False
            continue
        text, starts_word = token, True
        if wordpiece and token.startswith("##") and len(token) > 2:
            text, starts_word = token[2:], False
        elif byte_level:
            if all(character in decoder for character in token):
                raw = bytes(decoder[character] for character in token)
                text = raw.decode("utf-8", errors="replace")
            starts_word = text[:1] in (" ", "\n", "") or not previous_word
            text = text.lstrip(" ") or text
        elif sentencepiece:
            starts_word = token.startswith("\u2581") or not previous_word
            text = token.lstrip("\u2581") or token
        continues = not starts_word and text[:1].isalnum()
        text = text.replace("\n", "\\n").replace("\t", "\\t")
        if text.strip() == "":
            text = "\u2423"
        text = _rtl(text)
        if continues:
            text, marked = _CONTINUES + text, True
        labels.append(text)
        previous_word = text[-1:].isalnum()
    notes = [f"{_CONTINUES}x: x continues the previous word (a sub-word piece)"] if marked else []
    return labels, notes


_FONT_CACHE: dict[str, Any] = {}


def _font_charmaps() -> list[tuple[str, frozenset[int]]]:
    """(family, code points) of every installed font matplotlib knows, read once per process."""
    if "charmaps" not in _FONT_CACHE:
        from matplotlib import font_manager
        from matplotlib.ft2font import FT2Font

        seen, charmaps = set(), []
        for entry in font_manager.fontManager.ttflist:
            # "Last Resort" fonts map every code point to a box: drawing with them hides that a glyph is missing.
            if entry.name in seen or entry.style != "normal" or "last resort" in entry.name.lower():
                continue
            try:
                codes = frozenset(FT2Font(entry.fname).get_charmap())
            except (OSError, RuntimeError, ValueError):
                continue
            seen.add(entry.name)
            charmaps.append((entry.name, codes))
        _FONT_CACHE["charmaps"] = charmaps
    return _FONT_CACHE["charmaps"]


def _label_fonts(labels: list[str]) -> tuple[list[str], list[str]]:
    """Font families that draw ``labels`` (the default first, then installed fallbacks that have the glyphs),
    and the labels with the characters no installed font has replaced by ``□``; one warning names those."""
    from matplotlib import font_manager, rcParams
    from matplotlib.ft2font import FT2Font

    default_path = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    default_name = font_manager.FontProperties(fname=default_path).get_name()
    key = f"default:{default_path}"
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = frozenset(FT2Font(default_path).get_charmap())
    covered = _FONT_CACHE[key]
    wanted = {ord(c) for label in labels for c in label if ord(c) not in covered and not c.isspace()}
    families, missing = [default_name], set()
    if wanted:
        for name, codes in _font_charmaps():
            found = wanted & codes
            if found and name not in families:
                families.append(name)
                wanted -= found
        missing = wanted
    if missing:
        shown = "".join(sorted(chr(code) for code in missing)[:12])
        warnings.warn(
            f"No installed font draws {len(missing)} character(s) of the tokens ({shown!r}); they are drawn as "
            f"{_MISSING_GLYPH}. Install a font that has them (e.g. fonts-noto-cjk for Chinese and Japanese) "
            "and matplotlib finds it (after its font cache is rebuilt).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        labels = ["".join(_MISSING_GLYPH if ord(c) in missing else c for c in label) for label in labels]
    return families, labels


def plot_text_relevance(
    tokens: Sequence[str],
    fused: Mapping[str, ArrayLike],
    per_head: Mapping[str, ArrayLike] | None = None,
    *,
    token_mask: ArrayLike | None = None,
    scale: Literal["row", "shared"] = "row",
    cmap: str = "inferno",
    title: str | None = None,
    annotate: bool | None = None,
    cell_size: float = 0.42,
    line_tokens: int = LINE_TOKENS,
    heads: bool | None = None,
    clip: float | None = CLIP_PERCENTILE,
):
    """Token heat-strips of one text: one block per rule (or method), a row for the fused map and one per head.

    The text counterpart of :func:`plot_rule_grid`: rules x heads, each row a strip with one cell per token,
    the colour its relevance, the token strings under the strips (made readable by :func:`token_labels`,
    drawn with an installed font that has their glyphs). A text longer than ``line_tokens`` is wrapped
    into lines of that many tokens, so the figure's width is bounded; each line shows every block.

    Parameters
    ----------
    tokens : sequence of str
        The token strings (``lrp.tokens(input_ids)[0]``), padding included when ``token_mask`` drops it.
    fused : mapping of str to Tensor or ndarray
        Block label (e.g. ``"rule (iv)"``) -> fused relevance `(num_tokens,)` (or a batch of one, `(1, num_tokens)`).
    per_head : mapping of str to Tensor or ndarray, optional
        Block label (a key of ``fused``) -> per-head relevance `(num_heads, num_tokens)` (or `(1, num_heads,
        num_tokens)`), drawn as rows ``head 0`` .. (the heads axis' own index) under the block's ``fused`` row.
    token_mask : Tensor or ndarray, optional
        `(num_tokens,)`, 1 for real tokens (the ``attention_mask`` row): padding columns are left out.
    scale : {"row", "shared"}, default "row"
        Colour scales: ``"row"``, one per block (rule) with its own colour bar; ``"shared"``, one for the
        figure. Each spans its maps' minimum to maximum, the top clipped as ``clip`` says; a line under
        the blocks states the policy.
    cmap : str
        Matplotlib colour map of the relevance.
    title : str, optional
        Above the figure.
    annotate : bool, optional
        Write each cell's value in it; by default only for the fused rows of texts of at most 24 tokens.
    cell_size : float
        Cell width in inches (rows are about half as high).
    line_tokens : int, default 40
        Tokens per line; a longer text is wrapped.
    heads : bool, optional
        Draw the per-head rows of ``per_head``; by default only when the text fits on one line (a wrapped
        text shows the fused rows, and says so).
    clip : float or None, default 99
        Robust colour scales (see :func:`colour_scale`): one token ([CLS], [SEP]) cannot leave the others
        dark; clipped cells are outlined. ``None``: minimum to maximum.

    Returns
    -------
    matplotlib.figure.Figure
        Axes: one per block, top to bottom (a wrapped text: one per line), then the colour bars.
    """
    from matplotlib.figure import Figure

    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(
            f"Expected tokens as a sequence of token strings (lrp.tokens(input_ids)[0]), got {type(tokens).__name__}."
        )
    if scale not in _TEXT_SCALES:
        raise ValueError(f"scale must be one of {_TEXT_SCALES}, got {scale!r}.")
    if isinstance(line_tokens, bool) or not isinstance(line_tokens, int) or line_tokens < 1:
        raise ValueError(f"line_tokens must be a positive int, got {line_tokens!r}.")
    if not fused:
        raise ValueError("fused is empty; pass at least one label -> fused relevance (num_tokens,).")
    per_head = dict(per_head or {})
    unknown = sorted(set(per_head) - set(fused))
    if unknown:
        raise ValueError(
            f"per_head has blocks that fused lacks: {unknown}; its keys must be keys of fused {list(fused)}."
        )
    num_tokens = len(tokens)
    if num_tokens == 0:
        raise ValueError("tokens is empty; there is nothing to draw.")
    keep = np.ones(num_tokens, dtype=bool)
    if token_mask is not None:
        mask = _as_array(token_mask, "token_mask").reshape(-1)
        if mask.shape[0] != num_tokens:
            raise ValueError(f"token_mask has {mask.shape[0]} entries for {num_tokens} tokens; pass the mask's row.")
        keep = mask != 0
        if not keep.any():
            raise ValueError("token_mask marks every token as padding; there is nothing to draw.")
    labels, label_notes = token_labels([token for token, kept in zip(tokens, keep, strict=True) if kept])
    families, labels = _label_fonts(labels)
    lines = -(-len(labels) // line_tokens)
    draw_heads = heads if heads is not None else lines == 1
    blocks: dict[str, tuple[np.ndarray, list[str]]] = {}
    for label in fused:
        rows = [_text_vector(fused[label], f"fused[{label!r}]", num_tokens)[None]]
        names = ["fused"]
        if label in per_head:
            head_rows = _text_heads(per_head[label], f"per_head[{label!r}]", num_tokens)
            if draw_heads:
                rows.append(head_rows)
                names += [f"head {h}" for h in range(head_rows.shape[0])]
        blocks[label] = (np.concatenate(rows)[:, keep], names)
    if annotate is None:
        annotate = len(labels) <= 24
    scales = {label: colour_scale([values], clip=clip) for label, (values, _) in blocks.items()}
    if scale == "shared":
        shared = colour_scale([values for values, _ in blocks.values()], clip=clip)
        scales = dict.fromkeys(blocks, shared)
    notes = [_scale_note(scale, len(blocks), "rule", any(s.clipped for s in scales.values()))]
    if per_head and not draw_heads:
        notes.append(f"per-head rows left out: the text is wrapped into {lines} lines (heads=True draws them)")
    notes += label_notes
    total_rows = sum(values.shape[0] for values, _ in blocks.values())
    label_inches = 0.08 * min(max(len(label) for label in labels), 16) + 0.3
    shown = min(len(labels), line_tokens)
    width = 1.1 + cell_size * shown + _COLORBAR_INCHES * (1 if scale == "shared" or lines == 1 else len(blocks))
    row_height = 0.55 * cell_size  # strips: flatter than wide, so rules x heads stays a page tall
    title_inches = 0.35 * (title.count("\n") + 1) if title else 0.0
    note_inches = _NOTE_INCHES * 0.6 * (1 + len(notes))
    if lines == 1:
        height = row_height * total_rows + 0.3 * len(blocks) + label_inches + note_inches + title_inches
    else:
        height = lines * (row_height * total_rows + label_inches + 0.25) + note_inches + title_inches
    figure = Figure(figsize=(max(width, 4.0), height), layout="constrained")
    label_style = {"fontsize": 8, "rotation": 90, "fontfamily": families}
    if lines == 1:
        _text_blocks_one_line(figure, blocks, scales, labels, label_style, cmap, annotate, scale)
    else:
        _text_blocks_wrapped(figure, blocks, scales, labels, label_style, cmap, line_tokens, scale)
    figure.supxlabel("\n".join(notes), fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _outline_text_cells(axis, outside: np.ndarray, row_offset: float = 0.0) -> None:
    """Outline clipped cells of a heat-strip (rows x tokens, cell (r, c) centred on (c, r + row_offset))."""
    from matplotlib.patches import Rectangle

    for row, col in zip(*np.nonzero(outside), strict=True):
        axis.add_patch(
            Rectangle((col - 0.5, row + row_offset - 0.5), 1, 1, fill=False, edgecolor=_CLIPPED_COLOUR, linewidth=1)
        )


def _text_blocks_one_line(figure, blocks, scales, labels, label_style, cmap, annotate, scale) -> None:
    """One axes per block (its rows x the tokens), token labels under the last, a colour bar per block."""
    axes = figure.subplots(
        len(blocks), 1, squeeze=False, gridspec_kw={"height_ratios": [v.shape[0] for v, _ in blocks.values()]}
    )[:, 0]
    drawn = None
    for index, (axis, (label, (values, names))) in enumerate(zip(axes, blocks.items(), strict=True)):
        limits = scales[label]
        drawn = axis.imshow(
            values, cmap=cmap, vmin=limits.low, vmax=limits.high, aspect="auto", interpolation="nearest"
        )
        if limits.clipped:
            _outline_text_cells(axis, limits.outside(values))
        axis.set_yticks(range(len(names)), labels=names, fontsize=7)
        if len(names) > 1:  # set the fused row apart from the heads
            axis.axhline(0.5, color="white", linewidth=2)
        axis.set_title(label, fontsize=9, loc="left")
        last = index == len(blocks) - 1
        axis.set_xticks(range(len(labels)), labels=labels if last else [], **label_style)
        if annotate:
            middle = (limits.low + limits.high) / 2
            for column, value in enumerate(values[0]):
                axis.text(
                    column,
                    0,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if value > middle else "white",
                )
        if scale == "row":
            _colorbar(figure, drawn, axis, limits.extend)
    if scale == "shared":
        _colorbar(figure, drawn, list(axes), next(iter(scales.values())).extend)


def _text_blocks_wrapped(figure, blocks, scales, labels, label_style, cmap, line_tokens, scale) -> None:
    """One axes per line of ``line_tokens`` tokens, every block's rows stacked in it (each on its own scale),
    a colour bar per block (labelled with its name) beside all the lines."""
    lines = -(-len(labels) // line_tokens)
    axes = figure.subplots(lines, 1, squeeze=False)[:, 0]
    first_drawn: dict[str, Any] = {}
    for line, axis in enumerate(axes):
        start, stop = line * line_tokens, min((line + 1) * line_tokens, len(labels))
        offset, ticks, names_all = 0, [], []
        for label, (values, names) in blocks.items():
            limits = scales[label]
            part = values[:, start:stop]
            rows = part.shape[0]
            drawn = axis.imshow(
                part,
                cmap=cmap,
                vmin=limits.low,
                vmax=limits.high,
                aspect="auto",
                interpolation="nearest",
                extent=(-0.5, stop - start - 0.5, offset + rows - 0.5, offset - 0.5),
            )
            first_drawn.setdefault(label, drawn)
            if limits.clipped:
                _outline_text_cells(axis, limits.outside(part), offset)
            ticks += [offset + r for r in range(rows)]
            names_all += [label if r == 0 else names[r] for r in range(rows)]
            offset += rows
            if offset < sum(v.shape[0] for v, _ in blocks.values()):
                axis.axhline(offset - 0.5, color="white", linewidth=1.5)
        axis.set_xlim(-0.5, line_tokens - 0.5)
        axis.set_ylim(offset - 0.5, -0.5)
        axis.set_yticks(ticks, labels=names_all, fontsize=7)
        axis.set_xticks(range(stop - start), labels=labels[start:stop], **label_style)
        axis.set_title(f"tokens {start}-{stop - 1}", fontsize=8, loc="left")
        for side in ("top", "right"):
            axis.spines[side].set_visible(False)
    if scale == "shared":
        _colorbar(figure, next(iter(first_drawn.values())), list(axes), next(iter(scales.values())).extend)
        return
    # Constrained layout puts each new bar outside the previous ones: reversed, the first block's bar is nearest.
    for label, drawn in reversed(first_drawn.items()):
        bar = figure.colorbar(drawn, ax=list(axes), fraction=0.03, pad=0.01, aspect=40, extend=scales[label].extend)
        bar.ax.tick_params(labelsize=6)
        bar.set_label(label, fontsize=7)
