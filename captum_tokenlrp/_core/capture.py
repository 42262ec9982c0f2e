"""Record every layer's redistribution matrix during one forward pass.

Forward hooks on each layer's query, key and value projections keep their
outputs; a hook on the module that owns them fires when the layer is done,
recomputes the attention probabilities in float32 from ``q`` and ``k`` with the
module's own scaling (so the result does not depend on the attention
implementation: eager, sdpa, flash, ...), applies the layer's rule and keeps
only what the head mode needs. Hooks are removed on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from ..rules import AttentionState, TokenRule


def _split_heads(projection: Tensor, site: AttentionSite) -> Tensor:
    """`(batch, N, heads * head_dim)` -> `(batch, heads, N, head_dim)` in float32."""
    batch, tokens, _ = projection.shape
    return projection.reshape(batch, tokens, site.num_heads, site.head_dim).transpose(1, 2).float()


def attention_state(site: AttentionSite, query: Tensor, key: Tensor, value: Tensor) -> AttentionState:
    """Build the float32 :class:`AttentionState` of one layer from its projections."""
    # Scaling q (N x d) rather than the scores (N x N) saves a pass over the largest tensor.
    query_heads = _split_heads(query, site) * site.scaling
    key_heads = _split_heads(key, site)
    return AttentionState(
        attention=torch.softmax(query_heads @ key_heads.transpose(-1, -2), dim=-1),
        values=_split_heads(value, site),
        layer_index=site.layer_index,
    )


@contextmanager
def record_layers(
    sites: Sequence[AttentionSite],
    rules: Sequence[TokenRule],
    keep: Callable[[Tensor, int], Tensor],
) -> Iterator[list[Tensor | None]]:
    """Hook the model so that one forward fills a list with each layer's kept matrix.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The model's attention layers, input side first.
    rules : sequence of TokenRule
        The rule for each layer.
    keep : callable
        ``keep(per_head_matrices, layer_index)`` reduces the layer's
        `(batch, heads, N, N)` matrices to what propagation needs.

    Yields
    ------
    list
        One entry per layer, filled during the forward pass.
    """
    kept: list[Tensor | None] = [None] * len(sites)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def store(slot: dict[str, Tensor], name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            slot[name] = output

        return hook

    def finish(site: AttentionSite, rule: TokenRule, slot: dict[str, Tensor]) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, _output: object) -> None:
            missing = {"query", "key", "value"} - slot.keys()
            if missing:
                raise RuntimeError(
                    f"Layer {site.layer_index}: the attention module ran without its "
                    f"{sorted(missing)} projection(s); the model's layout is not the one the adapter expects."
                )
            state = attention_state(site, slot.pop("query"), slot.pop("key"), slot.pop("value"))
            kept[site.layer_index] = keep(rule.redistribution(state), site.layer_index)

        return hook

    try:
        for site, rule in zip(sites, rules, strict=True):
            slot: dict[str, Tensor] = {}
            for name in ("query", "key", "value"):
                handles.append(getattr(site, name).register_forward_hook(store(slot, name)))
            handles.append(site.module.register_forward_hook(finish(site, rule, slot)))
        yield kept
    finally:
        for handle in handles:
            handle.remove()
