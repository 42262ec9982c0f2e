"""Between the user's image files and the model's ``pixel_values``, and back.

Three steps, each usable alone:

- :func:`load_image` reads a file (or takes an open PIL image) and returns the 8-bit RGB image an
  image processor expects, with EXIF orientation applied, alpha composited over white and 16-bit or
  float data scaled rather than clipped (``Image.open(path).convert("RGB")`` turns a 16-bit PNG white);
- :func:`processor_geometry` predicts where a HuggingFace image processor puts the original image:
  the size it resizes to and the box it crops (or pads), as an :class:`ImageGeometry`;
- :func:`map_to_original` takes a map on the model's input grid (a patch grid or a pixel map) back
  onto the original image, keeping its total relevance.

:func:`explain_image` does all three around one attribution call and returns an :class:`ImageExplanation`.

Geometry follows the HuggingFace processors' own arithmetic (``transformers.image_transforms``
``get_resize_output_image_size`` and ``center_crop``): ``size`` as ``{"height", "width"}`` (warp),
``{"shortest_edge"}`` (keep the aspect ratio, ``int()`` of the long side), ``{"shortest_edge",
"longest_edge"}``, ``{"max_height", "max_width"}``, or the legacy int / ``(height, width)`` forms; then
an optional center crop ``crop_size`` and ConvNeXT's ``crop_pct``. ViT, DeiT, BEiT, CLIP, BiT (DINOv2)
and ConvNeXT processors are checked against the processors themselves in the tests.
"""

from ._explain import ImageExplanation, explain_image
from ._geometry import ImageGeometry, processor_geometry
from ._loading import SUPPORTED_MODES, load_image
from ._mapping import map_to_original

__all__ = [
    "SUPPORTED_MODES",
    "ImageExplanation",
    "ImageGeometry",
    "explain_image",
    "load_image",
    "map_to_original",
    "processor_geometry",
]
