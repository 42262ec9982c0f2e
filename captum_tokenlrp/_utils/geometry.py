"""Token geometry in one place: which tokens are special, the patch grid, and patch <-> pixel maps.

Every module that turns token relevance into a grid or pixels (the attributions, the gradient
baselines, evaluation, figures, the image helpers) goes through these functions, so the layout
convention (special tokens first, then patches in row-major order; a border the grid does not
reach belongs to no patch) is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "TokenLayout",
    "block_sums",
    "crop_to_grid",
    "grid_to_tokens",
    "patch_grid",
    "patch_relevance_to_pixels",
    "patch_sums",
    "tokens_to_grid",
]


@dataclass(frozen=True)
class TokenLayout:
    """Where the special tokens and the image patches sit in the token sequence.

    Special tokens (CLS, distillation, registers) come first, then the patches
    in row-major order over ``grid``.
    """

    special_token_names: tuple[str, ...]
    grid: tuple[int, int]
    patch_size: tuple[int, int]

    @property
    def num_special_tokens(self) -> int:
        """Special tokens (CLS, distillation, registers) at the start of the sequence."""
        return len(self.special_token_names)

    @property
    def num_patches(self) -> int:
        """Image patches, ``rows * cols``."""
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """All tokens, special and patches."""
        return self.num_special_tokens + self.num_patches

    @property
    def patch_slice(self) -> slice:
        """Indices of the patch tokens in the sequence."""
        return slice(self.num_special_tokens, self.num_tokens)


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


def crop_to_grid(maps: Tensor, patch_size: tuple[int, int]) -> Tensor:
    """`(..., H, W)` -> `(..., rows * ph, cols * pw)`: the pixels the patch grid covers (a border is dropped)."""
    rows, cols = maps.shape[-2] // patch_size[0], maps.shape[-1] // patch_size[1]
    return maps[..., : rows * patch_size[0], : cols * patch_size[1]]


def patch_sums(pixel_attributions: Tensor, layout: TokenLayout) -> Tensor:
    """Sum pixel attributions over each patch (and channels) into token relevance.

    Parameters
    ----------
    pixel_attributions : Tensor
        `(batch_size, channels, height, width)`.
    layout : TokenLayout

    Returns
    -------
    Tensor
        `(batch_size, num_tokens)`; special tokens get 0 (they are not pixels).
    """
    (rows, cols), (patch_h, patch_w) = layout.grid, layout.patch_size
    covered = pixel_attributions[:, :, : rows * patch_h, : cols * patch_w].sum(dim=1)
    per_patch = block_sums(covered, layout.patch_size).flatten(1)
    special = per_patch.new_zeros(len(per_patch), layout.num_special_tokens)
    return torch.cat([special, per_patch], dim=1)


def tokens_to_grid(hidden: Tensor, layout: TokenLayout) -> Tensor:
    """Hidden states `(batch, num_tokens, width)` -> the patch tokens as `(batch, width, rows, cols)`."""
    batch, _, width = hidden.shape
    return hidden[:, layout.patch_slice].transpose(1, 2).reshape(batch, width, *layout.grid)


def grid_to_tokens(grid: Tensor, hidden: Tensor, layout: TokenLayout) -> Tensor:
    """Inverse of :func:`tokens_to_grid`: the special tokens of ``hidden``, then ``grid``'s patches."""
    batch, width = grid.shape[:2]
    patches = grid.reshape(batch, width, layout.num_patches).transpose(1, 2)
    return torch.cat([hidden[:, : layout.num_special_tokens], patches], dim=1)
