"""Attention sinks and high-norm tokens: the artefacts that make a relevance figure misleading.

Trained vision Transformers often route most of a head's attention to one token that carries
little of the image (an *attention sink*), and some patch tokens, usually in background, leave
late layers with hidden states far larger than the others (*high-norm artefact tokens*; Darcet et
al. 2024, "Vision Transformers Need Registers"). Both pull relevance onto one cell of every map
that passes through them, so a figure should name them rather than let one cell set its colours.

:func:`diagnose` runs the model once (no gradients, eval mode, the model left as found) and
reports, with the thresholds it used:

- a **sink** ``(layer, head, token, share)``: in ``layer``, ``head`` sends on average ``share`` of
  its queries' attention to ``token``, ``share >= sink_share`` (default 0.5: most of it). The
  share is the mean over all query tokens of the attention row's entry for that token, so a
  head that attends to itself or to neighbours is never a sink.
- a **high-norm token** ``(layer, token, norm, ratio)``: the patch token's hidden state after
  block ``layer`` has Euclidean norm ``norm``, ``ratio`` times the median norm of the layer's
  patch tokens, ``ratio >= norm_ratio`` (default 2). Special tokens (CLS, registers) are not
  tested: they are meant to differ from patches.

Attention probabilities come from the same capture as the relevance maps (float32, from the
layer's own query and key), hidden states from forward hooks on the adapter's Transformer blocks,
removed on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ._adapters import TokenLayout, adapter_for
from ._core.base import PreparedInputs, TokenAttribution
from ._core.capture import LayerProjections, record_layers

__all__ = [
    "NORM_RATIO",
    "SINK_SHARE",
    "AttentionSink",
    "Diagnostics",
    "HighNormToken",
    "Recording",
    "diagnose",
    "recording",
    "token_name",
]

#: Default share of a head's attention (mean over its queries) on one token that makes it a sink.
SINK_SHARE = 0.5
#: Default ratio of a patch token's hidden-state norm to its layer's median that makes it high-norm.
NORM_RATIO = 2.0


class AttentionSink(NamedTuple):
    """One head of one layer that sends ``share`` of its queries' attention to ``token``."""

    layer: int
    head: int
    token: int
    share: float


class HighNormToken(NamedTuple):
    """A patch ``token`` whose hidden state after block ``layer`` has ``norm``, ``ratio`` x its layer's median."""

    layer: int
    token: int
    norm: float
    ratio: float


def token_name(token: int, layout: TokenLayout) -> str:
    """A special token's name (``"cls"``, ``"register_0"``) or ``"patch (row, col)"``, for a token of ``layout``."""
    if token < layout.num_special_tokens:
        return layout.special_token_names[token]
    row, col = divmod(token - layout.num_special_tokens, layout.grid[1])
    return f"patch ({row}, {col})"


@dataclass(frozen=True)
class Diagnostics:
    """What :func:`diagnose` found for one image.

    Attributes
    ----------
    sinks : list of AttentionSink
        ``(layer, head, token, share)``, by layer then head; layers and heads count from 0.
    high_norm_tokens : list of HighNormToken
        ``(layer, token, norm, ratio)``, by layer then token.
    layout : TokenLayout
        The image's token layout (to place a token on the patch grid).
    sink_share, norm_ratio : float
        The thresholds used.
    """

    sinks: list[AttentionSink]
    high_norm_tokens: list[HighNormToken]
    layout: TokenLayout
    sink_share: float = SINK_SHARE
    norm_ratio: float = NORM_RATIO

    def sink_cells(self, head: int) -> list[tuple[int, int]]:
        """Patch-grid cells `(row, col)` that are a sink of ``head`` in some layer (special tokens left out)."""
        return sorted({self._cell(s.token) for s in self.sinks if s.head == head} - {None})

    def high_norm_cells(self) -> list[tuple[int, int]]:
        """Patch-grid cells `(row, col)` of the high-norm tokens, in any layer."""
        return sorted({self._cell(t.token) for t in self.high_norm_tokens} - {None})

    def _cell(self, token: int) -> tuple[int, int] | None:
        index = token - self.layout.num_special_tokens
        return None if index < 0 else divmod(index, self.layout.grid[1])

    def summary(self, max_items: int = 4) -> list[str]:
        """One line for the sinks and one for the high-norm tokens (the largest ``max_items`` of each).

        A high-norm token found in several layers is named once, with its layers and its largest ratio.
        """
        lines = []
        if self.sinks:
            ranked = sorted(self.sinks, key=lambda s: -s.share)
            items = [
                f"layer {s.layer} head {s.head} -> {token_name(s.token, self.layout)} ({100 * s.share:.0f} %)"
                for s in ranked[:max_items]
            ]
            more = f"; {len(ranked) - max_items} more" if len(ranked) > max_items else ""
            lines.append(
                f"attention sinks (a head's queries send >= {100 * self.sink_share:.0f} % to one token): "
                + "; ".join(items)
                + more
            )
        if self.high_norm_tokens:
            by_token: dict[int, list[HighNormToken]] = {}
            for entry in self.high_norm_tokens:
                by_token.setdefault(entry.token, []).append(entry)
            ranked_tokens = sorted(by_token.items(), key=lambda item: -max(e.ratio for e in item[1]))
            items = []
            for token, entries in ranked_tokens[:max_items]:
                layers = sorted(e.layer for e in entries)
                span = str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
                if len(layers) > 1 and layers != list(range(layers[0], layers[-1] + 1)):
                    span = ",".join(map(str, layers))
                items.append(f"{token_name(token, self.layout)} (layer {span}, {max(e.ratio for e in entries):.1f}x)")
            more = f"; {len(ranked_tokens) - max_items} more" if len(ranked_tokens) > max_items else ""
            lines.append(
                f"high-norm tokens (hidden-state norm >= {self.norm_ratio:g}x the layer's median): "
                + "; ".join(items)
                + more
            )
        return lines

    def as_arrays(self) -> dict[str, np.ndarray]:
        """For ``numpy.savez``: ``diagnostics_sinks`` `(k, 4)` float64 rows ``layer, head, token, share``;
        ``diagnostics_high_norm`` `(m, 4)` rows ``layer, token, norm, ratio``; ``diagnostics_thresholds``
        ``[sink_share, norm_ratio]``. Empty findings are `(0, 4)` arrays."""
        return {
            "diagnostics_sinks": np.array([tuple(s) for s in self.sinks], dtype=np.float64).reshape(-1, 4),
            "diagnostics_high_norm": np.array([tuple(t) for t in self.high_norm_tokens], dtype=np.float64).reshape(
                -1, 4
            ),
            "diagnostics_thresholds": np.array([self.sink_share, self.norm_ratio], dtype=np.float64),
        }


class _Probe(TokenAttribution):
    """The package's input checks and attention capture, for one forward pass that keeps statistics."""

    def _token_relevance(self, prepared: PreparedInputs, target: Any) -> Tensor:  # pragma: no cover - never called
        raise NotImplementedError


@contextmanager
def _block_norms(blocks: list[nn.Module]) -> Iterator[list[Tensor | None]]:
    """Hooks that keep each block's output token norms `(batch, N)` (float32); removed on exit."""
    kept: list[Tensor | None] = [None] * len(blocks)
    handles = []

    def hook_for(index: int):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            tokens = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(tokens, Tensor) and hasattr(tokens, "last_hidden_state"):
                tokens = tokens.last_hidden_state
            kept[index] = tokens.detach().float().norm(dim=-1)

        return hook

    try:
        for index, block in enumerate(blocks):
            handles.append(block.register_forward_hook(hook_for(index)))
        yield kept
    finally:
        for handle in handles:
            handle.remove()


def _threshold(value: object, name: str, low: float, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    if value <= low or (high is not None and value > high):
        where = f"in ({low:g}, {high:g}]" if high is not None else f"above {low:g}"
        raise ValueError(f"{name} must lie {where}, got {value!r}.")
    return float(value)


def diagnose(
    model: nn.Module,
    pixel_values: Tensor,
    *,
    sink_share: float = SINK_SHARE,
    norm_ratio: float = NORM_RATIO,
    additional_forward_args: Any = None,
) -> Diagnostics:
    """Find the attention sinks and high-norm tokens of one image (one forward pass).

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace vision Transformer (as for :class:`~captum_tokenlrp.TokenRelevanceLRP`).
    pixel_values : Tensor
        `(1, channels, height, width)` (or `(channels, height, width)`): one image, as the processor made it.
    sink_share : float in (0, 1], default 0.5
        A head is a sink in a layer when its queries send on average at least this share of their
        attention to one token.
    norm_ratio : float > 1, default 2.0
        A patch token is high-norm in a layer when its hidden-state norm is at least this many times
        the median over the layer's patch tokens.
    additional_forward_args : optional
        Extra model arguments, as for ``token_relevance`` (e.g. ``{"interpolate_pos_encoding": True}``).

    Returns
    -------
    Diagnostics
        The sinks and high-norm tokens, with the layout and the thresholds.

    See Also
    --------
    recording : the same findings from the forward pass an explanation runs anyway.
    """
    sink_share = _threshold(sink_share, "sink_share", 0.0, 1.0)
    norm_ratio = _threshold(norm_ratio, "norm_ratio", 1.0, None)
    if isinstance(pixel_values, Tensor) and pixel_values.dim() == 3:
        pixel_values = pixel_values[None]
    engine = _Probe(model).engine
    prepared = engine.prepare(pixel_values, additional_forward_args)
    if prepared.pixel_values.shape[0] != 1:
        raise ValueError(
            f"diagnose takes one image, got a batch of {prepared.pixel_values.shape[0]}; "
            f"call it per image, e.g. diagnose(model, pixel_values[i : i + 1])."
        )
    # Per layer only the mean attention each token receives, (batch, heads, N): never the N x N matrices.
    with _block_norms(engine.blocks) as norms:
        received = engine.record(prepared, _received)
    return _findings(received, norms, prepared.layout, sink_share, norm_ratio)


def _received(layer: LayerProjections) -> Tensor:
    """The mean attention each token receives from the layer's queries, `(batch, heads, N)`."""
    with torch.no_grad():  # statistics only, also inside a forward pass that a gradient method differentiates
        return layer.state().attention.mean(dim=-2)


def _findings(
    received: list[Tensor | None],
    norms: list[Tensor | None],
    layout: TokenLayout,
    sink_share: float,
    norm_ratio: float,
    index: int = 0,
) -> Diagnostics:
    """Sinks and high-norm tokens of input ``index`` from the per-layer statistics."""
    sinks = []
    for layer, shares in enumerate(received):
        if shares is None:
            continue
        best, token = shares[index].max(dim=-1)
        for head in range(best.shape[0]):
            if float(best[head]) >= sink_share:
                sinks.append(AttentionSink(layer, head, int(token[head]), float(best[head])))
    high = []
    patches = layout.patch_slice
    for layer, layer_norms in enumerate(norms):
        if layer_norms is None or layer_norms.shape[-1] != layout.num_tokens:
            continue  # a block that did not run, or one that does not output the tokens
        values = layer_norms[index, patches].double()
        median = float(values.median())
        if median <= 0:
            continue
        for position in torch.nonzero(values >= norm_ratio * median).flatten().tolist():
            norm = float(values[position])
            high.append(HighNormToken(layer, layout.num_special_tokens + position, norm, norm / median))
    return Diagnostics(sinks, high, layout, sink_share, norm_ratio)


class Recording:
    """What :func:`recording` kept during the forward passes in its block; :meth:`diagnostics` reads it."""

    def __init__(self, received: list, norms: list, sink_share: float, norm_ratio: float) -> None:
        self._received, self._norms = received, norms
        self._thresholds = (sink_share, norm_ratio)

    def diagnostics(self, layout: TokenLayout, index: int = 0) -> Diagnostics:
        """The findings for input ``index`` of the last forward pass, on ``layout`` (``lrp.token_layout(x)``)."""
        if all(value is None for value in self._received):
            raise RuntimeError("No forward pass ran inside recording(model): run the explanation in the with block.")
        return _findings(self._received, self._norms, layout, *self._thresholds, index=index)


@contextmanager
def recording(
    model: nn.Module, *, sink_share: float = SINK_SHARE, norm_ratio: float = NORM_RATIO
) -> Iterator[Recording]:
    """:func:`diagnose` without a forward pass of its own: watch the forward passes an explanation runs anyway.

    >>> with recording(model) as watched:
    ...     maps = lrp.token_relevance(pixel_values)
    >>> found = watched.diagnostics(lrp.token_layout(pixel_values))

    Hooks on the attention layers' projections (the probabilities are recomputed in float32 from the
    layer's query, key and score bias, as the explanation's own capture does where it recomputes) and on
    the Transformer blocks; all removed on exit, also on error. Thresholds as for :func:`diagnose`.
    """
    sink_share = _threshold(sink_share, "sink_share", 0.0, 1.0)
    norm_ratio = _threshold(norm_ratio, "norm_ratio", 1.0, None)
    adapter = adapter_for(model)
    with _block_norms(adapter.transformer_blocks()) as norms:
        with record_layers(adapter.attention_sites(), _received, capture="recompute") as received:
            yield Recording(received, norms, sink_share, norm_ratio)
