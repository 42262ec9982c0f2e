"""Every layer's attention, values and the explained output's gradient with respect to the attention.

One forward pass with autograd and one backward pass. The gradient ``dS/dA`` of the explained scalar
``S`` with respect to a head's attention probabilities is read without switching the model's attention
implementation: the head's output is ``ctx_i = sum_j A_ij v_j``, so

    dS/dA_ij = <dS/dctx_i, v_j>,

with ``dS/dctx`` the gradient at the input of the layer's output projection (one backward pass for
every layer). ``A`` is recomputed in float32 from the hooked query and key while the model's own
kernel runs: the ``"recompute"`` mode of :func:`.capture.record_layers`, whatever the method's
``attention_capture`` (the gradient must flow through the model's kernel, which ``"fast"`` replaces). No parameter's
``.grad`` is touched and every hook is removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from .capture import LayerProjections, record_layers


@dataclass(frozen=True)
class AttentionGradient:
    """One layer's float32 attention, values and ``dS/dA``, per head.

    Attributes
    ----------
    attention : Tensor
        `(batch_size, num_heads, num_tokens, num_tokens)`, rows summing to 1.
    values : Tensor
        `(batch_size, num_heads, num_tokens, head_dim)`.
    gradient : Tensor
        ``dS/dA``, `(batch_size, num_heads, num_tokens, num_tokens)`.
    layer_index : int
        0 for the layer nearest to the input.
    token_mask : Tensor or None
        `(batch_size, num_tokens)` real tokens of a padded text batch; None where all are real.
    """

    attention: Tensor
    values: Tensor
    gradient: Tensor
    layer_index: int
    token_mask: Tensor | None = None

    @cached_property
    def positive_contribution(self) -> Tensor:
        """``(dS/dA ⊙ A)^+``: how much each attention weight raised ``S`` (Chefer et al. 2021),
        `(batch_size, num_heads, num_tokens, num_tokens)`; computed once."""
        return (self.gradient * self.attention).clamp_min_(0)


def attention_gradients(
    sites: Sequence[AttentionSite], explained_scalar: Callable[[], Tensor]
) -> list[AttentionGradient]:
    """Run ``explained_scalar()`` (the forward pass, returning `(batch_size,)` scalars) and differentiate it.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention layers, input side first.
    explained_scalar : callable
        Runs the model once, with autograd enabled, on inputs that require grad (so the graph exists
        even when every parameter is frozen), and returns the explained scalar per sample; the samples
        are independent, so the gradient of their sum is each one's own.

    Returns
    -------
    list of AttentionGradient
        One per site, input side first.
    """
    contexts: list[Tensor] = []

    def keep_context(_module: nn.Module, args: tuple) -> None:
        contexts.append(args[0])

    def keep_attention(layer: LayerProjections) -> tuple[Tensor, Tensor, Tensor | None]:
        with torch.no_grad():
            state = layer.state()
        return state.attention, state.values, layer.token_mask

    handles = [site.output.register_forward_pre_hook(keep_context) for site in sites]
    try:
        # "recompute": the gradient must flow through the model's own attention kernel.
        with torch.enable_grad(), record_layers(sites, keep_attention, capture="recompute") as layers:
            scalar = explained_scalar()
            if len(contexts) != len(sites):
                raise RuntimeError(
                    f"The forward pass ran {len(contexts)} attention output projections, expected {len(sites)}."
                )
            gradients = torch.autograd.grad(scalar.sum(), contexts)
    finally:
        for handle in handles:
            handle.remove()
    result = []
    for site, (attention, values, token_mask), gradient in zip(sites, layers, gradients, strict=True):
        batch, tokens = attention.shape[0], attention.shape[-1]
        context_gradient = gradient.reshape(batch, tokens, site.num_heads, site.head_dim).transpose(1, 2).float()
        result.append(
            AttentionGradient(
                attention, values, context_gradient @ values.transpose(-1, -2), site.layer_index, token_mask
            )
        )
    return result
