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

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ._adapters import TokenLayout
from ._utils.geometry import patch_grid as _patch_grid
from ._utils.geometry import patch_relevance_to_pixels
from ._utils.stack import user_stacklevel
from ._utils.validation import TextPrompts, one_prompt

__all__ = [
    "SUPPORTED_MODES",
    "ImageExplanation",
    "ImageGeometry",
    "explain_image",
    "load_image",
    "map_to_original",
    "processor_geometry",
]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_PILLOW_CONVERTED_MODES = ("1", "L", "P", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")

#: PIL modes :func:`load_image` reads.
SUPPORTED_MODES: tuple[str, ...] = ("RGB", *_PILLOW_CONVERTED_MODES, *_ALPHA_MODES, *_SIXTEEN_BIT_MODES, "I", "F")


# --------------------------------------------------------------------------------------------- loading
def load_image(source: str | os.PathLike[str] | Image.Image) -> Image.Image:
    """Read an image as 8-bit RGB, the way the model should see it.

    Parameters
    ----------
    source : str, os.PathLike or PIL.Image.Image
        A path to an image file, or an image already opened with PIL (left unchanged: its frame
        position is restored and a new image is returned).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, 8 bits per channel, ``(width, height)`` as displayed (after EXIF orientation).

    Notes
    -----
    Every step is explicit, since ``Image.open(path).convert("RGB")`` gets several of them wrong:

    - **EXIF orientation** is applied (``PIL.ImageOps.exif_transpose``), so the map sits on the image
      as a viewer shows it.
    - **Multi-frame files** (GIF, multi-page TIFF, animated WebP/PNG): the first frame (``seek(0)``).
    - **16-bit integer** modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``: ``round(v / 65535 * 255)``,
      grey. (``convert("RGB")`` clips at 255, so every value above 255 becomes white.)
    - **Mode ``I``** (32-bit signed; Pillow also opens some 16-bit PNGs and TIFFs so): if every value
      lies in ``[0, 65535]`` it is read as 16-bit, as above (8-bit data stored as ``I`` comes out dark:
      ``image.convert("L")`` first if that is what you hold). Otherwise (negative values or above
      65535) the values are stretched linearly, minimum -> 0 and maximum -> 255, with a ``UserWarning``.
    - **Mode ``F``** (32-bit float): NaN or infinite values raise ``ValueError``. Values in ``[0, 1]``
      are intensities (``round(v * 255)``); otherwise values in ``[0, 255]`` are 8-bit levels
      (``round(v)``); anything else is stretched minimum -> 0, maximum -> 255 with a ``UserWarning``.
      A constant image outside these ranges becomes black.
    - **16-bit RGB / RGBA** PNG and TIFF: Pillow has no 16-bit colour mode and decodes them to 8 bits
      itself, keeping the high byte (``v // 256``, at most one level below ``round(v / 65535 * 255)``);
      that is what arrives here.
    - **Alpha** (``RGBA``, ``LA``, ``PA``, the premultiplied ``RGBa`` and ``La``, and ``P``, ``L``, ``RGB``
      or 16-bit grey with a transparent colour in ``info["transparency"]``) is composited over
      **white**: ``round((c * a + 255 * (255 - a)) / 255)``. ``convert("RGB")`` drops alpha and shows
      whatever colour the file stores under transparent pixels (often black, or leftover content).
    - ``CMYK``, ``YCbCr``, ``LAB`` (Pillow's 8-bit encoding, as TIFF CIELAB: ``L`` 0..255 for 0..100,
      ``a`` and ``b`` signed bytes), ``HSV``, ``RGBX``, ``P`` without transparency: Pillow's
      ``convert("RGB")``; ``1`` and ``L``: grey RGB.

    Raises
    ------
    TypeError
        If ``source`` is neither a path nor a PIL image.
    ValueError
        If the file is missing, unreadable or not an image (the message names the path and the
        reason), if the mode is not in :data:`SUPPORTED_MODES`, or if float data holds NaN or inf.
    """
    if isinstance(source, Image.Image):
        position = source.tell()
        try:
            if position != 0:
                source.seek(0)
            upright = ImageOps.exif_transpose(source)
        except (OSError, EOFError) as error:
            raise ValueError(f"Cannot read the image: {error}") from error
        finally:
            if position != 0:
                source.seek(position)
        return _to_rgb8(upright, "the image")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with Image.open(path) as opened:
                opened.seek(0)
                opened.load()
                upright = ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, OSError, EOFError) as error:
            raise ValueError(f"Cannot read an image from {path!r}: {error}") from error
        return _to_rgb8(upright, repr(path))
    raise TypeError(
        f"Expected a path (str or os.PathLike) or a PIL.Image.Image, got {type(source).__name__}. "
        "For an array, build the image first: PIL.Image.fromarray(array)."
    )


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half up and clip to 0..255."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def _stretch(values: np.ndarray, name: str, mode: str, ranges: str) -> np.ndarray:
    """Min-max stretch to 0..255 (with a warning saying so); a constant image becomes 0."""
    low, high = float(values.min()), float(values.max())
    warnings.warn(
        f"{name} (mode {mode}) has values in [{low:g}, {high:g}], outside the ranges read as intensities "
        f"({ranges}); stretched linearly, {low:g} -> 0 and {high:g} -> 255. Convert the image yourself "
        "for another mapping.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _round_to_uint8((values - low) / (high - low) * 255.0)


def _grey_levels(image: Image.Image, name: str) -> np.ndarray:
    """8-bit grey levels `(H, W)` of a 16-bit, 32-bit integer or float image."""
    values = np.asarray(image).astype(np.float64)
    if image.mode in _SIXTEEN_BIT_MODES:
        return _round_to_uint8(values / 65535.0 * 255.0)
    if image.mode == "I":
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _round_to_uint8(values / 65535.0 * 255.0)
        return _stretch(values, name, "I", "[0, 65535] for mode I")
    if not np.isfinite(values).all():
        raise ValueError(
            f"{name} (mode F) holds NaN or infinite values; load_image cannot map them to intensities. "
            "Replace them first (e.g. numpy.nan_to_num) and pass the image."
        )
    if values.size and values.min() >= 0 and values.max() <= 1:
        return _round_to_uint8(values * 255.0)
    if values.size and values.min() >= 0 and values.max() <= 255:
        return _round_to_uint8(values)
    return _stretch(values, name, "F", "[0, 1] or [0, 255] for mode F")


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """Composite `(H, W, 3)` uint8 colour with `(H, W)` uint8 alpha over white."""
    alpha = alpha.astype(np.float64)[..., None]
    return Image.fromarray(_round_to_uint8((rgb * alpha + 255.0 * (255.0 - alpha)) / 255.0), "RGB")


def _to_rgb8(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
        grey = _grey_levels(image, name)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        if mode != "F" and isinstance(transparency, int):
            return _over_white(rgb, np.where(np.asarray(image) == transparency, 0, 255))
        return Image.fromarray(rgb, "RGB")
    if mode in _ALPHA_MODES or (mode in ("1", "L", "P", "RGB") and transparency is not None):
        if mode == "La":
            image = image.convert("LA")  # Pillow converts La (premultiplied) only to LA
        rgba = np.asarray(image.convert("RGBA"))
        return _over_white(rgba[..., :3], rgba[..., 3])
    if mode == "RGB":
        return image.copy()
    if mode in _PILLOW_CONVERTED_MODES:
        return image.convert("RGB")
    raise ValueError(
        f"{name} has PIL mode {mode!r}, which load_image does not read. Supported modes: "
        f"{', '.join(SUPPORTED_MODES)}. Convert it to one of them first (image.convert(...))."
    )


# -------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ImageGeometry:
    """Where an image processor puts the original image in the model input.

    The processor resizes the original (``original`` -> ``resized``), then cuts the model input out of
    the resized image: input pixel ``(y, x)`` is resized pixel ``(top + y, left + x)``. A box that
    reaches outside the resized image means the processor padded there (with zeros).

    Attributes
    ----------
    original : tuple of int
        `(height, width)` of the image as loaded.
    resized : tuple of int
        `(height, width)` after the resize (``original`` when the processor does not resize).
    crop : tuple of int
        `(top, left, height, width)` of the model input in resized coordinates.
    input : tuple of int
        `(height, width)` of ``pixel_values``; always ``crop``'s height and width.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]
    input: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("original", "resized", "input"):
            value = getattr(self, name)
            if len(value) != 2 or any(int(v) != v or v <= 0 for v in value):
                raise ValueError(f"ImageGeometry.{name} must be (height, width), two positive ints, got {value!r}.")
        if len(self.crop) != 4 or self.crop[2] <= 0 or self.crop[3] <= 0:
            raise ValueError(f"ImageGeometry.crop must be (top, left, height, width), got {self.crop!r}.")
        if tuple(self.crop[2:]) != tuple(self.input):
            raise ValueError(f"ImageGeometry.crop size {self.crop[2:]} must equal the input size {self.input}.")

    @property
    def visible(self) -> tuple[int, int, int, int]:
        """`(top, left, bottom, right)` of the resized image that reaches the model (resized coordinates)."""
        top, left, height, width = self.crop
        return max(top, 0), max(left, 0), min(top + height, self.resized[0]), min(left + width, self.resized[1])

    def covered_mask(self, device: torch.device | str | None = None) -> Tensor:
        """Original pixels the model input shows, at least in part: bool `(H_orig, W_orig)`.

        A pixel counts when any part of its area falls inside the crop; :func:`map_to_original`
        gives exactly 0 everywhere else.
        """
        top, left, bottom, right = self.visible
        rows = _area_matrix(self.original[0], self.resized[0], device)[:, top:bottom].sum(dim=1) > 0
        cols = _area_matrix(self.original[1], self.resized[1], device)[:, left:right].sum(dim=1) > 0
        return rows[:, None] & cols[None, :]


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"Expected {what} as a positive int, got {value!r}.")
    return int(value)


def _size_dict(size: object, default_to_square: bool, what: str) -> dict[str, int]:
    """A processor's ``size``/``crop_size`` in any of its forms, as a plain dict."""
    if isinstance(size, Mapping):
        return {key: value for key, value in size.items() if value is not None}
    if hasattr(size, "__dataclass_fields__"):  # transformers' SizeDict
        return {key: value for key, value in dict(size).items() if value is not None}
    if isinstance(size, (tuple, list)) and len(size) == 1:
        size = size[0]
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return {"height": int(size), "width": int(size)} if default_to_square else {"shortest_edge": int(size)}
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return {"height": int(size[0]), "width": int(size[1])}
    raise ValueError(
        f"Cannot read the processor's {what}={size!r}: expected a dict with 'height' and 'width', "
        "'shortest_edge' (and 'longest_edge'), or 'max_height' and 'max_width'; an int; or (height, width)."
    )


def _shortest_edge_size(original: tuple[int, int], shortest_edge: int) -> tuple[int, int]:
    """``transformers.image_transforms.get_resize_output_image_size(..., default_to_square=False)``."""
    height, width = original
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _shortest_longest_size(original: tuple[int, int], size: int, max_size: int) -> tuple[int, int]:
    """``transformers.image_transforms.get_size_with_aspect_ratio``."""
    height, width = original
    raw_size = None
    low, high = float(min(original)), float(max(original))
    if high / low * size > max_size:
        raw_size = max_size * low / high
        size = round(raw_size)
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        return (int(raw_size * height / width) if raw_size is not None else int(size * height / width)), size
    return size, (int(raw_size * width / height) if raw_size is not None else int(size * width / height))


def _resize_size(original: tuple[int, int], size: dict[str, int]) -> tuple[int, int]:
    """The size ``PilBackend.resize`` (and the torchvision backend) gives, in its order of precedence."""
    if size.get("shortest_edge") and size.get("longest_edge"):
        return _shortest_longest_size(original, size["shortest_edge"], size["longest_edge"])
    if size.get("shortest_edge"):
        return _shortest_edge_size(original, size["shortest_edge"])
    if size.get("max_height") and size.get("max_width"):
        scale = min(size["max_height"] / original[0], size["max_width"] / original[1])
        return int(original[0] * scale), int(original[1] * scale)
    if size.get("height") and size.get("width"):
        return size["height"], size["width"]
    raise ValueError(
        f"Cannot predict the resize for size={size}: expected 'height' and 'width', 'shortest_edge' "
        "(optionally with 'longest_edge'), or 'max_height' and 'max_width'."
    )


def _center_crop(box: list[int], crop: tuple[int, int], torchvision: bool) -> None:
    """Center-crop the box ``[top, left, height, width]`` to ``crop`` in place (padding if larger)."""
    for axis, target in enumerate(crop):
        extent = box[2 + axis]
        if torchvision and target > extent:  # pads (target - extent) // 2 before, the rest after
            offset = -((target - extent) // 2)
        else:  # numpy center_crop: floor((extent - target) / 2), also when it pads
            offset = (extent - target) // 2
        box[axis] += offset
        box[2 + axis] = target


_KNOWN_FAMILIES = ("ViT", "DeiT", "Beit", "CLIP", "Bit", "ConvNext")
_GEOMETRY_METHODS = ("resize", "center_crop", "_preprocess", "preprocess")


def _check_known(processor: object) -> None:
    """Refuse processors whose own code resizes or crops in a way this module does not model."""
    for cls in type(processor).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if cls is object or (module.startswith("transformers.") and not module.startswith("transformers.models.")):
            return
        overridden = [name for name in _GEOMETRY_METHODS if name in vars(cls)]
        family = cls.__name__
        for suffix in ("Pil", "Fast", "ImageProcessor", "FeatureExtractor"):
            family = family.removesuffix(suffix)
        if overridden and family not in _KNOWN_FAMILIES:
            raise ValueError(
                f"{cls.__name__} defines its own {', '.join(overridden)}, so processor_geometry cannot "
                f"predict where it puts the image (it models {', '.join(_KNOWN_FAMILIES)} processors and those "
                "using the standard resize and center crop). Build an ImageGeometry yourself."
            )


def _is_torchvision(processor: object) -> bool:
    """Whether the processor works on torch tensors (5.x ``backend="torchvision"``, 4.x ``...Fast`` classes)."""
    return getattr(processor, "backend", None) == "torchvision" or type(processor).__name__.endswith("Fast")


def _pil_layout_kwargs(processor: object) -> dict[str, str]:
    """``input_data_format="channels_last"`` for the processors that must be told a PIL image is `(H, W, C)`.

    The numpy processors of transformers 4.x (``preprocess`` with an ``input_data_format`` parameter) turn a
    PIL image into an `(H, W, C)` array and then guess the channel axis, taking a first axis of 1 or 3 for
    channels: an image 1 or 3 pixels high fails ("mean must have 1 elements") or is read transposed. Not
    for torchvision processors: 4.x's ``...Fast`` ones read a PIL image as `(C, H, W)` and would permute it
    wrongly; 5.x's backends ignore the argument for PIL images.
    """
    if _is_torchvision(processor):
        return {}
    try:
        parameters = inspect.signature(processor.preprocess).parameters
    except (AttributeError, TypeError, ValueError):
        return {}
    return {"input_data_format": "channels_last"} if "input_data_format" in parameters else {}


def processor_geometry(processor: Any, original_size: tuple[int, int] | Sequence[int] | Image.Image) -> ImageGeometry:
    """Predict the resize and crop a HuggingFace image processor applies to an image.

    Parameters
    ----------
    processor : image processor
        Read through its attributes ``do_resize``, ``size``, ``do_center_crop``, ``crop_size``,
        ``crop_pct`` (ConvNeXT), ``do_pad``/``pad_size`` and ``default_to_square`` (for an int
        ``size``); transformers 4.x and 5.x, PIL and torchvision backends. Arguments passed at call
        time (``processor(images, size=...)``) are not seen: set them on the processor.
    original_size : (int, int) or PIL.Image.Image
        `(height, width)` of the image given to the processor (a PIL image gives its own; note that
        ``PIL.Image.size`` is `(width, height)`).

    Returns
    -------
    ImageGeometry
        ``input`` equals ``processor(images=image)["pixel_values"].shape[-2:]``.

    Raises
    ------
    ValueError
        If the size cannot be read, or the processor's class resizes or crops with its own code
        that this function does not model.

    Notes
    -----
    Center crops use ``floor((extent - crop) / 2)`` as ``transformers.image_transforms.center_crop``
    does; when the crop is larger than the image, the PIL backend pads ``ceil`` of the difference
    before and the torchvision backend ``floor``, and each is followed.
    """
    if isinstance(original_size, Image.Image):
        original = (original_size.height, original_size.width)
    elif isinstance(original_size, (tuple, list, torch.Size)) and len(original_size) == 2:
        original = (_positive_int(original_size[0], "the height"), _positive_int(original_size[1], "the width"))
    else:
        raise TypeError(
            f"Expected original_size as (height, width) or a PIL image, got {original_size!r}. "
            "From a PIL image use (image.height, image.width): image.size is (width, height)."
        )
    _check_known(processor)
    torchvision = _is_torchvision(processor)
    default_to_square = bool(getattr(processor, "default_to_square", True))
    resized = original
    box = [0, 0, *original]
    if getattr(processor, "do_resize", False):
        size = _size_dict(getattr(processor, "size", None), default_to_square, "size")
        crop_pct = getattr(processor, "crop_pct", None)
        if type(processor).__name__.startswith("ConvNext"):
            shortest_edge = size.get("shortest_edge")
            if not shortest_edge:
                raise ValueError(f"ConvNeXT processors need size={{'shortest_edge': ...}}, got {size}.")
            if shortest_edge < 384:  # resize to shortest_edge / crop_pct, then crop a shortest_edge square
                crop_pct = 224 / 256 if crop_pct is None else crop_pct
                resized = _shortest_edge_size(original, int(shortest_edge / crop_pct))
                box = [0, 0, *resized]
                _center_crop(box, (shortest_edge, shortest_edge), torchvision)
            else:  # warped, no crop
                resized = (shortest_edge, shortest_edge)
                box = [0, 0, *resized]
        else:
            resized = _resize_size(original, size)
            box = [0, 0, *resized]
        if min(resized) <= 0:
            raise ValueError(
                f"{type(processor).__name__} resizes a {original[0]}x{original[1]} image to "
                f"{resized[0]}x{resized[1]} pixels, an empty image (the processor fails on it too). "
                "Pad or crop the image to a less extreme aspect ratio first."
            )
    if getattr(processor, "do_center_crop", False):
        crop_size = _size_dict(getattr(processor, "crop_size", None), True, "crop_size")
        if not (crop_size.get("height") and crop_size.get("width")):
            raise ValueError(f"Expected crop_size with 'height' and 'width', got {crop_size}.")
        _center_crop(box, (crop_size["height"], crop_size["width"]), torchvision)
    pad_size = getattr(processor, "pad_size", None)
    if (
        getattr(processor, "do_pad", False)
        and pad_size is not None
        and not type(processor).__name__.startswith("ConvNext")
    ):
        pad = _size_dict(pad_size, True, "pad_size")
        box[2], box[3] = pad["height"], pad["width"]  # zeros added below and right
    return ImageGeometry(original=original, resized=resized, crop=tuple(box), input=(box[2], box[3]))


# ---------------------------------------------------------------------------------------- map back
def _area_matrix(n_out: int, n_in: int, device: torch.device | str | None = None) -> Tensor:
    """`(n_out, n_in)` float64: share of input cell ``r``'s mass that lands in output cell ``i``.

    Input cell ``r`` spans ``[r * n_out / n_in, (r + 1) * n_out / n_in)`` in output units (pixel edges
    aligned, as PIL's and torch's resizes align pixel centres); each column sums to 1.
    """
    edges = torch.arange(n_in + 1, dtype=torch.float64, device=device) * n_out / n_in
    cells = torch.arange(n_out, dtype=torch.float64, device=device)[:, None]
    overlap = torch.minimum(cells + 1, edges[None, 1:]) - torch.maximum(cells, edges[None, :-1])
    return overlap.clamp(min=0) * (n_in / n_out)


def map_to_original(
    relevance: Tensor, geometry: ImageGeometry, *, patch_size: int | tuple[int, int] | None = None
) -> Tensor:
    """Take a relevance map on the model input back onto the original image.

    Parameters
    ----------
    relevance : Tensor
        Relevance mass on the model input: a patch grid `(rows, cols)` or a pixel map
        `(H_in, W_in)` (the input size of ``geometry``), or a batch of either, `(B, rows, cols)` /
        `(B, H_in, W_in)`.
    geometry : ImageGeometry
        From :func:`processor_geometry`.
    patch_size : int or (int, int), optional
        Pixels per patch, `(height, width)`: pass ``layout.patch_size`` whenever you have it. By
        default ``H_in // rows`` and ``W_in // cols``, which is wrong when the grid leaves a border
        (a 4 x 4 grid of 8-pixel patches on a 36-pixel input would be read as 9-pixel patches).

    Returns
    -------
    Tensor
        `(H_orig, W_orig)`, or `(B, H_orig, W_orig)` for a batch; the dtype and device of ``relevance``.

    Notes
    -----
    Each patch's relevance is spread evenly over its pixels (the border a grid does not reach gets 0),
    the input is placed at ``geometry.crop`` inside the resized frame, and the frame is resampled to
    the original size **by area**: every resized pixel hands its relevance to the original pixels it
    overlaps, in proportion to the overlap (computed in float64). So the map's sum equals the
    relevance on the part of the input that shows the image: all of it unless the processor padded,
    relevance on padding being dropped. Original pixels outside the crop get exactly 0, not NaN, so
    sums and plots need no special case; ``geometry.covered_mask()`` tells them apart.
    """
    if not isinstance(relevance, Tensor):
        raise TypeError(f"Expected relevance as a torch.Tensor, got {type(relevance).__name__}.")
    if not isinstance(geometry, ImageGeometry):
        raise TypeError(
            f"Expected geometry as an ImageGeometry (from processor_geometry), got {type(geometry).__name__}."
        )
    if relevance.dim() not in (2, 3):
        raise ValueError(
            f"Expected relevance of shape (rows, cols), (H_in, W_in) or with a batch axis in front, got "
            f"{tuple(relevance.shape)}. Reshape token relevance with captum_tokenlrp.visualization.patch_grid."
        )
    batched = relevance.dim() == 3
    maps = relevance if batched else relevance[None]
    in_h, in_w = geometry.input
    if tuple(maps.shape[-2:]) != (in_h, in_w):
        maps = _patch_pixels(maps, geometry, patch_size)
    top, left, bottom, right = geometry.visible
    crop_top, crop_left = geometry.crop[:2]
    seen = maps[:, top - crop_top : bottom - crop_top, left - crop_left : right - crop_left].to(torch.float64)
    rows = _area_matrix(geometry.original[0], geometry.resized[0], maps.device)[:, top:bottom]
    cols = _area_matrix(geometry.original[1], geometry.resized[1], maps.device)[:, left:right]
    out = (rows @ seen @ cols.T).to(relevance.dtype if relevance.is_floating_point() else torch.float32)
    return out if batched else out[0]


def _patch_pixels(grids: Tensor, geometry: ImageGeometry, patch_size: int | tuple[int, int] | None) -> Tensor:
    """`(B, rows, cols)` patch relevance -> `(B, H_in, W_in)` pixel relevance."""
    (in_h, in_w), (rows, cols) = geometry.input, tuple(grids.shape[-2:])
    if patch_size is None:
        if rows == 0 or cols == 0 or in_h % rows or in_w % cols:
            raise ValueError(
                f"A {rows}x{cols} map is neither the model input size {in_h}x{in_w} nor a patch grid that "
                "tiles it; pass patch_size=layout.patch_size for a grid that leaves a border."
            )
        patch_size = (in_h // rows, in_w // cols)
    elif isinstance(patch_size, int):
        patch_size = (patch_size, patch_size)
    if rows * patch_size[0] > in_h or cols * patch_size[1] > in_w:
        raise ValueError(
            f"A {rows}x{cols} grid of {patch_size[0]}x{patch_size[1]} patches does not fit the model input "
            f"{in_h}x{in_w} of this geometry."
        )
    layout = TokenLayout(special_token_names=(), grid=(rows, cols), patch_size=tuple(patch_size))
    batch = grids.shape[0]
    return patch_relevance_to_pixels(grids.reshape(batch, -1), layout, torch.Size((batch, 1, in_h, in_w)))[:, 0]


# ---------------------------------------------------------------------------------------- one call
@dataclass(frozen=True)
class ImageExplanation:
    """An attribution's relevance for one image, on the model's grid and on the original image.

    Attributes
    ----------
    image : PIL.Image.Image
        The image after :func:`load_image` (RGB, upright): the one ``original_map`` aligns with.
    pixel_values : Tensor
        `(1, channels, H_in, W_in)`, what the model received (its device and dtype).
    token_relevance : Tensor
        `(num_tokens,)`; with per-head relevance, the mean over heads.
    patch_grid : Tensor
        `(rows, cols)`: the patch tokens of ``token_relevance`` on the grid.
    original_map : Tensor
        `(H_orig, W_orig)`: ``patch_grid`` on the original image (:func:`map_to_original`); its sum is the
        patches' sum.
    covered : Tensor
        bool `(H_orig, W_orig)`: original pixels the model input shows (``original_map`` is 0 elsewhere).
    layout : TokenLayout
        Special tokens, grid and patch size.
    geometry : ImageGeometry
        The processor's resize and crop for this image.
    head_relevance : Tensor or None
        `(heads, num_tokens)` when the attribution returned one map per head, else None.
    head_maps : Tensor or None
        `(heads, H_orig, W_orig)`: each head's map on the original image, else None.
    """

    image: Image.Image
    pixel_values: Tensor
    token_relevance: Tensor
    patch_grid: Tensor
    original_map: Tensor
    covered: Tensor
    layout: TokenLayout
    geometry: ImageGeometry
    head_relevance: Tensor | None = None
    head_maps: Tensor | None = None


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


def explain_image(
    attribution: Any,
    image: str | os.PathLike[str] | Image.Image,
    processor: Any,
    *,
    target: Any = None,
    additional_forward_args: Any = None,
    **kwargs: Any,
) -> ImageExplanation:
    """Load an image, run the processor and the attribution, and map the relevance onto the image.

    Parameters
    ----------
    attribution : TokenAttribution
        Any of the package's attributions (``TokenRelevanceLRP``, the baselines): it needs
        ``model``, ``token_relevance(pixel_values, target, additional_forward_args, **kwargs)`` and
        ``token_layout(pixel_values, additional_forward_args)``.
    image : str, os.PathLike or PIL.Image.Image
        Read with :func:`load_image`.
    processor : image processor
        The model's HuggingFace image processor, or a processor holding one (``CLIPProcessor``), called
        as ``processor(images=..., return_tensors="pt")`` (with ``input_data_format="channels_last"`` for
        transformers 4.x numpy processors, which otherwise misread images 1 or 3 pixels high).
    target, additional_forward_args, **kwargs
        Passed to ``token_relevance`` (e.g. ``head_fusion=None`` for one map per head). For an image-text
        model ``target`` may be one prompt (several raise a ``ValueError``: call once per prompt).

    Returns
    -------
    ImageExplanation
        Shapes in its docstring; ``head_relevance`` and ``head_maps`` are set when the relevance has a
        heads axis `(1, heads, num_tokens)`, and then ``token_relevance`` is their mean over heads.

    Raises
    ------
    ValueError
        From :func:`load_image` or :func:`processor_geometry`.
    RuntimeError
        If the processor's output size differs from the predicted geometry.
    """
    for name in ("model", "token_relevance", "token_layout"):
        if not hasattr(attribution, name):
            raise TypeError(
                f"Expected an attribution of this package (with model, token_relevance and token_layout), "
                f"got {type(attribution).__name__} without {name}."
            )
    processor = getattr(processor, "image_processor", processor)  # a CLIPProcessor: its image part
    adapter = getattr(attribution, "_adapter", None)  # the package's attributions; duck-typed ones have none
    if adapter is not None:
        target = one_prompt(target, adapter, getattr(attribution, "tokenizer", None), "explain_image")
    prompts = target if isinstance(target, TextPrompts) else None
    loaded = load_image(image)
    device, dtype = _model_device_dtype(attribution.model)
    pixel_values = processor(images=loaded, return_tensors="pt", **_pil_layout_kwargs(processor))["pixel_values"]
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    geometry = processor_geometry(processor, (loaded.height, loaded.width))
    if tuple(pixel_values.shape[-2:]) != geometry.input:
        raise RuntimeError(
            f"{type(processor).__name__} produced {tuple(pixel_values.shape[-2:])} pixels but its attributes "
            f"predict {geometry.input}; processor_geometry does not model this processor."
        )
    relevance = attribution.token_relevance(pixel_values, target, additional_forward_args, **kwargs).detach()
    if prompts is not None:  # (1, 1 prompt, ...): the prompt axis is not a heads axis
        relevance = relevance[:, 0]
    layout = attribution.token_layout(pixel_values, additional_forward_args)
    if relevance.dim() not in (2, 3) or relevance.shape[0] != 1:
        raise ValueError(
            f"Expected token relevance (1, num_tokens) or (1, heads, num_tokens), got {tuple(relevance.shape)}."
        )
    per_head = relevance.dim() == 3
    head_relevance = relevance[0] if per_head else None
    tokens = relevance[0].mean(dim=0) if per_head else relevance[0]
    grid = _patch_grid(tokens, layout)
    head_maps = None
    if head_relevance is not None:
        head_maps = map_to_original(_patch_grid(head_relevance, layout), geometry, patch_size=layout.patch_size)
    return ImageExplanation(
        image=loaded,
        pixel_values=pixel_values,
        token_relevance=tokens,
        patch_grid=grid,
        original_map=map_to_original(grid, geometry, patch_size=layout.patch_size),
        covered=geometry.covered_mask(device=grid.device),
        layout=layout,
        geometry=geometry,
        head_relevance=head_relevance,
        head_maps=head_maps,
    )
