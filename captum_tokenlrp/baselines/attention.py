"""Attention-only baselines: the last layer's raw attention and Attention Rollout.

Both read the attention probabilities the same way as :class:`TokenRelevanceLRP`
(recomputed in float32 from the query and key projections during one forward
pass), so all three are compared on exactly the same attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._core.base import PreparedInputs, TokenAttribution
from .._core.capture import LayerProjections
from .._core.propagation import propagate
from .._utils.validation import TargetType

__all__ = ["AttentionRollout", "RawAttention", "mass_threshold_mask"]

def _check_reduction(head_fusion: object, allow_none: bool) -> None:
    allowed = ["mean", "max", "min"] + ([None] if allow_none else [])
    if head_fusion not in allowed:
        raise ValueError(f"Unknown head_fusion {head_fusion!r}; expected one of {allowed}.")


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
    """The last layer's attention row of the explained token (CLS): DINO's attention map.

    ``token_relevance`` returns, for each head, the attention probabilities
    ``w_{t j}`` of output token ``t`` (CLS by default) over all input tokens ``j``
    in the last layer; fused by mean, max or min over heads (max and min
    renormalised to sum to 1). Cost: one forward pass.

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace ViT.

    Options
    -------
    head_fusion : {"mean", "max", "min"} or None, default "mean"
        ``None`` gives one map per head, `(batch_size, num_heads, num_tokens)` (not for
        ``attribute``, which returns one map per input).
    threshold : float, optional
        DINO's mask: keep the patch tokens holding this fraction of the patches' mass (per map)
        and zero the other patches; special tokens are left as they are.

    ``target`` is the output token for a model without a head (default CLS); on a classifier
    the map starts where its head reads and does not depend on the class.
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"head_fusion": "mean", "threshold": None})

    def _token_relevance(
        self, prepared: PreparedInputs, target: TargetType, *, head_fusion: str | None, threshold: float | None
    ) -> Tensor:
        _check_reduction(head_fusion, allow_none=True)
        explicit = self._check_start(prepared, target)
        layers = self._record(prepared, self.attention_sites[-1:], lambda layer: layer.state().attention)
        start = self._start(prepared, explicit)
        rows = self._check_finite(torch.einsum("bn,bhnm->bhm", start, layers[0]), layers, prepared)
        if head_fusion is not None:
            rows = _reduce_heads(rows, head_fusion)
            if head_fusion != "mean":
                rows = rows / rows.sum(dim=-1, keepdim=True)
        if threshold is not None:
            patches = prepared.layout.patch_slice
            rows = rows.clone()
            rows[..., patches] *= mass_threshold_mask(rows[..., patches], threshold)
        return rows

    def _check_attribute_options(self, options: Mapping[str, Any]) -> None:
        _check_reduction(options["head_fusion"], allow_none=False)

    @classmethod
    def get_name(cls) -> str:
        return "Raw Attention"


class AttentionRollout(TokenAttribution):
    """Attention Rollout (Abnar & Zuidema 2020), with head fusion and discard ratio as in vit-explain.

    In every layer the heads' attention is fused (mean, max or min), optionally
    the smallest ``discard_ratio`` of its entries are set to zero *per sample*
    (the CLS-to-CLS entry is never discarded), the residual is added and rows
    are renormalised, ``A_hat = (A + I)`` row-normalised; the map is the
    explained token's row of ``A_hat_L ... A_hat_1``. With mean fusion and no
    discard this is rule (i) of :class:`TokenRelevanceLRP`.

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
        Fraction of each sample's fused attention entries (lowest first) set to zero.

    ``token_relevance`` returns `(batch_size, num_tokens)`, each row summing to 1.
    """

    relevance_options: ClassVar[Mapping[str, Any]] = MappingProxyType({"head_fusion": "mean", "discard_ratio": 0.0})

    def _token_relevance(
        self, prepared: PreparedInputs, target: TargetType, *, head_fusion: str, discard_ratio: float
    ) -> Tensor:
        _check_reduction(head_fusion, allow_none=False)
        if not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}.")
        explicit = self._check_start(prepared, target)

        def rollout_step(layer: LayerProjections) -> Tensor:
            fused = _reduce_heads(layer.state().attention, head_fusion)
            if discard_ratio > 0:
                fused = _discard_lowest(fused, discard_ratio)
            fused.diagonal(dim1=-2, dim2=-1).add_(1.0)
            return fused.div_(fused.sum(dim=-1, keepdim=True))

        layers = self._record(prepared, self.attention_sites, rollout_step)
        return self._check_finite(propagate(self._start(prepared, explicit), layers, "mean"), layers, prepared)

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
