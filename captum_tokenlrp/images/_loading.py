"""Image files to the 8-bit RGB image an image processor expects (:func:`load_image`)."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .._utils.stack import user_stacklevel

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


_PILLOW_CONVERTED_MODES = ("1", "L", "P", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


#: PIL modes :func:`load_image` reads.
SUPPORTED_MODES: tuple[str, ...] = ("RGB", *_PILLOW_CONVERTED_MODES, *_ALPHA_MODES, *_SIXTEEN_BIT_MODES, "I", "F")


#: File suffixes read as images where a folder is searched (``tokenlrp explain-dir``, the report), any case.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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
