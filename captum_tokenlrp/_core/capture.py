"""Record every layer's redistribution matrix during one forward pass.

Forward hooks on each layer's query, key and value projections keep their
outputs; a hook on the module that owns them fires when the layer is done,
recomputes the attention probabilities in float32 from ``q`` and ``k`` with the
module's own scaling (so the result does not depend on the attention
implementation: eager, sdpa, flash, ...) and hands them to the caller, which
keeps only what it needs (a rule's redistribution matrix, fused or per head;
the raw attention). Hooks are removed on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from ..rules import AttentionState


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
    sites: Sequence[AttentionSite], compute: Callable[[AttentionState], Tensor]
) -> Iterator[list[Tensor | None]]:
    """Hook the model so that one forward fills a list with ``compute(state)`` for each layer.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention layers to record, input side first.
    compute : callable
        Turns a layer's :class:`AttentionState` (``state.layer_index`` says which layer)
        into what the caller keeps, e.g. its redistribution matrix; called during the
        forward pass, so only what it returns stays in memory.

    Yields
    ------
    list
        One entry per site, filled during the forward pass.
    """
    kept: list[Tensor | None] = [None] * len(sites)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def store(slot: dict[str, Tensor], name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            slot[name] = output

        return hook

    def finish(position: int, site: AttentionSite, slot: dict[str, Tensor]) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, _output: object) -> None:
            missing = {"query", "key", "value"} - slot.keys()
            if missing:
                raise RuntimeError(
                    f"Layer {site.layer_index}: the attention module ran without its "
                    f"{sorted(missing)} projection(s); the model's layout is not the one the adapter expects."
                )
            state = attention_state(site, slot.pop("query"), slot.pop("key"), slot.pop("value"))
            kept[position] = compute(state)

        return hook

    try:
        for position, site in enumerate(sites):
            slot: dict[str, Tensor] = {}
            for name in ("query", "key", "value"):
                handles.append(getattr(site, name).register_forward_hook(store(slot, name)))
            handles.append(site.module.register_forward_hook(finish(position, site, slot)))
        yield kept
    finally:
        for handle in handles:
            handle.remove()
