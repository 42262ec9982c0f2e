r"""Every layer's attention, values and the explained output's gradient with respect to the attention.

One pass for image and text models (:func:`attention_gradient_pass`): one forward with autograd
and one backward. Gradient attention methods (Generic Attention Explainability, the
class-sensitive modes) need ``dS/dA`` for the attention probabilities ``A`` of each layer and head.
A head's attention output is ``ctx_i = sum_j A_ij v_j`` and ``A`` reaches the rest of the model
only through it, so by the chain rule

.. math::

    \frac{\partial S}{\partial A_{ij}} = \Big\langle \frac{\partial S}{\partial \mathrm{ctx}_i},
    v_j \Big\rangle,

with ``dS/dctx`` the gradient at the input of the layer's output projection
(``AttentionSite.output``: ViT's ``attention.output.dense``, BERT's ``attention.output.dense``,
GPT-2's ``c_proj``, Llama's ``o_proj``...), where the heads' outputs arrive side by side, and ``v``
the per-head value vectors (a key/value head shared by several query heads gives each of them its
values). This is exactly the gradient a hook on the probabilities of an eager attention would
read (no dropout: the explanation runs in eval mode).

Reading it there, rather than switching the model to an attention implementation whose
probabilities require grad, lets the model's own attention kernel compute every layer's output
(sdpa, flash or eager) and carry the gradient: the probabilities are recorded by
:func:`.capture.record_layers` in a mode that runs the model's kernel, ``"recompute"`` (images:
float32 from the hooked query and key, whatever the method's ``attention_capture``) or
``"exact"`` (text: the model's own float32 probabilities, or its eager function's on the same
query, key and mask, as :class:`~captum_tokenlrp.TextTokenRelevanceLRP` reads them), never
``"fast"``, which replaces the kernel. No parameter's ``.grad`` is touched
(``torch.autograd.grad`` on the kept tensors only) and every hook is removed in ``finally``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from .capture import LayerProjections, record_layers

__all__ = ["AttentionGradient", "LayerAttentionGradient", "attention_gradient_pass", "attention_gradients"]


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
        ``dS/dA``, `(batch_size, num_heads, num_tokens, num_tokens)`, row ``i`` query, column ``j``
        key; ``S`` summed over the batch (each sample's scalar depends on its own input only).
        Zero for a layer the scalar does not read.
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


#: The text modules' former name of the one result type (it has ``attention`` and ``gradient`` too).
LayerAttentionGradient = AttentionGradient


def attention_gradient_pass(
    sites: Sequence[AttentionSite],
    explained_scalar: Callable[[], Tensor],
    *,
    token_mask: Tensor | None = None,
    needs_registry: bool = False,
    capture: str = "recompute",
) -> tuple[Tensor, list[AttentionGradient]]:
    """Run ``explained_scalar()`` once with gradients enabled and differentiate it by every layer's attention.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention layers, input side first.
    explained_scalar : callable
        Runs the model's forward once and returns the explained scalar per sample, `(batch_size,)`.
        Called with grad enabled; the caller chooses the mode (eval) and the forward arguments. The
        samples are independent, so the gradient of their sum is each one's own. Nothing upstream
        needs to require grad (frozen parameters, integer token ids): the first layer's attention
        output then becomes the leaf the graph grows from.
    token_mask : Tensor, optional
        A text batch: `(batch_size, num_tokens)` bool, True for real tokens (see
        :func:`.capture.record_layers`). None for an image model.
    needs_registry : bool, default False
        As in :func:`.capture.record_layers`.
    capture : {"recompute", "exact"}, default "recompute"
        How the probabilities are recorded; both let the model's own kernel run and carry the
        gradient (``"fast"``, which replaces it, is refused).

    Returns
    -------
    scalars : Tensor
        The explained scalars `(batch_size,)`, detached.
    layers : list of AttentionGradient
        One per site, input side first.
    """
    if capture not in ("recompute", "exact"):
        raise ValueError(
            f'capture must be "recompute" or "exact" for the attention gradients, got {capture!r}: "fast" '
            "replaces the model's attention kernel, through which the gradient must flow."
        )
    contexts: list[Tensor | None] = [None] * len(sites)
    handles = []

    def keep_context(position: int) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> tuple | None:
            context = args[0]
            replaced = None
            if not context.requires_grad:
                # Nothing upstream requires grad: the first such context becomes the leaf every later layer's
                # graph grows from. Its own gradient only needs the graph downstream of it, so it is still exact.
                context = context.detach().requires_grad_(True)
                replaced = (context, *args[1:])
            contexts[position] = context
            return replaced

        return hook

    def keep_attention(layer: LayerProjections) -> tuple[Tensor, Tensor, Tensor | None]:
        # The recorder's own arithmetic (out= buffers) must not enter the graph.
        with torch.no_grad():
            state = layer.state()
        return state.attention, state.values, layer.token_mask

    try:
        for position, site in enumerate(sites):
            handles.append(site.output.register_forward_pre_hook(keep_context(position)))
        with torch.enable_grad():
            recording = record_layers(
                sites, keep_attention, capture=capture, token_mask=token_mask, needs_registry=needs_registry
            )
            with recording as kept:
                scalars = explained_scalar()
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
    for site, (attention, values, mask), context, gradient in zip(sites, kept, contexts, gradients, strict=True):
        if gradient is None:  # a layer the scalar does not read (e.g. its outputs are cut off): zero gradient
            layers.append(AttentionGradient(attention, values, torch.zeros_like(attention), site.layer_index, mask))
            continue
        batch, tokens, _ = context.shape
        heads, head_dim = values.shape[1], values.shape[-1]
        per_head = gradient.detach().float().reshape(batch, tokens, heads, head_dim).transpose(1, 2)
        layers.append(AttentionGradient(attention, values, per_head @ values.transpose(-1, -2), site.layer_index, mask))
    return scalars.detach(), layers


def attention_gradients(
    sites: Sequence[AttentionSite], explained_scalar: Callable[[], Tensor]
) -> list[AttentionGradient]:
    """``attention_gradient_pass(sites, explained_scalar)``'s layers: the image models' entry point (kept).

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention layers, input side first.
    explained_scalar : callable
        Runs the model once and returns the explained scalar per sample, `(batch_size,)`.

    Returns
    -------
    list of AttentionGradient
        One per site, input side first.
    """
    return attention_gradient_pass(sites, explained_scalar)[1]
