r"""The gradient of an explained scalar with respect to every layer's attention probabilities, for text models.

Gradient attention methods (Generic Attention Explainability) need ``dS/dA`` for the attention
probabilities ``A`` of each layer and head. The attention output of a head is ``ctx_i = sum_j A_ij
v_j``, and ``A`` reaches the rest of the model only through it, so by the chain rule

.. math::

    \frac{\partial S}{\partial A_{ij}} = \Big\langle \frac{\partial S}{\partial \mathrm{ctx}_i},
    v_j \Big\rangle,

with ``dS/dctx`` the gradient at the input of the layer's output projection (``AttentionSite.output``:
BERT's ``attention.output.dense``, GPT-2's ``c_proj``, Llama's ``o_proj``...), where the heads'
outputs arrive side by side, and ``v`` the per-head value vectors (a key/value head shared by
several query heads gives each of them its values). This is exactly the gradient the authors'
code reads with a hook on the probabilities of an eager attention (no dropout: the explanation
runs in eval mode).

Reading it there, rather than switching the model to an attention implementation whose
probabilities require grad, keeps the model's computation its own on every path (sdpa, flash,
eager; transformers 4.x encoders that never call the attention registry included): the model's
own attention function computes every layer's output. Where the model calls the attention
registry, the attention configs point ``_attn_implementation`` at a registered wrapper of that
function for the call (it hands the query, key and value over on the way), and configs, registry
and hooks are restored on exit, also on an error. The probabilities and values
themselves are read as :class:`~captum_tokenlrp.TextTokenRelevanceLRP` reads them
(:func:`.text_capture.record_text_layers`), so every method is compared on the same attention.
No parameter's ``.grad`` is touched (``torch.autograd.grad`` on the kept tensors only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from .capture import LayerProjections
from .text_capture import record_text_layers

__all__ = ["LayerAttentionGradient", "attention_gradients"]


@dataclass(frozen=True)
class LayerAttentionGradient:
    """One layer's attention and the explained scalar's gradient with respect to it.

    Attributes
    ----------
    attention : Tensor
        float32 probabilities `(batch, heads, N, N)`, as the LRP classes read them.
    gradient : Tensor
        float32 ``dS/dA`` `(batch, heads, N, N)`, row ``i`` query, column ``j`` key; ``S`` summed
        over the batch (each sample's scalar depends on its own input only).
    """

    attention: Tensor
    gradient: Tensor


def attention_gradients(
    sites: Sequence[AttentionSite],
    run: Callable[[], Tensor],
    token_mask: Tensor,
    *,
    needs_registry: bool,
) -> tuple[Tensor, list[LayerAttentionGradient]]:
    """Run ``run()`` once with gradients enabled and differentiate its scalars by every layer's attention.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention layers, input side first.
    run : callable
        Runs the model's forward and returns the explained scalar per sample, `(batch,)`. Called
        with grad enabled; the caller chooses the mode (eval) and the forward arguments.
    token_mask : Tensor
        `(batch, N)` bool, True for real tokens.
    needs_registry : bool
        As in :func:`.text_capture.record_text_layers`.

    Returns
    -------
    scalars : Tensor
        The explained scalars `(batch,)`, detached.
    layers : list of LayerAttentionGradient
        One per site, input side first.
    """
    contexts: list[Tensor | None] = [None] * len(sites)
    handles = []

    def keep_context(position: int) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> tuple | None:
            context = args[0]
            replaced = None
            if not context.requires_grad:
                # Nothing upstream requires grad (frozen parameters, integer token ids): the first such
                # context becomes the leaf every later layer's graph grows from. Its own gradient only
                # needs the graph downstream of it, so it is still exact.
                context = context.detach().requires_grad_(True)
                replaced = (context, *args[1:])
            contexts[position] = context
            return replaced

        return hook

    def keep_attention(layer: LayerProjections) -> tuple[Tensor, Tensor]:
        # The recorder's own arithmetic (out= buffers) must not enter the graph.
        with torch.no_grad():
            state = layer.state()
        return state.attention, state.values

    try:
        for position, site in enumerate(sites):
            handles.append(site.output.register_forward_pre_hook(keep_context(position)))
        with torch.enable_grad():
            with record_text_layers(sites, keep_attention, token_mask, needs_registry=needs_registry) as kept:
                scalars = run()
            missing = [site.layer_index for site, context in zip(sites, contexts, strict=True) if context is None]
            missing += [site.layer_index for site, value in zip(sites, kept, strict=True) if value is None]
            if missing:
                raise RuntimeError(
                    f"The forward pass did not run attention layers {sorted(set(missing))} (or their output "
                    "projections); the model's layout is not the one the adapter expects."
                )
            if scalars.dim() != 1 or not scalars.requires_grad:
                raise RuntimeError(
                    f"The explained output must be one scalar per sample that depends on the attention, got shape "
                    f"{tuple(scalars.shape)} (requires_grad={scalars.requires_grad})."
                )
            gradients = torch.autograd.grad(scalars.sum(), contexts, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    layers = []
    for (attention, values), context, gradient in zip(kept, contexts, gradients, strict=True):
        batch, tokens, _ = context.shape
        if gradient is None:  # a layer the scalar does not read (e.g. its outputs are cut off): zero gradient
            layers.append(LayerAttentionGradient(attention, torch.zeros_like(attention)))
            continue
        heads, head_dim = values.shape[1], values.shape[-1]
        per_head = gradient.detach().float().reshape(batch, tokens, heads, head_dim).transpose(1, 2)
        layers.append(LayerAttentionGradient(attention, per_head @ values.transpose(-1, -2)))
    return scalars.detach(), layers
