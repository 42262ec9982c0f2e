"""How to call a HuggingFace image processor on a PIL image, whatever its backend and version."""

from __future__ import annotations

import inspect


def is_torchvision(processor: object) -> bool:
    """Whether the processor works on torch tensors (5.x ``backend="torchvision"``, 4.x ``...Fast`` classes)."""
    return getattr(processor, "backend", None) == "torchvision" or type(processor).__name__.endswith("Fast")


def pil_layout_kwargs(processor: object) -> dict[str, str]:
    """``input_data_format="channels_last"`` for the processors that must be told a PIL image is `(H, W, C)`.

    The numpy processors of transformers 4.x (``preprocess`` with an ``input_data_format`` parameter) turn a
    PIL image into an `(H, W, C)` array and then guess the channel axis, taking a first axis of 1 or 3 for
    channels: an image 1 or 3 pixels high fails ("mean must have 1 elements") or is read transposed. Not
    for torchvision processors: 4.x's ``...Fast`` ones read a PIL image as `(C, H, W)` and would permute it
    wrongly; 5.x's backends ignore the argument for PIL images.
    """
    if is_torchvision(processor):
        return {}
    try:
        parameters = inspect.signature(processor.preprocess).parameters
    except (AttributeError, TypeError, ValueError):
        return {}
    return {"input_data_format": "channels_last"} if "input_data_format" in parameters else {}
