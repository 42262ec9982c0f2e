"""Text models' attention gradients: :func:`.attention_gradients.attention_gradient_pass` (kept import path).

The one gradient pass and its one result type live in :mod:`.attention_gradients`; this module
keeps the text signature callers imported from here (:func:`attention_gradients` with the token
mask, returning the scalars and the layers) and the former result name ``LayerAttentionGradient``
(an alias of :class:`~.attention_gradients.AttentionGradient`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from .._adapters import AttentionSite
from .attention_gradients import AttentionGradient, LayerAttentionGradient, attention_gradient_pass

__all__ = ["LayerAttentionGradient", "attention_gradients"]


def attention_gradients(
    sites: Sequence[AttentionSite],
    run: Callable[[], Tensor],
    token_mask: Tensor,
    *,
    needs_registry: bool,
) -> tuple[Tensor, list[AttentionGradient]]:
    """``attention_gradient_pass(sites, run, token_mask=..., needs_registry=..., capture="exact")``.

    The probabilities are those :class:`~captum_tokenlrp.TextTokenRelevanceLRP` reads (``"exact"``),
    so every text method is compared on the same attention; parameters and result as there.
    """
    return attention_gradient_pass(sites, run, token_mask=token_mask, needs_registry=needs_registry, capture="exact")
