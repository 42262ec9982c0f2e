"""One colour scale for a group of maps, robust to a few outlying cells (:func:`colour_scale`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ._maps import ArrayLike, _as_array

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
