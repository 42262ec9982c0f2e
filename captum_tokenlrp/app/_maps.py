"""The maps the views draw, and their colour scales in percent of the map's total per patch."""

from __future__ import annotations

from torch import Tensor

from ..visualization import ColourScale, colour_scale
from ._explorer import Capture, Explorer
from ._settings import ViewSettings


def robust_scale(capture: Capture, relevance: Tensor) -> ColourScale:
    """The colour scale of one map's patches in percent of its total (the unit of the bars and "Top patches"),
    robust to a few outlying patches (:func:`~captum_tokenlrp.visualization.colour_scale`).

    Taken on the patch tokens, one value per patch, not on the map's pixels: on a grid of a few dozen
    patches one patch covers more than 1 % of the pixels, so the pixels' percentile would be the outlier.
    """
    total = float(relevance.sum())
    patches = relevance[capture.layout.patch_slice].double().numpy()
    return colour_scale([100.0 * patches / total if total else patches])


def robust_top(capture: Capture, relevance: Tensor, percent_per_value: float) -> float | None:
    """The top of :func:`robust_scale` in the values of :meth:`Explorer.original_map` (relevance per
    original pixel), for :func:`overlay_image`'s ``high``; None where it clips nothing (the map's own maximum
    is then the top: decided on the patches, not on the pixels' rounding) or the map is empty."""
    scale = robust_scale(capture, relevance)
    if not percent_per_value or not scale.clipped:
        return None
    return scale.high / percent_per_value


def percent_per_pixel_value(capture: Capture, total: float) -> float:
    """The factor from relevance per original pixel (:meth:`Explorer.original_map`) to the percent of ``total``
    that a patch of that density holds.

    The map on the original image spreads each patch's relevance over the original pixels it covers, by area,
    so a patch covers ``patch_h * patch_w * (H_orig / H_resized) * (W_orig / W_resized)`` of them. 0 for an
    empty map (``total`` 0).
    """
    if not total:
        return 0.0
    geometry, (patch_h, patch_w) = capture.geometry, capture.layout.patch_size
    (height, width), (resized_h, resized_w) = geometry.original, geometry.resized
    pixels = patch_h * patch_w * (height / resized_h) * (width / resized_w)
    return 100.0 * pixels / total


def fused_and_heads(explorer: Explorer, capture: Capture, rule: str, settings: ViewSettings) -> tuple[Tensor, Tensor]:
    """A rule's fused map `(num_tokens,)` (a per-head fused mode averaged) and per-head maps `(heads, num_tokens)`."""
    fused = explorer.relevance_by_layer(capture, rule, settings.head_fusion, settings.start_token)[..., 0, :]
    heads = explorer.relevance_by_layer(capture, rule, None, settings.start_token)[:, 0]
    return (fused.mean(dim=0) if fused.dim() == 2 else fused), heads
