"""AttnLRP (Achtibat et al., ICML 2024) for HuggingFace ViTs, as the authors' ``lxt`` computes it.

lxt's "efficient" implementation is Gradient x Input with modified backward passes: the rules
of AttnLRP become the local gradients of a few operations, and one backward pass gives the
relevance ``R = x * dS/dx`` of every tensor ``x``. The changes, one per operation (``g`` is the
modified gradient arriving at the operation's output, ``D`` the hidden size):

====================  ==========================================  ===================================
operation             rule                                        backward here (as in lxt)
====================  ==========================================  ===================================
Linear, conv, add     epsilon rule (eps -> 0)                     unchanged: ``W^T g``
LayerNorm             identity rule on the normalisation          std constant: ``h - mean_D(h)``,
                                                                  ``h = g * w / std(x)``
GELU (MLP)            identity rule ``R_in = R_out``              ``g * GELU(x) / (x + 1e-10)``
softmax               AttnLRP softmax rule                        unchanged (its gradient x input
                      ``R_i = x_i (R_i^out - s_i sum_j R_j^out)``  *is* the rule)
``q k^T``, ``A v``    uniform rule: each operand gets half        ``q, k``: ``g / 4``; ``v``: ``g / 2``
====================  ==========================================  ===================================

The quarter on ``q`` and ``k``: the product ``A v`` halves the gradient reaching ``A`` (and
``v``), the product ``q k^T`` halves it again; lxt applies both where the attention function
receives ``q, k, v`` (``lxt.efficient.patches.wrap_attention_forward``; its BERT file halves
the scores and the context instead, which is the same backward).

Everything is scoped to one call and reversible (:func:`attnlrp_rules`): forward hooks on the
model's own modules replace their outputs by tensors of the *same value* whose backward is the
rule's, so the model's outputs inside the call are bitwise its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.autograd import Function

from .._adapters import ModelAdapter
from .._adapters.base import registered_adapters
from .._core.base import PreparedInputs, evaluation_mode
from .._utils.validation import TargetType
from .gradient import _GradientAttribution

__all__ = ["AttnLRP", "attnlrp_rules"]

#: Values of the ``attention_rule`` option.
ATTENTION_RULES = ("attnlrp", "cp")
#: lxt's stabiliser in the identity rule's ratio ``y / (x + eps)``.
IDENTITY_EPSILON = 1e-10
#: Element-wise activation classes of torch (transformers' live in ``transformers.activations``).
_TORCH_ACTIVATIONS = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.ELU, nn.LeakyReLU, nn.Softplus)


class _ScaleGradient(Function):
    """Identity forward; the gradient times ``factor`` (the uniform rule of a product's operand)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor

    @staticmethod
    def backward(ctx, gradient: Tensor) -> tuple[Tensor, None]:
        return gradient * ctx.factor, None


class _IdentityRule(Function):
    """``y = f(x)`` (computed by the model) with the backward ``g * y / (x + eps)``: ``R_in = R_out``."""

    @staticmethod
    def forward(ctx, tensor: Tensor, output: Tensor) -> Tensor:
        ctx.save_for_backward(output / (tensor + IDENTITY_EPSILON))
        return output

    @staticmethod
    def backward(ctx, gradient: Tensor) -> tuple[Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return gradient * ratio, None


class _ConstantStdLayerNorm(Function):
    """LayerNorm's output (computed by the model) with the backward of ``(x - mean(x)) / std * w``, std constant.

    ``std = sqrt(mean((x - mean(x))^2) + eps)`` over the last axis, as lxt's ``layer_norm_forward``.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, output: Tensor, weight: Tensor | None, eps: float) -> Tensor:
        centred = tensor - tensor.mean(dim=-1, keepdim=True)
        std = (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
        ctx.save_for_backward(std, weight)
        return output

    @staticmethod
    def backward(ctx, gradient: Tensor) -> tuple[Tensor, None, None, None]:
        std, weight = ctx.saved_tensors
        scaled = (gradient if weight is None else gradient * weight) / std
        return scaled - scaled.mean(dim=-1, keepdim=True), None, None, None


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, _TORCH_ACTIVATIONS) or type(module).__module__ == "transformers.activations"


def _check_rule_sites(adapter: ModelAdapter) -> list[nn.Module]:
    """The blocks' activation modules (one per block); a TypeError where the rules would miss an operation."""
    name = type(adapter.model).__name__
    if not adapter.pre_norm_blocks:
        supported = ", ".join(
            name for known in registered_adapters() if known.pre_norm_blocks for name in known.supported_class_names
        )
        raise TypeError(
            f"AttnLRP covers pre-norm ViT blocks (LayerNorm, self-attention, GELU MLP); {name} is not one of "
            f"them. Supported: {supported}."
        )
    if getattr(adapter.config, "use_swiglu_ffn", False):
        raise TypeError(
            f"{name} uses a SwiGLU MLP (config.use_swiglu_ffn=True), whose gate product AttnLRP would need a "
            "uniform rule for; only the GELU MLP is supported."
        )
    activations = []
    for index, block in enumerate(adapter.transformer_blocks()):
        found = [module for module in block.modules() if _is_activation(module)]
        if len(found) != 1:
            raise TypeError(
                f"AttnLRP applies the identity rule to the MLP's activation module, but block {index} of {name} "
                f"holds {len(found)} activation modules; set config.hidden_act to a name (e.g. 'gelu'), not a "
                "function, so that the activation is a module."
            )
        activations.append(found[0])
    return activations


@contextmanager
def attnlrp_rules(adapter: ModelAdapter, attention_rule: str = "attnlrp") -> Iterator[None]:
    """The model's backward becomes AttnLRP's for the duration; its forward values stay bitwise its own.

    Forward hooks, removed on exit (also on error), on: every ``nn.LayerNorm`` of the model
    (std constant), each block's activation module (identity rule), and each attention layer's
    query, key and value projections (``"attnlrp"``: gradients ``/4, /4, /2``; ``"cp"``: no
    gradient through query and key, the value's unchanged). Nothing else is touched: no
    parameter, attention implementation or registry entry.

    Parameters
    ----------
    adapter : ModelAdapter
        The model's adapter; its blocks must be pre-norm ones (``adapter.pre_norm_blocks``).
    attention_rule : {"attnlrp", "cp"}, default "attnlrp"
        AttnLRP's uniform and softmax rules, or CP-LRP's attention-as-constant.
    """
    if attention_rule not in ATTENTION_RULES:
        raise ValueError(f"attention_rule must be one of {ATTENTION_RULES}, got {attention_rule!r}.")
    activations = _check_rule_sites(adapter)
    factors = {"attnlrp": (0.25, 0.25, 0.5), "cp": (0.0, 0.0, 1.0)}[attention_rule]

    def layer_norm(module: nn.LayerNorm, args: tuple, output: Tensor) -> Tensor:
        weight = None if module.weight is None else module.weight.detach()
        return _ConstantStdLayerNorm.apply(args[0], output.detach(), weight, module.eps)

    def identity(_module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return _IdentityRule.apply(args[0], output.detach())

    def scale(factor: float):
        def hook(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
            # CP-LRP: the attention probabilities are constants (lxt's stop_gradient on q and k).
            return output.detach() if factor == 0.0 else _ScaleGradient.apply(output, factor)

        return hook

    handles = []
    try:
        for module in adapter.model.modules():
            if isinstance(module, nn.LayerNorm):
                if len(module.normalized_shape) != 1:
                    raise TypeError(f"AttnLRP expects LayerNorms over the last axis, got {module}.")
                handles.append(module.register_forward_hook(layer_norm))
        handles.extend(module.register_forward_hook(identity) for module in activations)
        for site in adapter.attention_sites():
            for projection, factor in zip((site.query, site.key, site.value), factors, strict=True):
                if factor != 1.0:
                    handles.append(projection.register_forward_hook(scale(factor)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class AttnLRP(_GradientAttribution):
    r"""AttnLRP (Achtibat et al., ICML 2024), as the authors' ``lxt`` (efficient, Gradient x Input) computes it.

    One forward and one backward pass with AttnLRP's rules as the backward of each operation (the
    model's forward values are its own); the relevance of token ``t`` is

    .. math:: R_t = \sum_d h^{(0)}_{t,d} \, \tilde\partial S / \partial h^{(0)}_{t,d},

    with ``h^(0)`` `(batch, num_tokens, hidden)` the tokens entering the first Transformer block
    (ViT: patch embeddings and CLS token *plus* position embeddings; DINOv2: also the register
    tokens) and ``\tilde\partial`` the modified gradient. This tensor is where the patches become
    tokens: below it there is one linear map per patch (the patch embedding), so its relevance is
    the patch's, and the CLS token and position embeddings keep theirs (the special tokens' entries).
    ``S`` is the explained scalar of the package's gradient methods (:class:`ExplainedForward`):
    the target logit of a classifier, ``<e(x), r> / ||r||`` of the CLS embedding of a model without
    labels. Rules (``g``: modified gradient at an operation's output, ``D``: hidden size):

    - Linear layers, the classifier, residual additions: epsilon rule with ``eps -> 0``, i.e. the
      plain gradient (``R_in = x * W^T g``); biases absorb their share.
    - LayerNorm ``y = (x - mean x) / std(x) * w + b``: identity rule on the normalisation, ``std``
      treated as a constant: ``g_x = h - mean_D(h)``, ``h = g * w / std(x)``.
    - GELU: identity rule ``R_in = R_out``, backward ``g_x = g * GELU(x) / (x + 1e-10)``.
    - softmax ``s = softmax(x)``: AttnLRP's rule ``R_i = x_i (R^out_i - s_i sum_j R^out_j)``, which is
      exactly gradient x input: the backward is unchanged.
    - ``q k^T`` and ``A v``: uniform rule (each operand gets half the product's relevance): the
      gradients reaching ``q`` and ``k`` are divided by 4, the one reaching ``v`` by 2.

    With ``attention_rule="cp"`` the attention probabilities are constants instead (CP-LRP, Ali et
    al. 2022; lxt's choice inside the attention of torchvision's ViT): no gradient through ``q`` and
    ``k``, the full one through ``v``.

    Conservation: every rule above conserves relevance except where a term is absorbed: biases
    (``b * dS/db``, incl. LayerNorm shifts) and, for ``"attnlrp"``, the softmax rule, which passes
    on ``sum_i (x_i - sum_j s_j x_j) R^out_i`` instead of ``sum_i R^out_i`` per row. So
    ``sum_t R_t = S`` exactly for a bias-free model under ``"cp"``; otherwise the difference is
    those absorbed terms.

    Parameters
    ----------
    model : nn.Module
        ``ViTModel`` / ``ViTForImageClassification`` (DINO checkpoints included), DeiT, DINOv2 (with
        or without registers, GELU MLP) or ``ViTMAEModel``; others raise a TypeError. The model is
        left as found: the rules live in forward hooks removed at the end of the call (also on error).

    Options
    -------
    attention_rule : {"attnlrp", "cp"}, default "attnlrp"
        AttnLRP's rules inside the attention, or CP-LRP's.

    ``token_relevance`` gives signed `(batch_size, num_tokens)` float32 relevance; ``target`` is the
    class for a classifier (default: the predicted one) and must be None for a model without labels.
    ``attribute`` spreads each patch token's relevance uniformly over its pixels (the package's
    convention); the special tokens' relevance (CLS, registers, their position embeddings) is not
    in the pixel map.

    Notes
    -----
    Deviations from lxt:

    - lxt patches classes and functions of the ``transformers`` module globally (until the process
      ends); here forward hooks on the model's own modules apply the rules for one call.
    - lxt re-implements LayerNorm's forward (``(x - mean) / std * w + b``); here the forward is the
      model's own ``F.layer_norm`` (identical up to float rounding) and only the backward is lxt's.
    - lxt explains pixels (Gradient x Input at ``pixel_values``, with zennit's Gamma rule on the
      patch convolution and linear layers for torchvision ViTs); this class reports the tokens
      entering the first block, where the epsilon rule of the patch embedding would only spread each
      token's relevance over its pixels and its conv bias.
    - lxt's torchvision ViT map uses CP-LRP inside the attention; its BERT and LLM maps use AttnLRP's.
      The default here is AttnLRP's (the paper's method); CP-LRP is ``attention_rule="cp"``.
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"attention_rule": "attnlrp"})

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        _check_rule_sites(self._adapter)

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType, *, attention_rule: str) -> Tensor:
        if attention_rule not in ATTENTION_RULES:
            raise ValueError(f"attention_rule must be one of {ATTENTION_RULES}, got {attention_rule!r}.")
        explained = self._explained(prepared, target)
        targets = self._targets(explained, prepared, target)
        entering: list[Tensor] = []

        def first_block_input(_module: nn.Module, args: tuple) -> tuple:
            # A leaf of the same value: the backward stops here, where the token relevance is read.
            tokens = args[0].detach().requires_grad_(True)
            entering.append(tokens)
            return (tokens, *args[1:])

        handle = self._adapter.transformer_blocks()[0].register_forward_pre_hook(first_block_input)
        try:
            with evaluation_mode(self.model), torch.enable_grad(), attnlrp_rules(self._adapter, attention_rule):
                scalar = self._scalar(explained(prepared.pixel_values), targets)
                (gradient,) = torch.autograd.grad(scalar.sum(), entering)
        finally:
            handle.remove()
        relevance = (entering[0].detach() * gradient).sum(dim=-1).float()
        if not bool(torch.isfinite(relevance).all()):
            raise ValueError(
                "AttnLRP relevance is not finite: the model's activations overflowed its dtype. Check the input's "
                "scaling (use the model's image processor), or run the model in float32."
            )
        return self._warn_if_vanishing(relevance)

    @classmethod
    def get_name(cls) -> str:
        return "AttnLRP"
