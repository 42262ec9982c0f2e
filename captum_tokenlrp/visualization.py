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
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._adapters import TokenLayout
from ._core.geometry import patch_grid

__all__ = [
    "image_for_display",
    "patch_grid",
    "plot_method_comparison",
    "plot_overlay",
    "plot_rule_grid",
    "plot_text_relevance",
    "to_captum_image",
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


def _limits(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([m.ravel() for m in maps])
    return float(np.nanmin(values)), float(np.nanmax(values))


def _plain(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def _draw_image(axis, background: np.ndarray) -> None:
    gray = background.shape[-1] == 1
    axis.imshow(background[..., 0] if gray else background, cmap="gray" if gray else None, vmin=0, vmax=1)
    _plain(axis)


def _draw(
    axis,
    background: np.ndarray,
    relevance: tuple[np.ndarray, bool],
    interpolation: str,
    cmap: str,
    alpha: float,
    limits: tuple[float, float],
):
    """The image, then the relevance over it (a pixel map as it is, a patch grid upsampled)."""
    values, is_pixels = relevance
    _draw_image(axis, background)
    overlay = values if is_pixels else _upsample(values, background.shape[:2], interpolation)
    drawn = axis.imshow(overlay, cmap=cmap, alpha=alpha, vmin=limits[0], vmax=limits[1])
    _plain(axis)
    return drawn


def _colorbar(figure, drawn, axes) -> None:
    bar = figure.colorbar(drawn, ax=axes, fraction=0.05, pad=0.03, aspect=15)
    bar.ax.tick_params(labelsize=6)


def _scale_note(scale: str, rows: int, row_kind: str) -> str:
    if scale == "panel":
        return "colour scale: one per panel"
    if scale == "row" and rows > 1:
        return f"colour scale: one per row ({row_kind})"
    return "colour scale: one for all panels"


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
        Draw a colour bar; the colour scale spans the map's minimum to maximum.
    size : float
        Panel height in inches (the width adds 25 % with the colour bar).
    mean, std, processor : optional
        The image's normalisation, undone for display; see :func:`image_for_display`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    _check_options(interpolation)
    background = image_for_display(image, mean=mean, std=std, processor=processor)
    relevance_map = _relevance_map(relevance, background.shape, layout, "relevance")
    figure = Figure(figsize=(size * (1.25 if colorbar else 1.0), size), layout="constrained")
    axis = figure.subplots()
    drawn = _draw(axis, background, relevance_map, interpolation, cmap, alpha, _limits([relevance_map[0]]))
    if colorbar:
        _colorbar(figure, drawn, axis)
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
    bars = len(maps) if scale == "panel" else 1
    height = panel_size + _NOTE_INCHES + (0.35 if title else 0.0)
    figure = Figure(figsize=(panel_size * (len(maps) + 1) + _COLORBAR_INCHES * bars, height), layout="constrained")
    axes = figure.subplots(1, len(maps) + 1, squeeze=False)[0]
    _draw_image(axes[0], background)
    axes[0].set_title("image", fontsize=9)
    shared = _limits([values for values, _ in relevance.values()])
    drawn = None
    for axis, (name, values) in zip(axes[1:], relevance.items(), strict=True):
        limits = _limits([values[0]]) if scale == "panel" else shared
        drawn = _draw(axis, background, values, interpolation, cmap, alpha, limits)
        axis.set_title(name, fontsize=9)
        if scale == "panel":
            _colorbar(figure, drawn, axis)
    if scale != "panel":
        _colorbar(figure, drawn, list(axes[1:]))
    figure.supxlabel(_scale_note(scale, 1, "method"), fontsize=7)
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
        heads leave their last panels empty.
    layout : TokenLayout, optional
        ``lrp.token_layout(pixel_values)``; required for token relevance.
    scale : {"row", "panel", "shared"}, default "row"
        Colour scales: ``"row"``, one per row (rule) with one colour bar at the row's end; ``"panel"``,
        one per panel with a colour bar each; ``"shared"``, one for the whole figure and one colour bar.
        Each scale spans the minimum to maximum of its maps; a line under the panels states the policy.
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
        Panel side in inches; each column of colour bars adds 0.6 inch to the width.
    mean, std, processor : optional
        The image's normalisation, undone for display; see :func:`image_for_display`.

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
    title_text = _title(title, prediction)
    bar_columns = columns - 1 if scale == "panel" else 1
    width = panel_size * columns + _COLORBAR_INCHES * bar_columns
    height = panel_size * rows + _NOTE_INCHES + (0.25 * (title_text.count("\n") + 1) + 0.1 if title_text else 0.0)
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    shared = _limits([values for row in panels.values() for values, _ in row])
    for r, (label, row) in enumerate(panels.items()):
        _draw_image(axes[r][0], background)
        axes[r][0].set_ylabel(label, fontsize=9)
        row_limits = _limits([values for values, _ in row])
        drawn = None
        for c in range(1, columns):
            axis = axes[r][c]
            if c > len(row):
                axis.set_axis_off()
                continue
            if scale == "panel":
                limits = _limits([row[c - 1][0]])
            else:
                limits = row_limits if scale == "row" else shared
            drawn = _draw(axis, background, row[c - 1], interpolation, cmap, alpha, limits)
            if scale == "panel":
                _colorbar(figure, drawn, axis)
        if scale == "row":
            _colorbar(figure, drawn, list(axes[r][1:]))
        if r == 0:
            for c in range(columns):
                axes[0][c].set_title("image" if c == 0 else "fused" if c == 1 else f"head {c - 1}", fontsize=9)
    if scale == "shared":
        _colorbar(figure, drawn, [axis for row_axes in axes for axis in row_axes[1:]])
    figure.supxlabel(_scale_note(scale, rows, "rule"), fontsize=7)
    if title_text:
        figure.suptitle(title_text, fontsize=10)
    return figure


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
):
    """Token heat-strips of one text: one block per rule (or method), a row for the fused map and one per head.

    The text counterpart of :func:`plot_rule_grid`: rules x heads, each row a strip with one cell per token,
    the colour its relevance, the token strings under the last block.

    Parameters
    ----------
    tokens : sequence of str
        The token strings (``lrp.tokens(input_ids)[0]``), padding included when ``token_mask`` drops it.
    fused : mapping of str to Tensor or ndarray
        Block label (e.g. ``"rule (iv)"``) -> fused relevance `(num_tokens,)` (or a batch of one, `(1, num_tokens)`).
    per_head : mapping of str to Tensor or ndarray, optional
        Block label (a key of ``fused``) -> per-head relevance `(num_heads, num_tokens)` (or `(1, num_heads,
        num_tokens)`), drawn as rows ``head 0`` .. under the block's ``fused`` row.
    token_mask : Tensor or ndarray, optional
        `(num_tokens,)`, 1 for real tokens (the ``attention_mask`` row): padding columns are left out.
    scale : {"row", "shared"}, default "row"
        Colour scales: ``"row"``, one per block (rule) with its own colour bar; ``"shared"``, one for the
        figure. Each spans its maps' minimum to maximum; a line under the blocks states the policy.
    cmap : str
        Matplotlib colour map of the relevance.
    title : str, optional
        Above the figure.
    annotate : bool, optional
        Write each cell's value in it; by default only for the fused rows of texts of at most 24 tokens.
    cell_size : float
        Cell width in inches (rows are about half as high); the figure grows with the tokens and the rows.

    Returns
    -------
    matplotlib.figure.Figure
        Axes: one per block, top to bottom, then the colour bars.
    """
    from matplotlib.figure import Figure

    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not all(isinstance(t, str) for t in tokens):
        raise TypeError(
            f"Expected tokens as a sequence of token strings (lrp.tokens(input_ids)[0]), got {type(tokens).__name__}."
        )
    if scale not in _TEXT_SCALES:
        raise ValueError(f"scale must be one of {_TEXT_SCALES}, got {scale!r}.")
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
    labels = [token for token, kept in zip(tokens, keep, strict=True) if kept]
    blocks: dict[str, tuple[np.ndarray, list[str]]] = {}
    for label in fused:
        rows = [_text_vector(fused[label], f"fused[{label!r}]", num_tokens)[None]]
        names = ["fused"]
        if label in per_head:
            heads = _text_heads(per_head[label], f"per_head[{label!r}]", num_tokens)
            rows.append(heads)
            names += [f"head {h}" for h in range(heads.shape[0])]
        blocks[label] = (np.concatenate(rows)[:, keep], names)
    if annotate is None:
        annotate = len(labels) <= 24
    total_rows = sum(values.shape[0] for values, _ in blocks.values())
    label_inches = 0.08 * max(len(token) for token in labels) + 0.3
    width = 1.1 + cell_size * len(labels) + _COLORBAR_INCHES
    row_height = 0.55 * cell_size  # strips: flatter than wide, so rules x heads stays a page tall
    height = row_height * total_rows + 0.3 * len(blocks) + label_inches + _NOTE_INCHES + (0.35 if title else 0.0)
    figure = Figure(figsize=(max(width, 4.0), height), layout="constrained")
    axes = figure.subplots(
        len(blocks), 1, squeeze=False, gridspec_kw={"height_ratios": [v.shape[0] for v, _ in blocks.values()]}
    )[:, 0]
    shared = _limits([values for values, _ in blocks.values()])
    drawn = None
    for index, (axis, (label, (values, names))) in enumerate(zip(axes, blocks.items(), strict=True)):
        low, high = _limits([values]) if scale == "row" else shared
        drawn = axis.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto", interpolation="nearest")
        axis.set_yticks(range(len(names)), labels=names, fontsize=7)
        if len(names) > 1:  # set the fused row apart from the heads
            axis.axhline(0.5, color="white", linewidth=2)
        axis.set_title(label, fontsize=9, loc="left")
        last = index == len(blocks) - 1
        axis.set_xticks(range(len(labels)), labels=labels if last else [], fontsize=8, rotation=90)
        if annotate:
            middle = (low + high) / 2
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
            _colorbar(figure, drawn, axis)
    if scale == "shared":
        _colorbar(figure, drawn, list(axes))
    figure.supxlabel(_scale_note(scale, len(blocks), "rule"), fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
