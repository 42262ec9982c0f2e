"""Head fusion and layer-by-layer propagation of token relevance.

Data flow: the recorder (``capture.py``) turns each layer's attention into
per-head redistribution matrices ``M^h`` of shape `(batch_size, num_heads, N, N)`;
:func:`reduce_layer` keeps only what the chosen head mode needs for that layer;
:func:`propagate` moves the start relevance down through the kept matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..rules import normalize_rows_

#: Head modes that give one map per sample, `(batch_size, num_tokens)`.
FUSED_HEAD_MODES = ("mean", "max", "min", "per_head_mean")
#: Head modes that give one map per head, `(batch_size, num_heads, num_tokens)`.
PER_HEAD_MODES = (None, "last_layer_per_head")
HEAD_MODES = FUSED_HEAD_MODES + PER_HEAD_MODES


def check_head_fusion(head_fusion: object) -> str | None:
    """Validate a ``head_fusion`` argument and return it."""
    if head_fusion is None or (isinstance(head_fusion, str) and head_fusion in HEAD_MODES):
        return head_fusion
    raise ValueError(
        f"Unknown head_fusion {head_fusion!r}; expected one of "
        f"{[m for m in HEAD_MODES if m is not None]} or None (one map per head)."
    )


def _fuse(matrices: Tensor, how: str) -> Tensor:
    """Fuse per-head matrices `(batch, heads, N, N)` into `(batch, N, N)` with rows summing to 1."""
    if how == "mean":
        return matrices.mean(dim=1)
    fused = matrices.amax(dim=1) if how == "max" else matrices.amin(dim=1)
    return normalize_rows_(fused)


def reduce_layer(matrices: Tensor, head_fusion: str | None, is_last_layer: bool) -> Tensor:
    """Keep what ``head_fusion`` needs of one layer's per-head matrices.

    Parameters
    ----------
    matrices : Tensor
        `(batch_size, num_heads, N, N)`, rows summing to 1.
    head_fusion : str or None
        See :data:`HEAD_MODES`.
    is_last_layer : bool
        Whether this is the layer nearest to the output.

    Returns
    -------
    Tensor
        `(batch_size, N, N)` for a fused layer, `(batch_size, num_heads, N, N)` for a per-head one.
    """
    if head_fusion in ("mean", "max", "min"):
        return _fuse(matrices, head_fusion)
    if head_fusion == "last_layer_per_head" and not is_last_layer:
        return _fuse(matrices, "mean")
    return matrices


def propagate(start: Tensor, layer_matrices: Sequence[Tensor], head_fusion: str | None) -> Tensor:
    """Propagate relevance from the output tokens down to the input tokens.

    Implements ``R^(l-1)_j = sum_i R^(l)_i M_ij`` from the last layer to the first.

    Parameters
    ----------
    start : Tensor
        Initial relevance ``R^(L)``, `(batch_size, num_tokens)`.
    layer_matrices : sequence of Tensor
        Output of :func:`reduce_layer` per layer, input side first.
    head_fusion : str or None
        The mode the matrices were reduced with.

    Returns
    -------
    Tensor
        `(batch_size, num_tokens)` for fused modes, `(batch_size, num_heads, num_tokens)` for
        per-head modes.
    """
    # Relevance is kept as row vectors `(batch, chains, N)`; a fused layer `(batch, N, N)`
    # serves every chain at once, a per-head layer `(batch, heads, N, N)` one chain per head.
    relevance = start.unsqueeze(1)
    for matrix in reversed(layer_matrices):
        if matrix.dim() == 3:
            relevance = torch.bmm(relevance, matrix)
        else:
            relevance = (relevance.unsqueeze(-2) @ matrix).squeeze(-2)
    if head_fusion == "per_head_mean":
        return relevance.mean(dim=1)
    if head_fusion in PER_HEAD_MODES:
        return relevance
    return relevance.squeeze(1)
