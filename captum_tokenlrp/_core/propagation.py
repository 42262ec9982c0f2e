"""Head fusion and layer-by-layer propagation of token relevance.

Data flow: the recorder (``capture.py``) hands each layer's projections to a
rule, which turns them into per-head redistribution matrices ``M^h``, a group
of heads at a time; :func:`reduce_layer` keeps only what the chosen head mode
needs for that layer (one `(batch, N, N)` matrix when heads are fused);
:func:`propagate` moves the start relevance down through the kept matrices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .distances import normalize_rows_
from .kernels import RowScaled

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


def fuses_heads(head_fusion: str | None, is_last_layer: bool) -> bool:
    """Whether this layer's heads are fused into one new matrix (rather than kept per head)."""
    return layer_mode(head_fusion, is_last_layer) is not None


def layer_mode(head_fusion: str | None, is_last_layer: bool) -> str | None:
    """How one layer's heads are reduced: "mean", "max", "min", or None (kept per head)."""
    if head_fusion in ("mean", "max", "min"):
        return head_fusion
    if head_fusion == "last_layer_per_head" and not is_last_layer:
        return "mean"
    return None


def reduce_layer(head_chunks: Iterable[Tensor], head_fusion: str | None, is_last_layer: bool, num_heads: int) -> Tensor:
    """Keep what ``head_fusion`` needs of one layer's per-head redistribution matrices.

    Parameters
    ----------
    head_chunks : iterable of Tensor
        The layer's matrices, `(batch_size, heads_in_chunk, N, N)` each, rows summing to 1,
        consecutive groups of heads covering all ``num_heads``. Fused modes consume them one
        at a time, so only one chunk and the running result are alive.
    head_fusion : str or None
        See :data:`HEAD_MODES`.
    is_last_layer : bool
        Whether this is the layer nearest to the output.
    num_heads : int
        Total number of heads.

    Returns
    -------
    Tensor
        `(batch_size, N, N)` for a fused layer, `(batch_size, num_heads, N, N)` for a per-head one.
    """
    return reduce_blocks(((slice(None), chunk) for chunk in head_chunks), head_fusion, is_last_layer, num_heads)


def reduce_blocks(
    blocks: Iterable[tuple[slice, Tensor | RowScaled]],
    head_fusion: str | None,
    is_last_layer: bool,
    num_heads: int,
    batch_size: int | None = None,
) -> Tensor:
    """:func:`reduce_layer` for matrices that come in blocks of inputs as well as heads.

    Parameters
    ----------
    blocks : iterable of (slice, Tensor or RowScaled)
        ``(inputs, matrices)``: the matrices `(inputs, heads_in_block, N, N)` of a slice of the
        batch (``slice(None)``: all of it) and a group of heads; for every input, its blocks
        cover all ``num_heads``. A per-head layer needs whole-batch blocks. Matrices given as
        :class:`~captum_tokenlrp._core.kernels.RowScaled` are divided here (in place), by the
        head mean as it accumulates them.
    head_fusion, is_last_layer, num_heads
        As in :func:`reduce_layer`.
    batch_size : int, optional
        The whole batch; needed when the first block holds only part of it.

    Returns
    -------
    Tensor
        `(batch_size, N, N)` for a fused layer, `(batch_size, num_heads, N, N)` for a per-head one.
    """
    how = layer_mode(head_fusion, is_last_layer)
    if how is None:
        chunks = []
        for inputs, chunk in blocks:
            if inputs != slice(None) and (batch_size is None or inputs != slice(0, batch_size)):
                raise ValueError(f"A per-head layer needs blocks of the whole batch, got the inputs {inputs}.")
            chunks.append(chunk)
        return torch.cat(chunks, dim=1)
    fused: Tensor | None = None
    started: set[tuple[int | None, int | None]] = set()
    for inputs, matrices in blocks:
        scaled = matrices if isinstance(matrices, RowScaled) else None
        chunk = matrices.contributions if scaled is not None else matrices
        if fused is None:
            rows = chunk.shape[0] if inputs == slice(None) else batch_size
            if rows is None:
                raise ValueError("reduce_blocks needs batch_size when the first block holds part of the batch.")
            fused = chunk.new_empty(rows, *chunk.shape[-2:])
        target = fused[inputs]
        first = (inputs.start, inputs.stop) not in started
        started.add((inputs.start, inputs.stop))
        if how == "mean" and scaled is not None:  # divide while accumulating: one pass per head
            for head in range(chunk.shape[1]):
                if first and head == 0:
                    torch.div(chunk[:, 0], scaled.row_divisors[:, 0], out=target)
                else:
                    target.addcdiv_(chunk[:, head], scaled.row_divisors[:, head])
            continue
        if scaled is not None:
            chunk = scaled.divided_()
        if how == "mean":
            if first:  # a copy of a single head: summing over a length-1 axis costs two passes
                if chunk.shape[1] == 1:
                    target.copy_(chunk[:, 0])
                else:
                    torch.sum(chunk, dim=1, out=target)
            else:  # head by head, in place: no (inputs, N, N) temporary per block
                for head in range(chunk.shape[1]):
                    target.add_(chunk[:, head])
        else:
            reduce = torch.amax if how == "max" else torch.amin
            if first:
                reduce(chunk, dim=1, out=target)
            else:
                combine = torch.maximum if how == "max" else torch.minimum
                combine(target, reduce(chunk, dim=1), out=target)
    if fused is None:
        raise ValueError("reduce_layer needs at least one chunk of heads.")
    return fused.div_(num_heads) if how == "mean" else normalize_rows_(fused)


def weighted_head_mean(matrices: Tensor, weights: Tensor) -> Tensor:
    """``M = sum_h alpha_h M_h``: one layer's heads fused by per-sample weights.

    Parameters
    ----------
    matrices : Tensor
        `(batch_size, num_heads, N, N)`, rows summing to 1.
    weights : Tensor
        `(batch_size, num_heads)`, non-negative, summing to 1 per sample: the fused rows sum to 1.

    Returns
    -------
    Tensor
        `(batch_size, N, N)`.
    """
    return torch.einsum("bh,bhij->bij", weights, matrices)


def propagate_chains(start: Tensor, layer_matrices: Sequence[Tensor], head_fusion: str | None) -> Tensor:
    """Propagate several start vectors at once from the output tokens down to the input tokens.

    Implements ``R^(l-1)_j = sum_i R^(l)_i M_ij`` from the last layer to the first for every
    row of ``start``.

    Parameters
    ----------
    start : Tensor
        Initial relevance, `(batch_size, num_starts, num_tokens)`.
    layer_matrices : sequence of Tensor
        Output of :func:`reduce_layer` per layer, input side first.
    head_fusion : str or None
        The mode the matrices were reduced with.

    Returns
    -------
    Tensor
        `(batch_size, num_starts, num_tokens)` for fused modes, `(batch_size, num_heads,
        num_starts, num_tokens)` for per-head modes.
    """
    relevance = start
    for matrix in reversed(layer_matrices):
        relevance = _through_layer(relevance, matrix)
    if head_fusion == "per_head_mean":
        return relevance.mean(dim=1)
    return relevance


def _through_layer(relevance: Tensor, matrix: Tensor) -> Tensor:
    """One step ``R^(l-1) = R^(l) M^(l)`` for chains `(batch, starts, N)` or `(batch, heads, starts, N)`."""
    if matrix.dim() == 4:  # per head: split (or keep) one chain per head
        return (relevance if relevance.dim() == 4 else relevance.unsqueeze(1)) @ matrix
    if relevance.dim() == 3:
        return torch.bmm(relevance, matrix)
    # chains already split per head, fused layer: one batched product for all heads
    batch, heads, starts, tokens = relevance.shape
    relevance = torch.bmm(relevance.reshape(batch, heads * starts, tokens), matrix)
    return relevance.reshape(batch, heads, starts, tokens)


def propagate(start: Tensor, layer_matrices: Sequence[Tensor], head_fusion: str | None) -> Tensor:
    """Propagate one start vector per sample; see :func:`propagate_chains`.

    Parameters
    ----------
    start : Tensor
        Initial relevance ``R^(L)``, `(batch_size, num_tokens)`.

    Returns
    -------
    Tensor
        `(batch_size, num_tokens)` for fused modes, `(batch_size, num_heads, num_tokens)` for
        per-head modes.
    """
    return propagate_chains(start.unsqueeze(1), layer_matrices, head_fusion).squeeze(-2)


def propagate_by_layer(start: Tensor, layer_matrices: Sequence[Tensor], head_fusion: str | None) -> Tensor:
    """Where the relevance sits at every depth: ``R^(l)`` for ``l = 0 .. L``.

    ``R^(L)`` is ``start`` `(batch_size, num_tokens)`; ``R^(l-1) = R^(l) M^(l)``; ``R^(0)`` is what
    :func:`propagate` returns. ``layer_matrices`` and ``head_fusion`` as in :func:`propagate_chains`.

    Returns
    -------
    Tensor
        `(batch_size, L + 1, num_tokens)` for fused modes, `(batch_size, num_heads, L + 1, num_tokens)` for
        per-head modes, index ``l`` holding ``R^(l)``. Depths above the first per-head layer (where every
        head's chain still shares one vector) repeat that vector for each head.
    """
    relevance = start.unsqueeze(1)
    depths = [relevance]
    for matrix in reversed(layer_matrices):
        relevance = _through_layer(relevance, matrix)
        depths.append(relevance)
    depths.reverse()  # index l holds R^(l)
    if relevance.dim() == 3:
        return torch.cat(depths, dim=1)
    heads = relevance.shape[1]
    split = [d if d.dim() == 4 else d.unsqueeze(1).expand(-1, heads, -1, -1) for d in depths]
    by_layer = torch.cat(split, dim=2)
    return by_layer.mean(dim=1) if head_fusion == "per_head_mean" else by_layer
