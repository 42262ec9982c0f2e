"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021): LRP relevance of the attention times its gradient,
rolled out over the layers.

The relevance propagation (relprop) follows the authors' code (``modules/layers_ours.py`` and
``baselines/ViT/ViT_LRP.py`` of hila-chefer/Transformer-Explainability), rule by rule:

==================================  ======================================================================
Module                              Relprop (``R`` the relevance of the output, ``safe(a, b)`` below)
==================================  ======================================================================
Linear (no bias in the rule)        alpha = 1, beta = 0: ``S = safe(R, x+ W+^T + x- W-^T)``,
                                    ``R_x = x+ (S W+) + x- (S W-)`` (bias ignored)
LayerNorm, GELU, Softmax, Dropout   identity: ``R_x = R``
residual ``a + b``                  ``R_a = a safe(R, a + b)``, ``R_b`` likewise, then each rescaled so that
                                    ``sum R_a = |sum R_a| / (|sum R_a| + |sum R_b|) * sum R`` (and ``R_b``)
matmul ``Z = X Y``                  ``S = safe(R, Z)``, ``R_X = X (S Y^T)``, ``R_Y = Y (X^T S)``; both halved
                                    for the two attention products (``A v`` and ``q k^T``)
clone (a tensor read twice)         ``R_x = x (safe(R_1, x) + safe(R_2, x))``
CLS pooling                         ``R_x0 = x0 safe(R, x0)``, every other token 0
==================================  ======================================================================

``safe(a, b) = a / (b + 1e-9)`` where ``b != 0``, 0 where ``b == 0`` (the authors' ``safe_divide``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite, ModelAdapter
from .._core.base import PreparedInputs, evaluation_mode
from .._utils.validation import TargetType
from .gradient import _GradientAttribution

__all__ = ["TransformerAttribution"]

#: The stabiliser of the authors' ``safe_divide``.
EPSILON = 1e-9


# ---------------------------------------------------------------------------- the rules, on tensors
def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / (denominator + 1e-9)`` where ``denominator != 0``, else 0 (the authors' ``safe_divide``)."""
    shifted = denominator + EPSILON  # theirs: clamp(min=eps) + clamp(max=eps), which is the same sum
    shifted = torch.where(shifted == 0, torch.full_like(shifted, EPSILON), shifted)
    return numerator / shifted * (denominator != 0)


def linear_relprop(inputs: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """The alpha = 1, beta = 0 rule of a linear map ``inputs @ weight^T`` (its bias takes no relevance).

    Parameters
    ----------
    inputs : Tensor
        `(..., in_features)`.
    weight : Tensor
        `(out_features, in_features)`, or batched `(..., out_features, in_features)`.
    relevance : Tensor
        `(..., out_features)`, the relevance of the outputs.

    Returns
    -------
    Tensor
        `(..., in_features)`: ``x+ (S W+) + x- (S W-)`` with ``S = safe(R, x+ W+^T + x- W-^T)``.
        Its sum equals that of ``relevance`` over the outputs where the denominator is not zero.
    """
    positive_weight, negative_weight = weight.clamp(min=0), weight.clamp(max=0)
    positive_input, negative_input = inputs.clamp(min=0), inputs.clamp(max=0)
    activation = positive_input @ positive_weight.transpose(-1, -2) + negative_input @ negative_weight.transpose(-1, -2)
    scaled = safe_divide(relevance, activation)
    return positive_input * (scaled @ positive_weight) + negative_input * (scaled @ negative_weight)


def add_relprop(first: Tensor, second: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """The residual ``first + second``, `(batch, ...)` each: proportional split, then renormalised per sample.

    Each share is rescaled to carry ``|s_i| / (|s_1| + |s_2|)`` of the sample's total relevance, ``s_i``
    being the share's own sum; the two shares therefore sum to ``relevance``'s total exactly.
    """
    scaled = safe_divide(relevance, first + second)
    shares = (first * scaled, second * scaled)
    dims = tuple(range(1, relevance.dim()))
    sums = [share.sum(dim=dims, keepdim=True) for share in shares]
    total = relevance.sum(dim=dims, keepdim=True)
    magnitude = sums[0].abs() + sums[1].abs()
    return tuple(
        share * safe_divide(safe_divide(part.abs(), magnitude) * total, part)
        for share, part in zip(shares, sums, strict=True)
    )


def matmul_relprop(left: Tensor, right: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """The product ``Z = left @ right``, `(..., n, m) @ (..., m, p)`: ``S = safe(R, Z)``,
    ``R_left = left (S right^T)``, ``R_right = right (left^T S)``; each share sums to ``R``'s total."""
    scaled = safe_divide(relevance, left @ right)
    return left * (scaled @ right.transpose(-1, -2)), right * (left.transpose(-1, -2) @ scaled)


def clone_relprop(inputs: Tensor, *relevances: Tensor) -> Tensor:
    """A tensor read by several branches: ``x * sum_k safe(R_k, x)`` (the sum of the branches' relevance)."""
    return inputs * sum(safe_divide(relevance, inputs) for relevance in relevances)


# ---------------------------------------------------------------------------- the model's modules
@dataclass(frozen=True)
class _Block:
    """The modules of one HF ViT layer the relprop reads, and its attention site."""

    site: AttentionSite
    norm_before: nn.LayerNorm
    norm_after: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear


def _vit_blocks(adapter: ModelAdapter) -> list[_Block]:
    """Each layer's modules, in either HF layout (``mlp.fc1/fc2`` on transformers 5, ``intermediate.dense`` /
    ``output.dense`` on 4.x); a TypeError where the layer is not a ViT layer."""
    blocks = []
    for layer, site in zip(adapter.transformer_blocks(), adapter.attention_sites(), strict=True):
        mlp = getattr(layer, "mlp", None)
        if mlp is not None:
            fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
        else:
            fc1 = getattr(getattr(layer, "intermediate", None), "dense", None)
            fc2 = getattr(getattr(layer, "output", None), "dense", None)
        norms = getattr(layer, "layernorm_before", None), getattr(layer, "layernorm_after", None)
        linears = (site.query, site.key, site.value, site.output, fc1, fc2)
        if not all(isinstance(norm, nn.LayerNorm) for norm in norms) or not all(
            isinstance(linear, nn.Linear) for linear in linears
        ):
            raise TypeError(
                f"TransformerAttribution: layer {site.layer_index} ({type(layer).__name__}) is not a ViT layer "
                "(layernorm_before, query/key/value/output Linears, layernorm_after, a two-Linear MLP)."
            )
        blocks.append(_Block(site, norms[0], norms[1], fc1, fc2))
    return blocks


@contextmanager
def _recording(blocks: Sequence[_Block], final_norm: nn.Module) -> Iterator[tuple[list[dict[str, Tensor]], dict]]:
    """Hook the modules for one forward pass; yields one dict of activations per layer and one for the end.

    Every tensor is kept detached except ``context`` (the output projection's input, whose gradient
    gives the attention's). Every hook is removed on exit, also on error.
    """
    layers: list[dict[str, Tensor]] = [{} for _ in blocks]
    end: dict[str, Tensor] = {}

    def keep(slot: dict, input_name: str | None, output_name: str | None, attached: bool = False):
        def hook(_module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if input_name is not None:
                slot[input_name] = inputs[0] if attached else inputs[0].detach()
            if output_name is not None:
                slot[output_name] = output.detach()

        return hook

    handles = []
    try:
        for slot, block in zip(layers, blocks, strict=True):
            site = block.site
            for module, hook in (
                (block.norm_before, keep(slot, "hidden", "normed")),
                (site.query, keep(slot, None, "query")),
                (site.key, keep(slot, None, "key")),
                (site.value, keep(slot, None, "value")),
                (site.output, keep(slot, "context", "attended", attached=True)),
                (block.norm_after, keep(slot, "mid", "mid_normed")),
                (block.fc2, keep(slot, "activated", "mlp")),
            ):
                handles.append(module.register_forward_hook(hook))
        handles.append(final_norm.register_forward_hook(keep(end, None, "output")))
        yield layers, end
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class _Propagation:
    """What one call computes: per layer (input side first), the attention's relevance ``R_A`` and gradient
    ``dS/dA``, `(batch, heads, N, N)`, and the relevance of the layer's input `(batch, N, hidden)` (None below
    ``start_layer``, and for ``start_layer`` itself, where the relprop stops at the attention); ``start`` is
    the relevance entering the last layer, `(batch, N, hidden)`."""

    attention_relevance: list[Tensor | None]
    attention_gradient: list[Tensor | None]
    input_relevance: list[Tensor | None]
    start: Tensor


class TransformerAttribution(_GradientAttribution):
    """Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021), after the authors' ``transformer_attribution``.

    Full LRP through the ViT (rules in the module docstring) gives each layer's attention relevance
    ``R_A`` `(batch, heads, N, N)`; with the attention's gradient ``dS/dA`` of the explained scalar ``S``,

    ``A_bar = mean_h (dS/dA ⊙ R_A)^+``, and from ``R = I``, ``R <- R + A_bar R`` for the layers
    ``start_layer, ..., L - 1``; the map is CLS's row of ``R``, `(batch, num_tokens)`.

    The relprop starts at the classifier with the one-hot of the target class (the authors'
    ``generate_LRP`` passes ``one_hot_vector`` itself, not multiplied by the logits) and runs
    ``classifier -> CLS pooling -> final LayerNorm -> blocks`` down to ``start_layer``'s attention; per
    block ``add2 -> fc2 -> GELU -> fc1 -> layernorm_after -> clone2 -> add1 -> output projection ->
    A v (halved) -> [R_A] -> softmax -> q k^T (halved) -> q, k, v projections -> layernorm_before -> clone1``.
    Cost: one forward pass with gradient, one backward pass to the attention outputs, and the relprop
    (a few matrix products per Linear, no autograd).

    Parameters
    ----------
    model : nn.Module
        ``ViTForImageClassification`` or ``ViTModel`` (DINO checkpoints included). Other families raise a
        TypeError (use :class:`GenericAttentionExplainability` there).

    Options
    -------
    start_layer : int, default 0
        First layer of the rollout (the authors' ``start_layer``).

    ``token_relevance`` gives `(batch_size, num_tokens)` float32 (CLS first, then the patches; the CLS entry
    is at least 1); ``target`` is the class for a classifier (default: the predicted one) and must be None
    for ``ViTModel``.

    Notes
    -----
    Deviations from the authors' code, and equivalences:

    - Batches: theirs explains one image (``one_hot[0, index]``, ``cam[0]``, and the residual rule
      sums over the whole tensor); here every sample is explained in one batched pass, the residual
      rule's sums are per sample: each map equals theirs on that image alone.
    - The map is CLS's whole row, CLS entry included (as :class:`GenericAttentionExplainability`);
      theirs returns ``rollout[:, 0, 1:]``, the patch entries.
    - HF ViTs have separate query, key and value Linears where timm fuses one ``qkv`` Linear. The rule
      acts per output column, so the fused relprop is exactly the sum of the three (no deviation).
    - ``A`` is recomputed from the hooked ``q`` and ``k`` (``softmax(scaling q k^T)``) and ``dS/dA`` is
      obtained as ``dS/dctx v^T`` from the gradient at the output projection's input, so any attention
      implementation (eager, sdpa) gives the same map and nothing of the model is switched. Theirs reads
      ``A`` and its gradient from an eager timm model.
    - The relprop runs in float32 (float64 for a float64 model), as theirs; the map is returned in float32.
    - Label-free models (``ViTModel``, DINO; theirs explains classifiers only): the explained scalar is
      :class:`ExplainedForward`'s ``S = <e, r> / ||r||`` with ``r = e.detach()``, the CLS embedding. It is
      treated as a one-output head ``w = r / ||r||`` without bias, started with relevance 1, so
      ``R_e = (e+ w+ + e- w-) / sum(e+ w+ + e- w-) = e^2 / ||e||^2``.
    - Their ``generate_LRP`` puts the model in eval mode for good and fills every parameter's ``.grad``;
      here training flags are restored, ``.grad`` is never touched and dropout is off for the call.
    - The rollout is ``ViT_LRP.py``'s ``compute_rollout_attention`` (``A_bar + I``, rows *not*
      normalised), the one their ``relprop`` calls; the explanation generator's namesake, which normalises
      rows, serves their attention-rollout baseline only.
    - The relprop of the layers below ``start_layer``'s attention (not read by the map) is skipped.

    Checked against a port of their code (``tests/reference_chefer_lrp.py``, HF weights with ``q``, ``k``,
    ``v`` fused into ``qkv``): in float64 the maps agree to the float32 rounding of the output (max
    difference 8e-10 on maps peaking at 0.064); in float32, as they run it, within 1e-4 of the peak (both
    divide by near-zero pre-activations, which amplifies float32 rounding).
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"start_layer": 0})

    def __init__(self, model: nn.Module, *, tokenizer: Any = None) -> None:
        super().__init__(model, tokenizer=tokenizer)
        if not self._adapter.vit_layers:
            raise TypeError(
                f"TransformerAttribution supports ViTModel and ViTForImageClassification (DINO ViT checkpoints "
                f"included), got {type(self.model).__name__}. GenericAttentionExplainability explains every "
                "supported family."
            )
        if self._adapter.is_classifier and not isinstance(getattr(self.model, "classifier", None), nn.Linear):
            raise TypeError(
                f"TransformerAttribution needs a Linear classifier, got {type(self.model.classifier).__name__} "
                "(num_labels=0?)."
            )
        self._blocks = _vit_blocks(self._adapter)

    def _check_start_layer(self, start_layer: object) -> int:
        count = len(self._blocks)
        if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < count:
            raise ValueError(
                f"start_layer must be an int in [0, {count}) (layer 0 nearest the input), got {start_layer!r}."
            )
        return start_layer

    def _propagate(self, prepared: PreparedInputs, target: TargetType, start_layer: int = 0) -> _Propagation:
        """One forward and backward pass, then the relprop down to ``start_layer``'s attention."""
        explained = self._explained(prepared, target)
        targets = self._targets(explained, prepared, target)
        pixel_values = prepared.pixel_values.detach().clone().requires_grad_(True)
        final_norm = self._adapter.backbone.layernorm
        with evaluation_mode(self.model), torch.enable_grad(), _recording(self._blocks, final_norm) as (layers, end):
            scalar = self._scalar(explained(pixel_values), targets)
            gradients = torch.autograd.grad(scalar.sum(), [layer["context"] for layer in layers])
        dtype = torch.promote_types(end["output"].dtype, torch.float32)
        count = len(layers)
        attention_relevance: list[Tensor | None] = [None] * count
        attention_gradient: list[Tensor | None] = [None] * count
        input_relevance: list[Tensor | None] = [None] * count
        with torch.no_grad():
            start = relevance = self._start_relevance(end["output"].to(dtype), targets)
            for index in reversed(range(start_layer, count)):
                block = self._blocks[index]
                layer = {name: tensor.detach().to(dtype) for name, tensor in layers[index].items()}
                attention_relevance[index], input_relevance[index], values = self._block_relprop(
                    block, layer, relevance, full=index > start_layer
                )
                relevance = input_relevance[index]
                attention_gradient[index] = _heads(gradients[index].to(dtype), block.site) @ values.transpose(-1, -2)
        return _Propagation(attention_relevance, attention_gradient, input_relevance, start)

    def _start_relevance(self, output: Tensor, targets: Tensor | None) -> Tensor:
        """The relevance of the final LayerNorm's output tokens `(batch, N, hidden)`: the head's relprop, pooled."""
        embedding = output[:, 0]
        if targets is None:  # S = <e, w> with w = e / ||e||: a one-output head, relevance 1
            weight = (embedding / embedding.norm(dim=-1, keepdim=True).clamp_min(1e-12))[:, None]
            pooled = linear_relprop(embedding[:, None], weight, torch.ones_like(embedding[:, :1, None]))[:, 0]
        else:
            classifier = self.model.classifier.weight.to(output.dtype)
            one_hot = torch.nn.functional.one_hot(targets, classifier.shape[0]).to(output.dtype)
            pooled = linear_relprop(embedding, classifier, one_hot)
        relevance = torch.zeros_like(output)
        relevance[:, 0] = embedding * safe_divide(pooled, embedding)  # CLS pooling; the final LayerNorm: identity
        return relevance

    @staticmethod
    def _block_relprop(
        block: _Block, layer: Mapping[str, Tensor], relevance: Tensor, full: bool
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """One block, output to input: ``(R_A, R of the block input or None, v)`` with ``R_A`` and ``v`` per head."""
        site = block.site
        residual, mlp = add_relprop(layer["mid"], layer["mlp"], relevance)
        mlp = linear_relprop(layer["activated"], block.fc2.weight.to(relevance.dtype), mlp)
        mlp = linear_relprop(layer["mid_normed"], block.fc1.weight.to(relevance.dtype), mlp)  # GELU: identity
        relevance = clone_relprop(layer["mid"], residual, mlp)  # layernorm_after: identity
        residual, attended = add_relprop(layer["hidden"], layer["attended"], relevance)
        context = _heads(linear_relprop(layer["context"], site.output.weight.to(relevance.dtype), attended), site)
        query, key, values = (_heads(layer[name], site) for name in ("query", "key", "value"))
        attention = torch.softmax(site.scaling * query @ key.transpose(-1, -2), dim=-1)
        attention_relevance, value_relevance = (share / 2 for share in matmul_relprop(attention, values, context))
        if not full:
            return attention_relevance, None, values
        # softmax: identity; their matmul1 takes the unscaled q and k.
        query_relevance, key_relevance = (
            share / 2 for share in matmul_relprop(query, key.transpose(-1, -2), attention_relevance)
        )
        normed = layer["normed"]
        projected = sum(
            linear_relprop(normed, module.weight.to(relevance.dtype), _merge(share))
            for module, share in (
                (site.query, query_relevance),
                (site.key, key_relevance.transpose(-1, -2)),
                (site.value, value_relevance),
            )
        )
        return attention_relevance, clone_relprop(layer["hidden"], residual, projected), values

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType, *, start_layer: int) -> Tensor:
        start_layer = self._check_start_layer(start_layer)
        propagation = self._propagate(prepared, target, start_layer)
        batch, tokens = prepared.pixel_values.shape[0], prepared.layout.num_tokens
        joint = None
        weighted = []
        for index in range(start_layer, len(self._blocks)):
            gradient, relevance = propagation.attention_gradient[index], propagation.attention_relevance[index]
            weighted.append((gradient * relevance).clamp_min(0).mean(dim=1))
            if joint is None:
                joint = torch.eye(tokens, dtype=gradient.dtype, device=gradient.device).expand(batch, tokens, tokens)
            joint = joint + weighted[-1] @ joint
        start = self._start(prepared, None).to(joint.dtype)  # CLS
        relevance = torch.bmm(start[:, None], joint)[:, 0].float()
        relevance = self._check_finite(relevance, weighted, prepared)
        return self._warn_if_vanishing(relevance, prepared.layout.patch_slice)

    @classmethod
    def get_name(cls) -> str:
        return "Transformer Attribution"


def _heads(tensor: Tensor, site: AttentionSite) -> Tensor:
    """`(batch, N, heads * head_dim)` -> `(batch, heads, N, head_dim)`."""
    batch, tokens, _ = tensor.shape
    return tensor.reshape(batch, tokens, site.num_heads, site.head_dim).transpose(1, 2)


def _merge(tensor: Tensor) -> Tensor:
    """`(batch, heads, N, head_dim)` -> `(batch, N, heads * head_dim)`."""
    batch, heads, tokens, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
