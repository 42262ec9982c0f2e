"""Class-sensitive redistribution: the paper's rules, told which output class to explain.

Rules (i)-(iv) redistribute relevance by what each layer computed, whatever the class: on a
classifier they draw one map for every target. The class-sensitive modes let the explained output
``S`` (a class logit) steer the redistribution through the *positive contribution* of each attention
weight (Chefer et al. 2021),

    C_hij = (dS/dA_hij * A_hij)^+,

while every layer's matrix stays row-stochastic and non-negative, so relevance stays non-negative
and is conserved exactly, as with the paper's rules:

- ``"heads"``: the heads' redistribution matrices ``M_h`` (any rule) are fused by a weighted mean,
  ``M = sum_h alpha_h M_h``, with ``alpha_h`` head ``h``'s share of the layer's positive
  contribution, ``alpha_h = sum_ij C_hij / sum_h' sum_ij C_h'ij`` (uniform when no head contributes).
- ``"attention"``: each head's attention is replaced by its class attention, the positive contribution
  on one scale for the whole network, ``A^c_ij = C_ij / s`` with ``s = max_{l,h,i} sum_j C^(l)_hij``
  (per image): the row that contributes most, anywhere in the model, weighs as much as its residual
  ``delta_ij``; a row that contributed little keeps most of its relevance on its own token, and one
  that contributed nothing keeps all of it. The rule runs unchanged on ``A^c``, so
  ``W_ij = A^c_ij + delta_ij`` for rule (i), ``||v_j - v_i|| A^c_ij + delta_ij`` for rule (iii), and so on.
- ``"attention+heads"``: both.

All three need one forward and one backward pass (:func:`.attention_gradients.attention_gradients`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..rules import AttentionState
from .attention_gradients import AttentionGradient

#: Values of ``TokenRelevanceLRP(class_sensitive=...)``; None (the default) is the paper's rules.
CLASS_SENSITIVE_MODES = (None, "heads", "attention", "attention+heads")


def check_class_sensitive(mode: object) -> str | None:
    """Validate a ``class_sensitive`` argument and return it."""
    if mode is None or (isinstance(mode, str) and mode in CLASS_SENSITIVE_MODES):
        return mode
    raise ValueError(
        f"class_sensitive must be one of {list(CLASS_SENSITIVE_MODES)}, got {mode!r}: None keeps the paper's "
        '(class-agnostic) rules; "heads" weights the heads by their positive gradient x attention; "attention" '
        "redistributes along each attention weight's positive contribution to the class."
    )


def weights_heads(mode: str | None) -> bool:
    """Whether ``mode`` fuses heads by their contribution (rather than by the head mode's own fusion)."""
    return mode is not None and mode.endswith("heads")


def contribution_scale(layers: list[AttentionGradient]) -> Tensor:
    """``s``: the largest row sum of the positive contribution over every layer, head and token, per image,
    `(batch_size,)` (1 where nothing contributed, so that ``A^c`` is zero there)."""
    rows = torch.stack([layer.positive_contribution.sum(dim=-1).flatten(1).amax(dim=1) for layer in layers])
    scale = rows.amax(dim=0)
    return scale.where(scale > 0, scale.new_ones(()))


def class_attention(layer: AttentionGradient, scale: Tensor) -> Tensor:
    """``A^c_ij = C_ij / s`` per head, `(batch_size, num_heads, N, N)`, with ``s`` of :func:`contribution_scale`
    `(batch_size,)`: every row sums to at most 1."""
    return layer.positive_contribution / scale[:, None, None, None]


def head_weights(layer: AttentionGradient) -> Tensor:
    """``alpha_h``: each head's share of the layer's positive contribution, `(batch_size, num_heads)`,
    summing to 1 per sample (uniform where no head contributes)."""
    per_head = layer.positive_contribution.sum(dim=(-1, -2))
    totals = per_head.sum(dim=-1, keepdim=True)
    uniform = per_head.new_full(per_head.shape, 1.0 / per_head.shape[-1])
    return (per_head / totals.where(totals > 0, totals.new_ones(()))).where(totals > 0, uniform)


def class_state(layer: AttentionGradient, mode: str | None, scale: Tensor) -> AttentionState:
    """The :class:`AttentionState` the rule sees: the layer's own attention, or its class attention."""
    attention = class_attention(layer, scale) if mode is not None and mode.startswith("attention") else layer.attention
    return AttentionState(attention, layer.values, layer.layer_index, layer.token_mask)
