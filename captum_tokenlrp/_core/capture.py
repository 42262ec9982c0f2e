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
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from ..rules import AttentionState
from .workspace import Workspace, softmax_into


@dataclass(frozen=True)
class LayerProjections:
    """One layer's query, key and value projections, `(batch, N, num_heads * head_dim)` each.

    ``score_bias`` is what the layer adds to the scaled scores before the softmax, broadcastable
    to `(batch, num_heads, N, N)` (BEiT's relative position bias), or None.
    """

    site: AttentionSite
    query: Tensor
    key: Tensor
    value: Tensor
    score_bias: Tensor | None = None

    @property
    def layer_index(self) -> int:
        """The layer's index, 0 nearest to the input."""
        return self.site.layer_index

    def _heads(self, projection: Tensor, heads: slice, scale: float = 1.0) -> Tensor:
        """`(batch, N, heads * head_dim)` -> a new, contiguous float32 `(batch, heads, N, head_dim)`.

        One pass that also applies ``scale``; contiguous per-head blocks let the batched
        matrix products below run without hidden copies, and the model's own tensor is
        never written to.
        """
        batch, tokens, _ = projection.shape
        split = projection.reshape(batch, tokens, self.site.num_heads, self.site.head_dim)[:, :, heads]
        out = torch.empty(split.shape[0], split.shape[2], tokens, split.shape[3], device=projection.device)
        return torch.mul(split.transpose(1, 2).float(), scale, out=out)

    def state(self, heads: slice = slice(None), workspace: Workspace | None = None) -> AttentionState:
        """The float32 :class:`AttentionState` of the selected heads (all by default).

        With a ``workspace`` the N x N tensors live in its reusable buffers: such a state is for
        the engine's built-in kernels only (:mod:`.kernels`), which overwrite it in place.
        """
        # Scaling q (N x d) rather than the scores (N x N) saves a pass over the largest tensor.
        query = self._heads(self.query, heads, self.site.scaling)
        key = self._heads(self.key, heads).transpose(-1, -2)
        bias = self._bias(heads)
        if workspace is None:
            scores = query @ key
            attention = torch.softmax(scores if bias is None else scores.add_(bias), dim=-1)
        else:
            shape = (*query.shape[:-1], key.shape[-1])
            scores = torch.matmul(query, key, out=workspace.get("scores", shape, query))
            if bias is not None:
                scores.add_(bias)
            attention = softmax_into(scores, workspace.get("attention", shape, query))
        return AttentionState(
            attention=attention,
            values=self._heads(self.value, heads),
            layer_index=self.site.layer_index,
        )

    def _bias(self, heads: slice) -> Tensor | None:
        """The score bias of the selected heads, float32, `(1 or batch, heads, N, N)`."""
        if self.score_bias is None:
            return None
        bias = self.score_bias.float()
        bias = bias.reshape(-1, *bias.shape[-3:]) if bias.dim() >= 3 else bias.reshape(1, 1, *bias.shape[-2:])
        return bias if bias.shape[1] == 1 else bias[:, heads]

    def head_chunks(self, max_elements: int, workspace: Workspace | None = None) -> Iterator[AttentionState]:
        """States of consecutive groups of heads whose `(batch, heads, N, N)` stays under ``max_elements``.

        Long sequences then never hold every head's N x N matrices at once. With a ``workspace``,
        each state reuses the previous one's buffers: consume it before taking the next.
        """
        batch, tokens, _ = self.query.shape
        per_head = batch * tokens * tokens
        step = max(1, min(self.site.num_heads, max_elements // per_head))
        for first in range(0, self.site.num_heads, step):
            yield self.state(slice(first, first + step), workspace)


@contextmanager
def record_layers(sites: Sequence[AttentionSite], compute: Callable[[LayerProjections], object]) -> Iterator[list]:
    """Hook the model so that one forward fills a list with ``compute(projections)`` for each layer.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention layers to record, input side first.
    compute : callable
        Turns a layer's :class:`LayerProjections` into what the caller keeps (its
        redistribution matrix, its attention, ...); called during the forward pass, so
        only what it returns stays in memory. ``projections.state()`` gives the float32
        attention probabilities and values of every head.

    Yields
    ------
    list
        One entry per site, filled during the forward pass.
    """
    kept: list[Tensor | None] = [None] * len(sites)
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def store(slot: dict[str, Tensor], name: str, copy: bool = False) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            slot[name] = output.detach().clone() if copy else output

        return hook

    def finish(position: int, site: AttentionSite, slot: dict[str, Tensor]) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, _output: object) -> None:
            missing = {"query", "key", "value"} - slot.keys()
            if missing:
                raise RuntimeError(
                    f"Layer {site.layer_index}: the attention module ran without its "
                    f"{sorted(missing)} projection(s); the model's layout is not the one the adapter expects."
                )
            bias = None
            for index, module in enumerate(site.score_bias):
                value = slot.get(f"score_bias_{index}")
                if value is None:
                    raise RuntimeError(
                        f"Layer {site.layer_index}: its score bias {type(module).__name__} did not run before the "
                        "attention finished; the adapter's score_bias does not match the model's forward."
                    )
                bias = value.float() if bias is None else bias + value.float()
            projections = LayerProjections(site, slot.pop("query"), slot.pop("key"), slot.pop("value"), bias)
            kept[position] = compute(projections)

        return hook

    try:
        for position, site in enumerate(sites):
            slot: dict[str, Tensor] = {}
            for name in ("query", "key", "value"):
                handles.append(getattr(site, name).register_forward_hook(store(slot, name)))
            # A shared bias: each layer keeps its latest output. A copy, since a model may add into it in
            # place (transformers 4.x BEiT adds the shared bias into the layer's own bias tensor).
            for index, bias_module in enumerate(site.score_bias):
                handles.append(bias_module.register_forward_hook(store(slot, f"score_bias_{index}", copy=True)))
            handles.append(site.module.register_forward_hook(finish(position, site, slot)))
        yield kept
    finally:
        for handle in handles:
            handle.remove()
