"""The engine's fast path for the built-in rules: the same formulas, computed in place.

The public rule components (:mod:`captum_tokenlrp.rules`) always return new tensors and never
see a work buffer. When a layer's rule is composed of exactly the built-in component classes
(not subclasses: a subclass may change ``__call__``, so it is a user component), the engine
computes ``M = normalise_rows(a_j * W_ij)`` here instead, overwriting the attention buffer it
owns and writing value distances into a reused buffer (see :mod:`.workspace`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..rules import (
    AttentionState,
    AttentionWeight,
    TokenRule,
    UnitActivation,
    ValueDeviationActivation,
    ValueDistanceWeight,
    normalize_rows_,
    pairwise_distances,
)
from .workspace import Workspace

#: ``kernel(state, workspace) -> M`` of shape `(batch, heads, N, N)`. With a ``workspace`` the
#: state's attention lives in the engine's buffer and is overwritten; without, nothing of the
#: state is modified (several rules may share it).
Kernel = Callable[[AttentionState, Workspace | None], Tensor]


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

    def kernel(state: AttentionState, workspace: Workspace | None) -> Tensor:
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
        return normalize_rows_(contributions)

    return kernel


def redistribution(rule: TokenRule, state: AttentionState, workspace: Workspace | None = None) -> Tensor:
    """``M`` of ``rule`` for ``state``: the built-in kernel where there is one, else the rule's own."""
    kernel = builtin_kernel(rule)
    return rule.redistribution(state) if kernel is None else kernel(state, workspace)
