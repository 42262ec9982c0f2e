"""Map patch-token relevance onto pixels."""

from __future__ import annotations

import torch
from torch import Tensor

from .._adapters import TokenLayout


def patch_relevance_to_pixels(patch_relevance: Tensor, layout: TokenLayout, image_shape: torch.Size) -> Tensor:
    """Spread each patch's relevance uniformly over its pixels and channels.

    Parameters
    ----------
    patch_relevance : Tensor
        `(batch_size, num_patches)`, patches in row-major grid order.
    layout : TokenLayout
        Grid and patch size.
    image_shape : torch.Size
        `(batch_size, channels, height, width)` of the input.

    Returns
    -------
    Tensor
        `(batch_size, channels, height, width)`. The pixel sum equals the patch sum; pixels
        outside the patch grid (a border the patch embedding never sees) get 0.
    """
    batch, channels, height, width = image_shape
    (rows, cols), (patch_h, patch_w) = layout.grid, layout.patch_size
    per_pixel = patch_relevance.reshape(batch, 1, rows, cols) / (patch_h * patch_w * channels)
    covered = per_pixel.repeat_interleave(patch_h, dim=2).repeat_interleave(patch_w, dim=3)
    pixels = covered.new_zeros(batch, channels, height, width)
    pixels[:, :, : rows * patch_h, : cols * patch_w] = covered
    return pixels
