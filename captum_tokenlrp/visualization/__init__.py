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

from .._core.geometry import patch_grid
from ._figures import plot_method_comparison, plot_overlay, plot_rule_grid
from ._images import image_for_display, to_captum_image
from ._maps import ArrayLike as ArrayLike  # the type aliases of the signatures, as before the split
from ._maps import Interpolation as Interpolation
from ._maps import ScalePolicy as ScalePolicy
from ._scale import CLIP_HEADROOM, CLIP_PERCENTILE, ColourScale, colour_scale
from ._text import LINE_TOKENS, plot_text_relevance
from ._thumbnails import display_geometry, photo_thumbnail
from ._tokens import token_labels

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
