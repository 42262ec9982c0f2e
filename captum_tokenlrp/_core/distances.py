"""Pairwise value distances and row normalisation: the numerics under every rule.

The rules (:mod:`captum_tokenlrp.rules`) say *what* a layer redistributes; this module holds *how*
the two N x N quantities they all need are computed accurately and without needless passes:
``||x_j - x_i||`` for every pair (a batched GEMM, with the pairs it cannot resolve recomputed
exactly) and the division of each row by its sum (an empty row made the identity row without a
host-device synchronisation). It imports nothing from the package, so rules, kernels and
propagation can all depend on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NEAR_PAIR_SHARE", "normalize_rows", "normalize_rows_", "pairwise_distances", "row_divisors_"]


def pairwise_distances(vectors: Tensor, out: Tensor | None = None, norms: Tensor | None = None) -> Tensor:
    """``||x_j - x_i||_2`` for all pairs of rows, as a new tensor (or written into ``out``).

    Parameters
    ----------
    vectors : Tensor
        `(..., num_tokens, dim)`; centre them first for float32 accuracy.
    out : Tensor, optional
        Contiguous float32 buffer of shape `(..., num_tokens, num_tokens)`.
    norms : Tensor, optional
        ``||x_i||``, `(..., num_tokens)`, if already known.

    Returns
    -------
    Tensor
        `(..., num_tokens, num_tokens)`, symmetric, with an exactly zero diagonal.

    Notes
    -----
    The Gram identity ``|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>`` runs as one batched GEMM but
    cancels catastrophically for nearly equal rows (identical tokens would get a distance of
    ~1e-3 |x| instead of 0). Pairs whose squared distance falls below
    ``NEAR_PAIR_SHARE * (|x_i|^2 + max_j |x_j|^2)`` are therefore recomputed exactly from the
    differences; they are few in practice, so the cost stays that of the GEMM.

    Finding those pairs needs their count on the host. Off the CPU that would stall the device
    at every layer, so there every distance is taken from the differences directly
    (``torch.cdist`` without the matrix-product shortcut): exact, and no host-device
    synchronisation.
    """
    leading, (tokens, dim) = vectors.shape[:-2], vectors.shape[-2:]
    flat = vectors.reshape(-1, tokens, dim)
    if flat.device.type != "cpu":
        distances = _distances_from_differences(flat)
        if out is not None:
            distances = out.view(-1, tokens, tokens).copy_(distances)
        return distances.reshape(*leading, tokens, tokens)
    norms = torch.linalg.vector_norm(flat, dim=-1) if norms is None else norms.reshape(-1, tokens)
    squared_norms = norms.square()
    target = None if out is None else out.view(-1, tokens, tokens)
    # |x_i|^2 + |x_j|^2 first, then the product accumulates into it: one pass over N x N besides the GEMM.
    squared = torch.add(squared_norms.unsqueeze(-1), squared_norms.unsqueeze(-2), out=target)
    # The out= form, not baddbmm_: the same kernel, and FLOP counters (torch.utils.flop_counter) see it.
    squared = torch.baddbmm(squared, flat, flat.transpose(-1, -2), alpha=-2.0, out=squared)
    _refine_near_pairs(squared, flat, squared_norms)
    # No clamp before the root: every entry the identity could have left negative is below its row's
    # cutoff (which is >= 0) and has just been recomputed exactly; a row whose cutoff is 0 has only zero
    # vectors, whose entries are exact zeros.
    squared.sqrt_()
    squared.diagonal(dim1=-2, dim2=-1).zero_()
    return squared.reshape(*leading, tokens, tokens)


def _distances_from_differences(flat: Tensor) -> Tensor:
    """``||x_j - x_i||_2`` of `(groups, N, dim)` from the differences themselves, `(groups, N, N)`."""
    return torch.cdist(flat, flat, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")


#: Relative size under which a squared distance from the Gram identity is recomputed exactly.
NEAR_PAIR_SHARE = 1e-3
_PAIRS_PER_PASS = 1 << 18


def _refine_near_pairs(squared: Tensor, flat: Tensor, squared_norms: Tensor) -> None:
    """Recompute, in place, the squared distances the Gram identity cannot resolve.

    One reduction finds the rows that have a near pair at all (usually none); only those
    rows are searched. The diagonal is left at +inf; the caller zeroes it.
    """
    squared.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    cutoff = NEAR_PAIR_SHARE * (squared_norms + squared_norms.amax(dim=-1, keepdim=True))
    rows = (squared.amin(dim=-1) < cutoff).nonzero()
    if len(rows) == 0:
        return
    group, row = rows.unbind(dim=1)
    near = squared[group, row] < cutoff[group, row].unsqueeze(-1)
    pairs = near.nonzero()
    for start in range(0, len(pairs), _PAIRS_PER_PASS):
        index, column = pairs[start : start + _PAIRS_PER_PASS].unbind(dim=1)
        g, r = group[index], row[index]
        squared[g, r, column] = (flat[g, r] - flat[g, column]).square().sum(dim=-1)


def normalize_rows(contributions: Tensor) -> Tensor:
    """Divide each row by its sum; an all-zero row becomes the identity row.

    Parameters
    ----------
    contributions : Tensor
        Non-negative, shape `(..., num_tokens, num_tokens)`.

    Returns
    -------
    Tensor
        A new tensor of the same shape, every row summing to 1.
    """
    return normalize_rows_(contributions.clone())


def normalize_rows_(contributions: Tensor) -> Tensor:
    """In-place :func:`normalize_rows`; returns ``contributions``."""
    return contributions.div_(row_divisors_(contributions))


def row_divisors_(contributions: Tensor) -> Tensor:
    """What :func:`normalize_rows_` divides each row by, `(..., num_tokens, 1)`.

    The row sums, with an empty (all-zero) row made the identity row in place and given the divisor 1,
    so that ``contributions / row_divisors_(contributions)`` is the normalised matrix. Callers that
    divide while doing something else with the rows (a head mean accumulating them) save a pass.
    """
    row_sums = contributions.sum(dim=-1, keepdim=True)
    empty = row_sums == 0
    # Without a data-dependent branch (a GPU would wait for the host at every layer): an empty row is all
    # zero (contributions are non-negative), so adding 1 on its diagonal and dividing it by 1 gives the identity row.
    contributions.diagonal(dim1=-2, dim2=-1).add_(empty.squeeze(-1).to(contributions.dtype))
    return row_sums.masked_fill_(empty, 1.0)
