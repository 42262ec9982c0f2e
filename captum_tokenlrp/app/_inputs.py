"""What the user hands the app: an upload read like the CLI reads files, or a clear message why not."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..images import load_image

#: Uploads above this many pixels are refused (a decompression bomb or a photo far beyond any ViT's input).
MAX_PIXELS = 40_000_000


class AppInputError(ValueError):
    """A problem with what the user gave the app (shown on the page; the app keeps running)."""


@dataclass(frozen=True)
class UnreadableUpload:
    """What the image box hands the handler when Gradio could not decode the upload (the reason, for the page)."""

    reason: str


def image_key(image: Image.Image) -> str:
    """sha256 of an RGB image's size and pixels: equal pictures get equal keys, whatever file they came in."""
    digest = hashlib.sha256(f"{image.width}x{image.height}".encode())
    digest.update(np.asarray(image.convert("RGB")).tobytes())
    return digest.hexdigest()


def check_upload(image: object) -> Image.Image:
    """The uploaded image, loaded like the CLI loads files; an :class:`AppInputError` saying what is wrong."""
    if image is None:
        raise AppInputError("No image: upload one, drop one on the image box, or pick a bundled sample.")
    if isinstance(image, UnreadableUpload):
        raise AppInputError(
            f"The upload is not an image this app can read ({image.reason}). Upload a PNG, JPEG, WebP, BMP, GIF "
            "or TIFF file."
        )
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    try:
        loaded = load_image(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise AppInputError(f"Cannot read the upload as an image: {error}") from None
    if loaded.width * loaded.height > MAX_PIXELS:  # a file path: its size is known once it is read
        raise AppInputError(
            f"The image has {loaded.width} x {loaded.height} pixels, more than the app takes ({MAX_PIXELS:,}); "
            "shrink it first (a ViT sees a few hundred pixels a side anyway)."
        )
    return loaded
