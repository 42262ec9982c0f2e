"""Between tokens, patch grids and pixels: the reshapes every module shares."""

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


def block_sums(maps: Tensor, block: tuple[int, int]) -> Tensor:
    """Sum `(batch, H, W)` over non-overlapping ``block`` tiles -> `(batch, H / bh, W / bw)`.

    ``H`` and ``W`` must be multiples of the block (crop a border the grid does not cover first).
    """
    batch, height, width = maps.shape
    block_h, block_w = block
    return maps.reshape(batch, height // block_h, block_h, width // block_w, block_w).sum(dim=(2, 4))


def patch_grid(relevance: Tensor, layout: TokenLayout) -> Tensor:
    """Patch-token relevance reshaped to the patch grid.

    Parameters
    ----------
    relevance : Tensor
        `(..., num_tokens)`, in the model's token order (special tokens first).
    layout : TokenLayout
        From :meth:`TokenRelevanceLRP.token_layout`.

    Returns
    -------
    Tensor
        `(..., grid_rows, grid_cols)`.
    """
    if relevance.shape[-1] != layout.num_tokens:
        raise ValueError(
            f"Expected relevance over {layout.num_tokens} tokens (last dimension), got {relevance.shape[-1]}."
        )
    return relevance[..., layout.patch_slice].reshape(*relevance.shape[:-1], *layout.grid)
