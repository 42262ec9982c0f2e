"""``tokenlrp app``: explore token relevance by looking, in a local web app.

    tokenlrp app [--model bundled] [--host 127.0.0.1] [--port 7860]

Two layers, so that the views can be tested and timed without a browser:

* :class:`Explorer` holds the model and, per image, one :class:`Capture` of its forward pass: every
  attention layer's projections and a classifier's logits. Every view (the paper's figure, the overlay,
  the relevance after each layer, the top patches, the mass on a known object) is computed from the
  capture, so changing the rule, the head mode, the head, the start token, the layer or the opacity
  never runs the model again. Captures and relevance are cached (least recently used first out).
* :func:`build_app` lays the views out with Gradio (the optional extra ``captum-tokenlrp[app]``) and
  :func:`launch` serves them on 127.0.0.1, with no network access (no analytics, no web fonts).

GAE (Chefer et al. 2021), offered beside the rules for a class or a text prompt as target, needs a
backward pass per target: it runs once per (image, target) and is cached like the rest.
"""

# The names of `__all__`, and (`as` themselves) the public names the module had before it became a package.
from ._explorer import GAE as GAE
from ._explorer import HEAD_FUSIONS as HEAD_FUSIONS
from ._explorer import NATIVE_MAX_SIDE as NATIVE_MAX_SIDE
from ._explorer import SIZE_MODES as SIZE_MODES
from ._explorer import Capture, Explorer
from ._explorer import describe_start_token as describe_start_token
from ._explorer import resolve_start_token as resolve_start_token
from ._figure import FIGURE_GAP as FIGURE_GAP
from ._figure import FIGURE_LEFT as FIGURE_LEFT
from ._figure import FIGURE_OPACITY as FIGURE_OPACITY
from ._figure import FIGURE_TOP as FIGURE_TOP
from ._figure import figure_cell_box as figure_cell_box
from ._figure import figure_panel_origin as figure_panel_origin
from ._inputs import MAX_PIXELS as MAX_PIXELS
from ._inputs import AppInputError, UnreadableUpload
from ._inputs import image_key as image_key
from ._overlay import CLIPPED_RGB as CLIPPED_RGB
from ._overlay import MARKER_RGB as MARKER_RGB
from ._overlay import overlay_image
from ._page import build_app, launch
from ._samples import bundled_samples
from ._settings import ViewSettings
from ._views import Views, render
from ._views import diagnostics_markdown as diagnostics_markdown

__all__ = [
    "AppInputError",
    "Capture",
    "Explorer",
    "UnreadableUpload",
    "ViewSettings",
    "Views",
    "build_app",
    "bundled_samples",
    "launch",
    "overlay_image",
    "render",
]
