"""A map on the model input back onto the original image, keeping its total (:func:`map_to_original`)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._adapters import TokenLayout
from .._utils.geometry import patch_relevance_to_pixels
from ._geometry import ImageGeometry, area_matrix


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
    rows = area_matrix(geometry.original[0], geometry.resized[0], maps.device)[:, top:bottom]
    cols = area_matrix(geometry.original[1], geometry.resized[1], maps.device)[:, left:right]
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
