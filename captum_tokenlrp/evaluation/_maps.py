"""Bring attribution maps and ground-truth masks to one resolution before scoring them."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._core.geometry import block_sums

Sign = Literal["positive", "absolute", "signed"]
SIGNS = ("positive", "absolute", "signed")


def _as_tensor(value: object, name: str) -> Tensor:
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (or a 1-tuple of one, as Captum returns), got {type(value).__name__}."
        )
    return value


def attribution_map(attributions: object, batch_size: int | None = None) -> Tensor:
    """A Captum attribution as one float map per image.

    Parameters
    ----------
    attributions : Tensor or 1-tuple of Tensor
        `(batch_size, channels, height, width)` (a pixel attribution; channels are summed),
        `(batch_size, height, width)` (a map; may be a patch grid coarser than the image).

    Returns
    -------
    Tensor
        float32 `(batch_size, height, width)`.
    """
    attributions = _as_tensor(attributions, "attributions")
    if attributions.dim() == 4:
        attributions = attributions.sum(dim=1)
    if attributions.dim() != 3:
        raise ValueError(
            "attributions must have shape (batch_size, channels, height, width) or (batch_size, height, width), "
            f"got {tuple(attributions.shape)}. For token relevance `(batch_size, num_tokens)` use "
            "`patch_relevance_grid(relevance, layout)` first."
        )
    if batch_size is not None and attributions.shape[0] != batch_size:
        raise ValueError(f"attributions hold {attributions.shape[0]} maps, expected {batch_size} (one per image).")
    if not torch.isfinite(attributions).all():
        raise ValueError("attributions contain NaN or inf values.")
    return attributions.detach().float()


def apply_sign(maps: Tensor, sign: str) -> Tensor:
    """``"positive"``: negative values count as 0; ``"absolute"``: magnitudes; ``"signed"``: as given."""
    if sign == "positive":
        return maps.clamp_min(0)
    if sign == "absolute":
        return maps.abs()
    if sign == "signed":
        return maps
    raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}.")


def _check_masks(masks: object, batch_size: int) -> Tensor:
    masks = _as_tensor(masks, "masks")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.shape[0] != batch_size:
        raise ValueError(
            f"masks must have shape (batch_size, height, width) = ({batch_size}, H, W), got {tuple(masks.shape)}."
        )
    if masks.dtype != torch.bool:
        if masks.is_floating_point() and ((masks < 0) | (masks > 1)).any():
            raise ValueError("Non-boolean masks must hold object shares in [0, 1].")
        masks = masks.float()
    return masks


def _factor(fine: tuple[int, int], coarse: tuple[int, int], what: str) -> tuple[int, int]:
    if fine[0] % coarse[0] or fine[1] % coarse[1]:
        raise ValueError(
            f"{what}: a {coarse[0]}x{coarse[1]} map cannot be aligned with a {fine[0]}x{fine[1]} mask; "
            "the mask's size must be an integer multiple of the map's."
        )
    return fine[0] // coarse[0], fine[1] // coarse[1]


def aligned(
    attributions: object,
    masks: object,
    patch_size: int | tuple[int, int] | None,
    sign: str,
    object_share: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Map and mask at one resolution: `(batch, h, w)` float map and bool mask.

    With ``patch_size`` the map is summed over patches and a patch belongs to the object when
    at least ``object_share`` of its pixels do. A map coarser than the mask (a patch grid) is
    scored at the map's resolution, the mask pooled the same way.
    """
    maps = apply_sign(attribution_map(attributions), sign)
    masks = _check_masks(masks, maps.shape[0])
    if patch_size is not None:
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if maps.shape[-2:] != masks.shape[-2:]:
            raise ValueError(
                f"With patch_size the map must be at pixel resolution like the mask {tuple(masks.shape[-2:])}, "
                f"got {tuple(maps.shape[-2:])}."
            )
        if maps.shape[-2] % patch[0] or maps.shape[-1] % patch[1]:
            raise ValueError(
                f"patch_size {patch} does not tile the {maps.shape[-2]}x{maps.shape[-1]} map; "
                "pass the model's patch size for an image the patch grid covers exactly."
            )
        maps = block_sums(maps, patch)
    if maps.shape[-2:] != masks.shape[-2:]:
        factor = _factor(tuple(masks.shape[-2:]), tuple(maps.shape[-2:]), "map vs mask")
        share = block_sums(masks.float(), factor) / (factor[0] * factor[1])
        return maps, share >= object_share
    return maps, masks.bool() if masks.dtype == torch.bool else masks >= object_share
