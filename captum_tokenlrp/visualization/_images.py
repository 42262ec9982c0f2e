"""A model input back to a displayable image: the processor's normalisation undone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from ._maps import ArrayLike


def _normalisation(
    mean: Sequence[float] | float | None, std: Sequence[float] | float | None, processor: Any
) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-channel ``(mean, std)`` to undo, from explicit values or an image processor; None for neither."""
    if processor is not None:
        processor = getattr(processor, "image_processor", processor)  # a CLIPProcessor: its image part
        if mean is not None or std is not None:
            raise ValueError("Pass either processor or mean and std, not both.")
        if not getattr(processor, "do_normalize", True):
            return None  # the processor did not normalise: nothing to undo
        mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
        if mean is None or std is None:
            raise TypeError(
                f"processor must have image_mean and image_std (a HuggingFace image processor), got "
                f"{type(processor).__name__} without them. Pass mean=... and std=... instead."
            )
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(
            f"Pass both mean and std (the processor's image_mean and image_std), got mean={mean!r} and std={std!r}."
        )
    mean_array = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    std_array = np.atleast_1d(np.asarray(std, dtype=np.float64))
    if mean_array.ndim != 1 or std_array.ndim != 1 or not (std_array > 0).all():
        raise ValueError(f"mean and std must be numbers or one per channel, std > 0; got mean={mean!r}, std={std!r}.")
    return mean_array, std_array


def _denormalise(hwc: np.ndarray, normalisation: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``x * std + mean`` per channel (last axis), clipped to [0, 1]."""
    mean, std = normalisation
    channels = hwc.shape[-1]
    for name, values in (("mean", mean), ("std", std)):
        if values.size not in (1, channels):
            raise ValueError(
                f"{name} has {values.size} values but the image has {channels} channels; "
                f"pass one value per channel (or one for all)."
            )
    return np.clip(hwc * std + mean, 0.0, 1.0)


def image_for_display(
    image: ArrayLike,
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    processor: Any = None,
) -> np.ndarray:
    """One image as `(height, width, channels)` floats in [0, 1], for display.

    Parameters
    ----------
    image : Tensor or ndarray
        `(channels, height, width)` (a model input, e.g. ``pixel_values[0]``) or `(height, width, channels)`.
    mean, std : float or sequence of float, optional
        The normalisation the image went through (one value per channel, or one for all): it is undone,
        ``image * std + mean``, and the result clipped to [0, 1]. Give both or neither.
    processor : HuggingFace image processor, optional
        Reads ``mean`` and ``std`` from its ``image_mean`` and ``image_std`` (nothing is undone when its
        ``do_normalize`` is False). Not together with ``mean`` and ``std``.

    Returns
    -------
    ndarray
        `(height, width, channels)`, float64 in [0, 1]. Without ``mean``, ``std`` or ``processor`` the image
        is min-max rescaled (enough to recognise a normalised input; colours are approximate).
    """
    normalisation = _normalisation(mean, std, processor)
    array = image.detach().double().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=float)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim != 3:
        raise ValueError(
            f"Expected one image (channels, height, width) or (height, width, channels), got shape "
            f"{tuple(array.shape)}; index a batch first, e.g. pixel_values[0]."
        )
    if normalisation is not None:
        return _denormalise(array, normalisation)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def to_captum_image(
    attribution: Tensor | tuple[Tensor],
    *,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    processor: Any = None,
) -> np.ndarray:
    """One attribution (or image) as the `(height, width, channels)` numpy array Captum's plots take.

    ``visualize_image_attr(to_captum_image(attr[0]), to_captum_image(pixel_values[0], processor=processor), ...)``

    Parameters
    ----------
    attribution : Tensor or 1-tuple of Tensor
        `(channels, height, width)` or a batch of one, `(1, channels, height, width)`.
    mean, std : float or sequence of float, optional
        For an image: the normalisation to undo, ``x * std + mean`` per channel, then clipped to [0, 1]
        (Captum's ``original_image`` and ``masked_image`` expect an image in [0, 1]). Give both or neither.
    processor : HuggingFace image processor, optional
        Reads ``mean`` and ``std`` from its ``image_mean`` and ``image_std``. Not together with them.

    Returns
    -------
    ndarray
        `(height, width, channels)`, float32: the values as they are, or the image in [0, 1] when a
        normalisation is given.
    """
    normalisation = _normalisation(mean, std, processor)
    if isinstance(attribution, tuple):
        if len(attribution) != 1:
            raise ValueError(f"Expected a 1-tuple of attributions, got {len(attribution)} items.")
        attribution = attribution[0]
    if not isinstance(attribution, Tensor):
        raise TypeError(f"Expected a torch.Tensor, got {type(attribution).__name__}.")
    if attribution.dim() == 4 and attribution.shape[0] == 1:
        attribution = attribution[0]
    if attribution.dim() != 3:
        raise ValueError(
            f"Expected one map of shape (channels, height, width) or (1, channels, height, width), "
            f"got {tuple(attribution.shape)}; index the batch first, e.g. attributions[0]."
        )
    hwc = attribution.detach().double().cpu().permute(1, 2, 0).numpy()
    if normalisation is not None:
        hwc = _denormalise(hwc, normalisation)
    return hwc.astype(np.float32)
