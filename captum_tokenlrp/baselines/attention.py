"""Attention-only baselines: one layer's raw attention and Attention Rollout, for vision and text models.

Both read the attention probabilities the way every method of the package reads them (the
recorder of :mod:`captum_tokenlrp._core.capture`, during one forward pass), so they and
:class:`~captum_tokenlrp.TokenRelevanceLRP` are compared on exactly the same attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._core.base import TokenAttribution
from .._core.capture import LayerProjections
from .._core.inputs import Prepared
from .._core.propagation import propagate
from .._utils.validation import TargetType

__all__ = ["AttentionRollout", "RawAttention", "mass_threshold_mask"]


def _check_reduction(head_fusion: object, allow_none: bool) -> None:
    allowed = ["mean", "max", "min"] + ([None] if allow_none else [])
    if head_fusion not in allowed:
        hint = "" if allow_none else " For one map per head use token_relevance(..., head_fusion=None)."
        raise ValueError(f"Unknown head_fusion {head_fusion!r}: head_fusion must be one of {allowed}.{hint}")


def _reduce_heads(tensor: Tensor, how: str, dim: int = 1) -> Tensor:
    if how == "mean":
        return tensor.mean(dim=dim)
    return tensor.amax(dim=dim) if how == "max" else tensor.amin(dim=dim)


def mass_threshold_mask(relevance: Tensor, fraction: float) -> Tensor:
    """Keep the largest entries that together hold ``fraction`` of the total (DINO's threshold).

    Entries are sorted in decreasing order and kept until their cumulative share reaches
    ``fraction``; the entry that crosses it is kept too.

    Parameters
    ----------
    relevance : Tensor
        Non-negative, `(..., num_entries)`.
    fraction : float
        In (0, 1].

    Returns
    -------
    Tensor
        Boolean mask of the same shape.
    """
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"threshold must be a fraction of mass in (0, 1], got {fraction!r}.")
    ordered, order = relevance.sort(dim=-1, descending=True)
    total = ordered.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(ordered.dtype).tiny)
    share_before = (ordered.cumsum(dim=-1) - ordered) / total
    keep_sorted = share_before < fraction
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


class RawAttention(TokenAttribution):
    """One layer's attention row of the explained token (the last layer by default): DINO's attention map.

    ``token_relevance`` returns, for each head, the attention probabilities
    ``w_{t j}`` of output token ``t`` over all input tokens ``j`` in the layer read;
    fused by mean, max or min over heads (max and min renormalised to the start's total).
    ``t`` is where the model's output is read (CLS of a vision model; the first token of a text
    encoder, the last real token of a decoder), or ``target`` / ``initial_relevance`` as in
    :class:`~captum_tokenlrp.TokenRelevanceLRP`: with a distribution as start (e.g. a text model's
    ``initial_relevance="mean"``) the map is the start-weighted mean of the rows. Each map sums to
    the start's total (softmax rows); a text batch's padding gets 0. Cost: one forward pass.

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace vision or text Transformer.
    layer : int, default -1
        The layer read, 0 nearest the input; negative counts from the output, as in Python.
    tokenizer : tokenizer or processor, optional
        As in :class:`~captum_tokenlrp.TokenAttribution`.

    Options
    -------
    head_fusion : {"mean", "max", "min"} or None, default "mean"
        ``None`` gives one map per head, `(batch_size, num_heads, num_tokens)` (not for
        ``attribute``, which returns one map per input).
    threshold : float, optional
        DINO's mask (vision models): keep the patch tokens holding this fraction of the patches'
        mass (per map) and zero the other patches; special tokens are left as they are.
    initial_relevance : Tensor or {"first", "last", "mean"}, optional
        The start, as in :meth:`TokenRelevanceLRP.token_relevance` (named starts: text models).

    ``target`` is the output token for a model without a head (default: the read-out token); on a
    classifier the map starts where its head reads and does not depend on the class.
    """

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"head_fusion": "mean", "threshold": None, "initial_relevance": None}
    )

    def __init__(self, model: nn.Module, layer: int = -1, *, tokenizer: Any = None) -> None:
        super().__init__(model, tokenizer=tokenizer)
        count = len(self.attention_sites)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int (0 nearest the input, -1 the last), got {type(layer).__name__}.")
        if not -count <= layer < count:
            raise ValueError(f"layer {layer} is out of range: {type(model).__name__} has {count} attention layers.")
        #: The layer read, 0 nearest the input.
        self.layer = layer % count

    def _relevance_and_start(
        self, prepared: Prepared, target: TargetType, options: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor]:
        head_fusion, threshold = options["head_fusion"], options["threshold"]
        _check_reduction(head_fusion, allow_none=True)
        if threshold is not None and self.modality != "image":
            raise ValueError(
                f"threshold keeps the image patches holding a share of the mass; {type(self.model).__name__} is a "
                f"{self.modality} model. Call without threshold."
            )
        explicit = self._check_start(prepared, target, options["initial_relevance"])
        site = self.attention_sites[self.layer]
        layers = self._record(prepared, [site], lambda layer: layer.state().attention)
        start = self._start(prepared, explicit)
        rows = torch.einsum("bn,bhnm->bhm", start, layers[0])
        if prepared.token_mask is not None:
            # Real queries never attend to padding (probability exactly 0); the mask makes it hold whatever the
            # model put in the padding queries' rows, which a zero start then never reads.
            rows = rows * prepared.token_mask[:, None]
        rows = self._check_finite(rows, layers, prepared)
        if head_fusion is not None:
            rows = _reduce_heads(rows, head_fusion)
            if head_fusion != "mean":
                rows = rows * (start.sum(dim=-1, keepdim=True) / rows.sum(dim=-1, keepdim=True))
        if threshold is not None:
            patches = prepared.layout.patch_slice
            rows = rows.clone()
            rows[..., patches] *= mass_threshold_mask(rows[..., patches], threshold)
        return rows, start

    def _check_attribute_options(self, options: Mapping[str, Any]) -> None:
        _check_reduction(options["head_fusion"], allow_none=False)

    def has_convergence_delta(self) -> bool:
        """True: each map sums to the start's total (softmax rows); the delta is ~0 (without ``threshold``,
        which drops patches' mass on purpose: the delta is then the mass dropped)."""
        return True

    @classmethod
    def get_name(cls) -> str:
        return "Raw Attention"


class AttentionRollout(TokenAttribution):
    r"""Attention Rollout (Abnar & Zuidema 2020), with head fusion and discard ratio as in vit-explain.

    In every layer the heads' attention is fused (mean, max or min), optionally
    the smallest ``discard_ratio`` of its entries are set to zero *per sample*
    (the first-to-first, CLS-to-CLS entry is never discarded), the residual is added and rows
    are renormalised, ``A_hat = (A + I)`` row-normalised; the map is the start's
    row of ``A_hat_L ... A_hat_1`` (the product taken from the output side). With mean fusion
    and no discard this is rule (i) of :class:`~captum_tokenlrp.TokenRelevanceLRP`. The same for
    vision and text models: a text batch's padding gets 0 (no real token attends to it), and the
    start is the LRP's (``initial_relevance``, named starts for text).

    **Not vit-explain's exact output for max/min fusion or a discard ratio > 0.**
    vit-explain (jacobgil/vit-explain, ``vit_rollout.py``) divides by ``a.sum(dim=-1)``
    without ``keepdim`` (its issue #16), which broadcasts the row sums along the wrong axis,
    so its matrices are divided column-wise: rows do not sum to 1 and relevance is not
    conserved. With mean fusion and no discard the rows of ``(A + I) / 2`` already sum to 1
    and both agree; otherwise its maps differ from these (on a seeded random-init DINO
    ViT-S/16, patch maps max-normalised: 0.013-0.016 for max or min fusion, up to 0.067 for max
    fusion with ``discard_ratio=0.9``; ``tests/test_baselines.py`` keeps the literal loop). This class implements the
    row-normalised rollout the paper describes, which conserves relevance.

    Options
    -------
    head_fusion : {"mean", "max", "min"}, default "mean"
        How heads are fused in each layer, before the residual is added.
    discard_ratio : float in [0, 1), default 0
        Fraction of each sample's fused attention entries (lowest first) set to zero; a text
        batch's padding entries (already 0) count among them.
    initial_relevance : Tensor or {"first", "last", "mean"}, optional
        The start, as in :meth:`TokenRelevanceLRP.token_relevance` (named starts: text models).

    ``token_relevance`` returns `(batch_size, num_tokens)`, each row summing to the start's total.
    """

    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"head_fusion": "mean", "discard_ratio": 0.0, "initial_relevance": None}
    )

    def _relevance_and_start(
        self, prepared: Prepared, target: TargetType, options: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor]:
        head_fusion, discard_ratio = options["head_fusion"], options["discard_ratio"]
        _check_reduction(head_fusion, allow_none=False)
        if not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}.")
        explicit = self._check_start(prepared, target, options["initial_relevance"])

        def rollout_step(layer: LayerProjections) -> Tensor:
            # Fused here, in the forward pass: only one (batch, N, N) matrix per layer stays alive.
            fused = _reduce_heads(layer.state().attention, head_fusion)
            if discard_ratio > 0:
                fused = _discard_lowest(fused, discard_ratio)
            fused.diagonal(dim1=-2, dim2=-1).add_(1.0)
            return fused.div_(fused.sum(dim=-1, keepdim=True))

        layers = self._record(prepared, self.attention_sites, rollout_step)
        start = self._start(prepared, explicit)
        return self._check_finite(propagate(start, layers, "mean"), layers, prepared), start

    def has_convergence_delta(self) -> bool:
        """True: rollout conserves the start's total; the delta is ~0 up to float32 rounding."""
        return True

    @classmethod
    def get_name(cls) -> str:
        return "Attention Rollout"


def _discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the lowest ``ratio`` of each sample's entries, sparing the CLS-to-CLS entry."""
    batch, tokens, _ = fused.shape
    flat = fused.reshape(batch, tokens * tokens).clone()
    count = int(flat.shape[1] * ratio)
    if count == 0:
        return fused
    protected = flat[:, 0].clone()
    lowest = flat.topk(count, dim=-1, largest=False).indices
    flat.scatter_(-1, lowest, 0.0)
    flat[:, 0] = protected
    return flat.reshape(batch, tokens, tokens)
