"""TokenTM (Wu, Duan, Kang, Tang & Yan, CVPR 2024): attention weighted by how each block transforms its tokens.

"Token Transformation Matters: Towards Faithful Post-hoc Explanation for Vision Transformer"
(arXiv:2403.14552). Attention rollouts treat the tokens an attention layer mixes as if they were
unchanged; TokenTM also weighs each token by what the block did to it: how much its length grew
and how far its direction turned.

Provenance. The authors' repository could not be found in the stored public code this package
was checked against (searched by name, title and identifiers). The formulas below follow the
paper's description (length factor ``L``, Normalised Exponential Cosine Correlation ``NECC``,
initialisation with the input tokens' lengths, aggregation with gradient-weighted attention), and
the concrete tensor choices follow the one public implementation found, ``transform_TokenTM`` of
the ``decompv`` benchmark (NightMachinery). ``tests/reference_tokentm.py`` ports that function onto a
float64 timm-style ViT and the tests check this class against it. Where the authors' own code
differs from it, this class differs too: it is a documented reconstruction, not a verified port.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._core.base import PreparedInputs, evaluation_mode
from .._core.capture import LayerProjections, record_layers
from .._utils.validation import TargetType
from .gradient import _GradientAttribution

__all__ = ["TokenTM", "block_norms", "transformation_weights"]

#: Added to a token's length before dividing by it (as the public implementation does).
LENGTH_EPS = 1e-8

#: ``(before attention, before MLP)`` LayerNorm names of a pre-norm block, per family:
#: ViT, DeiT, BEiT, ViT-MAE; DINOv2 (with registers); CLIP and SigLIP vision towers.
_NORM_PAIRS = (("layernorm_before", "layernorm_after"), ("norm1", "norm2"), ("layer_norm1", "layer_norm2"))


def block_norms(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The two LayerNorms of a pre-norm Transformer block: the one before attention, the one before the MLP.

    Their inputs are the tokens entering the block and the tokens after the attention's residual
    addition, which is what TokenTM compares.

    Raises
    ------
    TypeError
        If the block has none of the known pairs of names.
    """
    for before, after in _NORM_PAIRS:
        first, second = getattr(block, before, None), getattr(block, after, None)
        if isinstance(first, nn.Module) and isinstance(second, nn.Module):
            return first, second
    known = ", ".join(f"{before}/{after}" for before, after in _NORM_PAIRS)
    raise TypeError(
        f"TokenTM needs the tokens between a block's attention and its MLP, read at the inputs of the block's "
        f"two LayerNorms; {type(block).__name__} has none of the known pairs ({known}). "
        "TokenTM supports pre-norm ViT-style blocks (ViT, DeiT, DINOv2, BEiT, ViT-MAE, CLIP, SigLIP)."
    )


def transformation_weights(before: Tensor, after: Tensor) -> Tensor:
    """TokenTM's transformation weight of every token, ``w_i = L(after_i) / L(before_i) * NECC_i``.

    Parameters
    ----------
    before, after : Tensor
        The tokens before and after a transformation, `(batch, N, hidden)`.

    Returns
    -------
    Tensor
        `(batch, N)`, positive: the length ratio ``||after_i|| / (||before_i|| + 1e-8)`` times
        ``NECC_i = exp(cos(before_i, after_i)) / sum_k exp(cos(before_k, after_k))`` (a softmax over
        the ``N`` tokens of the image, special tokens included).
    """
    ratio = after.norm(dim=-1) / (before.norm(dim=-1) + LENGTH_EPS)
    necc = torch.softmax(F.cosine_similarity(before, after, dim=-1), dim=-1)
    return ratio * necc


class _BlockTokens:
    """Scoped hooks that keep, per block, the tokens entering it, after its attention and leaving it.

    All three `(batch, N, hidden)`, detached float32. Hooks are registered on entry and removed on
    exit, also on error.
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.blocks = list(blocks)
        self.norms = [block_norms(block) for block in self.blocks]  # TypeError before any hook exists
        count = len(self.blocks)
        self.entering: list[Tensor | None] = [None] * count
        self.middle: list[Tensor | None] = [None] * count
        self.leaving: list[Tensor | None] = [None] * count
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _keep_input(self, store: list, index: int):
        def hook(_module: nn.Module, args: tuple) -> None:
            store[index] = args[0].detach().float()

        return hook

    def _keep_output(self, index: int):
        def hook(_module: nn.Module, _args: tuple, output: object) -> None:
            tokens = output if isinstance(output, Tensor) else output[0]
            self.leaving[index] = tokens.detach().float()

        return hook

    def __enter__(self) -> _BlockTokens:
        try:
            for index, (block, (first, second)) in enumerate(zip(self.blocks, self.norms, strict=True)):
                self._handles.append(first.register_forward_pre_hook(self._keep_input(self.entering, index)))
                self._handles.append(second.register_forward_pre_hook(self._keep_input(self.middle, index)))
                self._handles.append(block.register_forward_hook(self._keep_output(index)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def check(self) -> None:
        missing = [
            index
            for index in range(len(self.blocks))
            if self.entering[index] is None or self.middle[index] is None or self.leaving[index] is None
        ]
        if missing:
            raise RuntimeError(
                f"TokenTM: blocks {missing} did not run both LayerNorms during the forward pass; the model's "
                "blocks are not the pre-norm layout TokenTM reads."
            )


class TokenTM(_GradientAttribution):
    """TokenTM (Wu et al., CVPR 2024): gradient-weighted attention times token-transformation weights.

    For block ``l`` (input side first) let ``E`` be the tokens entering it, ``E'`` the tokens after
    the attention's residual addition (the input of the LayerNorm before the MLP) and ``E''`` the
    tokens leaving it, each `(batch, N, hidden)`. With :func:`transformation_weights`
    ``w(X, Y)_i = ||Y_i|| / (||X_i|| + 1e-8) * softmax_i(cos(X_i, Y_i))``:

    - ``W_attn = diag(w(E, E'))`` and ``W_mlp = diag(w(E', E''))``, `(batch, N, N)`;
    - ``A_bar = mean_h A_h`` and ``G = mean_h (dS/dA_h)^+`` (the ReLU per head, then the head
      mean), `(batch, N, N)`, ``A_h`` the attention probabilities and ``S`` the explained scalar
      (the target logit; a label-free model's CLS-embedding score, see
      :class:`~captum_tokenlrp.baselines.ExplainedForward`);
    - ``U_attn = I + (A_bar W_attn) ⊙ G`` and ``U_mlp = I + W_mlp``; ``U_l = U_mlp U_attn``;
    - ``C_0 = diag(||E^0_j||)`` (the lengths of the tokens entering the first block, position
      embeddings and special tokens included) and ``C_l = U_l C_{l-1}``;
    - the map is ``s^T C_L``, `(batch, N)`, ``s`` the start vector where the output is read
      (``e_CLS``: the CLS row of ``C_L``; DINOv2's classifier: CLS and the patch mean, as GAE).

    Every factor is non-negative, so the map is. One forward and one backward pass for the whole
    batch; ``s^T U_L ... U_1`` is accumulated as a row vector (``O(L N^2)`` after the passes,
    where a matrix product over layers is ``O(L N^3)``). ``dS/dA`` is read without switching the
    attention implementation, as in :class:`GenericAttentionExplainability`:
    ``dS/dA_ij = <dS/dctx_i, v_j>`` per head. No parameter's ``.grad`` is touched; the hooks
    (two LayerNorm inputs and the output per block, the attention's projections) live for the call.

    ``token_relevance`` gives `(batch_size, num_tokens)`; ``target`` is the class for a classifier
    (default: the predicted one) and must be None for a model without labels.

    Notes
    -----
    What follows the paper's text but is not checked against the authors' code (not found): the
    choice of ``E'`` (after the residual addition) for the attention's transformation and of the
    block output for the MLP's, the order "head mean, then products" in ``U_attn``, the ReLU on the
    gradient alone, ``eps = 1e-8`` and the NECC softmax over all ``N`` tokens. These are the public
    ``decompv`` implementation's choices, reproduced exactly (``tests/reference_tokentm.py``).
    Deviations from that implementation: the start vector follows this package's convention
    (where the model's output is read) instead of always the CLS row (identical for CLS-read
    models); the attention gradient is the plain autograd gradient of the explained scalar
    (decompv can also run modified backward passes through softmax, LayerNorm and GELU in its
    timm fork; its plain mode is what is reproduced).

    Raises
    ------
    TypeError
        At the call, for a model whose blocks lack the two LayerNorms TokenTM reads (see
        :func:`block_norms`).
    """

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType) -> Tensor:
        blocks = self._adapter.transformer_blocks()
        sites = self.attention_sites
        if len(blocks) != len(sites):
            raise TypeError(
                f"TokenTM pairs each block with its attention layer; {type(self.model).__name__} has "
                f"{len(blocks)} blocks and {len(sites)} attention layers."
            )
        tokens = _BlockTokens(blocks)  # TypeError for an unknown block layout, before any hook
        explained = self._explained(prepared, target)
        targets = self._targets(explained, prepared, target)
        contexts: list[Tensor] = []

        def keep_context(_module: nn.Module, args: tuple) -> None:
            contexts.append(args[0])

        def keep_attention(layer: LayerProjections) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                state = layer.state()
            return state.attention, state.values

        pixel_values = prepared.pixel_values.detach().clone().requires_grad_(True)
        handles = []
        try:
            handles = [site.output.register_forward_pre_hook(keep_context) for site in sites]
            # "recompute": the gradient must flow through the model's own attention kernel.
            recording = record_layers(sites, keep_attention, capture="recompute")
            with evaluation_mode(self.model), torch.enable_grad(), recording as layers, tokens:
                scalar = self._scalar(explained(pixel_values), targets)
                gradients = torch.autograd.grad(scalar.sum(), contexts)
        finally:
            for handle in handles:
                handle.remove()
        tokens.check()
        batch, count = pixel_values.shape[0], prepared.layout.num_tokens
        mixing: list[Tensor] = []  # (A_bar W_attn) ⊙ G per layer, (batch, N, N)
        scaling: list[Tensor] = []  # diagonal of U_mlp, (batch, N)
        for index, (site, (attention, values), gradient) in enumerate(zip(sites, layers, gradients, strict=True)):
            context_gradient = gradient.reshape(batch, count, site.num_heads, site.head_dim).transpose(1, 2).float()
            attention_gradient = (context_gradient @ values.transpose(-1, -2)).clamp_min(0).mean(dim=1)
            w_attn = transformation_weights(tokens.entering[index], tokens.middle[index])
            w_mlp = transformation_weights(tokens.middle[index], tokens.leaving[index])
            mixing.append(attention.mean(dim=1) * w_attn[:, None, :] * attention_gradient)
            scaling.append(1.0 + w_mlp)
        # s^T C_L = s^T U_L ... U_1 C_0, with s^T U_l = (s ⊙ (1 + w_mlp))^T (I + M_l).
        row = self._start(prepared, None).float()
        for matrix, diagonal in zip(reversed(mixing), reversed(scaling), strict=True):
            row = row * diagonal
            row = row + torch.bmm(row[:, None], matrix)[:, 0]
        relevance = row * tokens.entering[0].norm(dim=-1)
        relevance = self._check_finite(relevance, mixing, prepared)
        return self._warn_if_vanishing(relevance, prepared.layout.patch_slice)

    @classmethod
    def get_name(cls) -> str:
        return "TokenTM"
