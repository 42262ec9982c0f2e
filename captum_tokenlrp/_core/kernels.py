"""The engine's fast path for the built-in rules: the same formulas, computed in place.

The public rule components (:mod:`captum_tokenlrp.rules`) always return new tensors and never
see a work buffer. When a layer's rule is composed of exactly the built-in component classes
(not subclasses: a subclass may change ``__call__``, so it is a user component), the engine
computes ``M = normalise_rows(a_j * W_ij)`` here instead, overwriting the attention buffer it
owns and writing value distances into a reused buffer (see :mod:`.workspace`).

Where a fused kernel serves the device (:mod:`.fused`: Triton on CUDA, a C++ kernel built on first
use on the CPU), :func:`fused_redistribution` computes a layer's attention output and its kept
matrix in one pass from the query, key and value, never materialising per-head probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..rules import (
    AttentionState,
    AttentionWeight,
    TokenRule,
    UnitActivation,
    ValueDeviationActivation,
    ValueDistanceWeight,
)
from .distances import pairwise_distances, row_divisors_
from .workspace import Workspace


class RowScaled(NamedTuple):
    """Redistribution matrices ``M = contributions / row_divisors`` whose division is left to the consumer.

    A head mean divides while it accumulates (one pass over each block instead of two).
    """

    #: `(batch, heads, N, N)`, non-negative, empty rows already made identity rows.
    contributions: Tensor
    #: `(batch, heads, N, 1)`, positive.
    row_divisors: Tensor

    def divided_(self) -> Tensor:
        """``M``, in place of the contributions."""
        return self.contributions.div_(self.row_divisors)


#: ``kernel(state, workspace, divide=True) -> M`` of shape `(batch, heads, N, N)`, or its
#: :class:`RowScaled` form with ``divide=False``. With a ``workspace`` the state's attention lives in
#: the engine's buffer and is overwritten; without, nothing of the state is modified (several rules
#: may share it).
Kernel = Callable[..., "Tensor | RowScaled"]


def builtin_kernel(rule: TokenRule) -> Kernel | None:
    """The in-place kernel of a rule made of built-in components, or None for any other rule."""
    activation, weight = type(rule.activation), type(rule.weight)
    if activation not in (UnitActivation, ValueDeviationActivation) or weight not in (
        AttentionWeight,
        ValueDistanceWeight,
    ):
        return None
    by_value_distance = weight is ValueDistanceWeight
    by_value_deviation = activation is ValueDeviationActivation

    def kernel(state: AttentionState, workspace: Workspace | None, divide: bool = True) -> Tensor | RowScaled:
        attention = state.attention
        if by_value_distance:
            out = None if workspace is None else workspace.get("distances", tuple(attention.shape), attention)
            contributions = pairwise_distances(state.centered_values, out=out, norms=state.centered_norms)
            contributions.mul_(attention)
        else:
            contributions = attention if workspace is not None else attention.clone()
        contributions.diagonal(dim1=-2, dim2=-1).add_(1.0)
        if by_value_deviation:
            contributions.mul_(state.centered_norms.unsqueeze(-2))
            divisors = row_divisors_(contributions)
        else:  # a_j = 1: every row holds its diagonal's 1 (and nothing negative), so no row is empty
            divisors = contributions.sum(dim=-1, keepdim=True)
        return contributions.div_(divisors) if divide else RowScaled(contributions, divisors)

    return kernel


def redistribution(rule: TokenRule, state: AttentionState, workspace: Workspace | None = None) -> Tensor:
    """``M`` of ``rule`` for ``state``: the built-in kernel where there is one, else the rule's own."""
    kernel = builtin_kernel(rule)
    return rule.redistribution(state) if kernel is None else kernel(state, workspace)


def fused_redistribution(
    rule: TokenRule,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    scale: float,
    head_mode: str | None,
    score_bias: Tensor | None = None,
    token_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor] | None:
    """``(output, matrix)`` of one layer from a fused kernel, or None: then the unfused path must run.

    None for a rule not made of the built-in components (user code keeps its own path, as in
    :func:`builtin_kernel`), for a device without a fused kernel (said once, on the ``captum_tokenlrp``
    logger, where the CPU has no compiler), and where gradients are wanted (the kernels have none).

    Parameters
    ----------
    rule : TokenRule
        The layer's rule.
    query, key, value : Tensor
        `(batch, heads, N, head_dim)`, any strides and float dtype: what the model's attention function gets.
    scale : float
        The module's scaling of the scores.
    head_mode : {"mean", "max", "min", None}
        How this layer's heads are reduced, None to keep every head: what
        ``propagation.layer_mode(head_fusion, is_last_layer)`` gives for the call's head mode.
    score_bias, token_mask
        As in :class:`~captum_tokenlrp._core.capture.LayerProjections`.

    Returns
    -------
    tuple of Tensor or None
        ``output`` `(batch, heads, N, head_dim)` in ``value``'s dtype, ``softmax(q k^T scale + bias) @ v``;
        ``matrix`` float32, what :func:`~captum_tokenlrp._core.propagation.reduce_layer` would keep:
        `(batch, N, N)` for a fused layer, `(batch, heads, N, N)` for a per-head one.
    """
    from . import fused  # on first use: the CPU kernel is built then (propagation imports this module)

    if fused.rule_flags(rule) is None or (torch.is_grad_enabled() and query.requires_grad):
        return None
    if fused.backend(query.device) is None:
        return None
    try:
        return fused.fused_layer(
            query,
            key,
            value,
            scale=scale,
            rule=rule,
            head_mode=head_mode,
            score_bias=score_bias,
            token_mask=token_mask,
        )
    except fused.TritonFailed:  # said once; this device takes the unfused path from now on
        return None
