"""Where an image processor puts the original image in the model input (:func:`processor_geometry`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ._processor import is_torchvision


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
        rows = area_matrix(self.original[0], self.resized[0], device)[:, top:bottom].sum(dim=1) > 0
        cols = area_matrix(self.original[1], self.resized[1], device)[:, left:right].sum(dim=1) > 0
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
    torchvision = is_torchvision(processor)
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


def area_matrix(n_out: int, n_in: int, device: torch.device | str | None = None) -> Tensor:
    """`(n_out, n_in)` float64: share of input cell ``r``'s mass that lands in output cell ``i``.

    Input cell ``r`` spans ``[r * n_out / n_in, (r + 1) * n_out / n_in)`` in output units (pixel edges
    aligned, as PIL's and torch's resizes align pixel centres); each column sums to 1.
    """
    edges = torch.arange(n_in + 1, dtype=torch.float64, device=device) * n_out / n_in
    cells = torch.arange(n_out, dtype=torch.float64, device=device)[:, None]
    overlap = torch.minimum(cells + 1, edges[None, 1:]) - torch.maximum(cells, edges[None, :-1])
    return overlap.clamp(min=0) * (n_in / n_out)
