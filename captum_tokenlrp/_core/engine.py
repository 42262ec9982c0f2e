"""The steps of an attribution as public verbs, for views that run or replay them piece by piece.

An attribution's verbs (``token_relevance``, ``attribute``) run the whole chain at once: prepare
the inputs, one forward pass recording every layer, the layers' redistribution matrices, the
propagation from the start. The explorer app keeps one forward pass's projections and replays any
rule and head mode over them; the LLM view propagates several starts through one pass; the
diagnostics record per-layer statistics. They use this object (``attribution.engine``) instead of
the template's private methods, so the template can change without breaking them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from .._adapters import AttentionSite
from ..rules import TokenRule, get_rule
from .capture import LayerProjections
from .inputs import Prepared
from .propagation import check_head_fusion, propagate, propagate_by_layer, propagate_chains

__all__ = ["Engine", "Propagated", "RelevanceEngine"]

#: How :meth:`RelevanceEngine.propagate` moves the start: to the input (``"final"``), keeping every depth
#: (``"by_layer"``), or one chain per start row (``"chains"``: starts `(batch, S, N)`).
Propagation = Literal["final", "by_layer", "chains"]
_PROPAGATIONS: dict[str, Callable] = {"final": propagate, "by_layer": propagate_by_layer, "chains": propagate_chains}


@dataclass(frozen=True)
class Propagated:
    """A propagation's result and the start it moved (the start a default of the adapter, where none was given)."""

    relevance: Tensor
    start: Tensor


class Engine:
    """One attribution's steps: prepare, record one forward pass, the start, the finiteness check.

    Parameters
    ----------
    attribution : TokenAttribution
        The attribution whose model, adapter, input kind and capture mode the steps use.
    """

    def __init__(self, attribution: Any) -> None:
        # Any: the template (TokenAttribution) builds its engine, so this module cannot import it back.
        self._attribution = attribution

    @property
    def sites(self) -> list[AttentionSite]:
        """The model's attention layers, input side first."""
        return self._attribution.attention_sites

    @property
    def device(self):
        """The device of the model's parameters (the CPU for a model without any)."""
        return self._attribution._device()

    @property
    def blocks(self) -> list:
        """The model's Transformer blocks (attention + MLP), input side first."""
        return self._attribution._adapter.transformer_blocks()

    def prepare(self, inputs: object, additional_forward_args: Any = None) -> Prepared:
        """The validated batch :meth:`record` runs (what ``token_relevance`` prepares from its arguments)."""
        return self._attribution._prepare(inputs, additional_forward_args)

    def record(
        self,
        prepared: Prepared,
        compute: Callable[[LayerProjections], Any] | None = None,
        sites: Sequence[AttentionSite] | None = None,
    ) -> list:
        """One forward pass (no grad, eval mode, the model restored after) keeping ``compute(layer)`` per site.

        ``compute`` None keeps each layer's :class:`LayerProjections` themselves (to replay rules over
        them later); ``sites`` defaults to every attention layer.
        """
        keep = compute if compute is not None else (lambda layer: layer)
        return self._attribution._record(prepared, self.sites if sites is None else list(sites), keep)

    def explicit_start(self, prepared: Prepared, target: Any = None, initial_relevance: Any = None) -> Tensor | None:
        """Before the forward pass: the start ``target`` / ``initial_relevance`` ask for, checked (None: the
        adapter's own, which :meth:`start` gives after the pass)."""
        return self._attribution._check_start(prepared, target, initial_relevance)

    def start(self, prepared: Prepared, explicit: Tensor | None = None) -> Tensor:
        """After the forward pass: ``explicit``, or where the model's output is read, `(batch, num_tokens)`."""
        return self._attribution._start(prepared, explicit)

    def check_finite(self, relevance: Tensor, layers: Sequence[Tensor], prepared: Prepared | None = None) -> Tensor:
        """``relevance``, or the ValueError naming the first layer whose matrix is not finite."""
        return self._attribution._check_finite(relevance, layers, prepared)


class RelevanceEngine(Engine):
    """:class:`Engine` of :class:`~captum_tokenlrp.TokenRelevanceLRP`: layer matrices and the propagation too."""

    def layer_matrix(
        self, head_fusion: str | None = "mean", rule: str | TokenRule | None = None
    ) -> Callable[[LayerProjections], Tensor]:
        """``layer -> redistribution matrix`` the head mode keeps, for ``rule`` where a layer has none set
        (default: the attribution's rule). Serves a live forward pass (:meth:`record`'s ``compute``) and
        projections kept from an earlier one alike."""
        head_fusion = check_head_fusion(head_fusion)
        return self._attribution._layer_matrix(head_fusion, None if rule is None else get_rule(rule))

    def propagate(
        self,
        prepared: Prepared,
        matrices: Sequence[Tensor],
        head_fusion: str | None = "mean",
        *,
        start: Tensor | None = None,
        how: Propagation = "final",
    ) -> Propagated:
        """Move ``start`` (default: the adapter's start) down through ``matrices``, checked for finiteness.

        ``how``: ``"final"`` the map on the input tokens, ``"by_layer"`` every depth (as
        ``token_relevance_by_layer``), ``"chains"`` one map per row of a `(batch, S, N)` start.
        """
        if how not in _PROPAGATIONS:
            raise ValueError(f"how must be one of {sorted(_PROPAGATIONS)}, got {how!r}.")
        head_fusion = check_head_fusion(head_fusion)
        if how != "chains":
            start = self.start(prepared, start)
        elif start is None:
            raise ValueError('how="chains" propagates the rows of a (batch, S, num_tokens) start: pass start=.')
        relevance = _PROPAGATIONS[how](start, matrices, head_fusion)
        return Propagated(self.check_finite(relevance, matrices, prepared), start)
