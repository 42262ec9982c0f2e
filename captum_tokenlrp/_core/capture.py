"""Record every layer's redistribution matrix during one forward pass.

Every path gives the caller the float32 attention probabilities of each recorded layer; they
differ in how the model's own attention runs (``record_layers(..., capture=...)``):

- ``"exact"`` (the default): the model's computation is untouched, its outputs are bitwise its
  own. A layer whose attention runs eagerly in float32 hands over the probabilities it computed
  (captured: the attention function the model calls through transformers'
  ``ALL_ATTENTION_FUNCTIONS`` is wrapped for the call); any other layer (sdpa, flash, half
  precision) is recomputed, see below.
- ``"fast"``: each recorded layer's attention runs once, here: its probabilities are computed in
  float32 from the hooked query and key, handed to the caller's computation, and the layer's
  output is formed from the same probabilities (``probs.to(dtype) @ v``, as the models' eager
  attention does), a group of heads at a time. The model's own kernel (e.g. sdpa) does not run for
  that layer, so nothing is computed twice; the outputs equal the model's own within float32
  rounding (its kernel's, e.g. sdpa's blocked softmax, and ours differ in summation order).
- ``"recompute"``: the model runs its own attention; a hook on the module that owns the
  projections recomputes the probabilities in float32 from ``q`` and ``k`` with the module's own
  scaling once the layer is done (needed where gradients must flow through the model's kernel).

Capture works where the attention module calls the registry with ``(module, query, key, value,
attention_mask, scaling=..., dropout=...)``: ViT, DeiT, DINOv2 (with registers), ViT-MAE, CLIP and
SigLIP vision towers on transformers 4.57 and 5.x, and BEiT on 5.x (its relative position bias
arrives as the additive ``attention_mask``; the hooked bias is used, as in the recomputation).
BEiT on transformers 4.x picks its attention class at construction and never calls the registry:
its layers are recomputed, automatically (a layer the attention function did not serve falls back
to the recomputation, as does one called with a mask, dropout or another scaling). For the call,
the attention modules' configs point ``_attn_implementation`` at a function registered under a
unique name; configs, registry and every hook are restored on exit, also on error.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from ..rules import AttentionState
from .workspace import Workspace, softmax_into


@dataclass(frozen=True)
class LayerProjections:
    """One layer's query, key and value projections, `(batch, N, num_heads * head_dim)` each.

    ``score_bias`` is what the layer adds to the scaled scores before the softmax, broadcastable
    to `(batch, num_heads, N, N)` (BEiT's relative position bias, a text batch's padding), or None.
    ``token_mask`` `(batch, N)` marks the real tokens of a padded text batch (see
    :class:`~captum_tokenlrp.rules.AttentionState`), None where every token is real.
    """

    site: AttentionSite
    query: Tensor
    key: Tensor
    value: Tensor
    score_bias: Tensor | None = None
    token_mask: Tensor | None = None

    @property
    def layer_index(self) -> int:
        """The layer's index, 0 nearest to the input."""
        return self.site.layer_index

    @property
    def num_tokens(self) -> int:
        """Tokens per input, ``N``."""
        return self.query.shape[1]

    @property
    def batch_size(self) -> int:
        """Inputs in the batch."""
        return self.query.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the layer's tensors live."""
        return self.query.device

    @cached_property
    def _per_head(self) -> dict[str, Tensor]:
        """:meth:`_heads`' cache: each projection is split into heads once per layer, however many blocks."""
        return {}

    def _heads(self, name: str, heads: slice, batch: slice = slice(None)) -> Tensor:
        """The selected heads and inputs of projection ``name``, float32 `(inputs, heads, N, head_dim)`.

        The whole projection is copied once into a new, contiguous float32 `(batch, num_heads, N,
        head_dim)` (the query scaled on the way: scaling q (N x d) rather than the scores (N x N)
        saves a pass over the largest tensor); contiguous per-head blocks let the batched matrix
        products run without hidden copies, and the model's own tensors are never written to.
        """
        per_head = self._per_head.get(name)
        if per_head is None:
            projection = getattr(self, name)
            batch_size, tokens, _ = projection.shape
            split = projection.reshape(batch_size, tokens, self.site.num_heads, self.site.head_dim).transpose(1, 2)
            scale = self.site.scaling if name == "query" else 1.0
            per_head = torch.mul(split.float(), scale, out=torch.empty(split.shape, device=projection.device))
            self._per_head[name] = per_head
        return per_head[batch, heads]

    def state(self, heads: slice = slice(None), *, batch: slice = slice(None)) -> AttentionState:
        """The float32 :class:`AttentionState` of the selected heads and inputs (all by default).

        Its tensors are new ones of its own: a computation may keep them or write to them.
        """
        return self._state(heads, batch, None)

    def _state(self, heads: slice, batch: slice, workspace: Workspace | None) -> AttentionState:
        """:meth:`state`, with the N x N tensors in ``workspace``'s reusable buffers where one is given.

        Such a state is for the engine's built-in kernels only (:mod:`.kernels`), which overwrite it
        in place; the next state taken with the same workspace reuses its memory.
        """
        query = self._heads("query", heads, batch)
        key = self._heads("key", heads, batch).transpose(-1, -2)
        bias = self._bias(heads, batch)
        if workspace is None:
            scores = query @ key
            if bias is not None:
                scores.add_(bias)
            # A new tensor of ours: on the CPU the softmax can overwrite it (see below).
            attention = softmax_into(scores, scores) if scores.device.type == "cpu" else torch.softmax(scores, dim=-1)
        else:
            shape = (*query.shape[:-1], key.shape[-1])
            scores = workspace.get("scores", shape, query)
            torch.bmm(_batched(query), _batched(key), out=scores.view(-1, *shape[-2:]))
            if bias is not None:
                scores.add_(bias)
            # On the CPU in place (its softmax reads each row before writing it): the scores are dead once
            # the softmax is taken, and one buffer, not two, stays in cache.
            out = scores if scores.device.type == "cpu" else workspace.get("attention", shape, query)
            attention = softmax_into(scores, out)
        return AttentionState(
            attention=attention,
            values=self._heads("value", heads, batch),
            layer_index=self.site.layer_index,
            token_mask=self._token_mask(batch),
        )

    def _bias(self, heads: slice, batch: slice = slice(None)) -> Tensor | None:
        """The score bias of the selected heads and inputs, float32, `(1 or batch, heads, N, N)`."""
        if self.score_bias is None:
            return None
        bias = self.score_bias.float()
        bias = bias.reshape(-1, *bias.shape[-3:]) if bias.dim() >= 3 else bias.reshape(1, 1, *bias.shape[-2:])
        if bias.shape[0] > 1:
            bias = bias[batch]
        return bias if bias.shape[1] == 1 else bias[:, heads]

    def head_chunks(self, max_elements: int) -> Iterator[AttentionState]:
        """States of consecutive groups of heads whose `(batch, heads, N, N)` stays under ``max_elements``.

        Long sequences then never hold every head's N x N matrices at once (one head at a time when
        even that is larger).
        """
        return self._head_chunks(max_elements, None)

    def _head_chunks(self, max_elements: int, workspace: Workspace | None) -> Iterator[AttentionState]:
        """:meth:`head_chunks`; with a ``workspace``, each state reuses the previous one's buffers
        (see :meth:`_state`): consume it before taking the next."""
        for _inputs, state in self._blocks(max_elements, workspace, split_inputs=False):
            yield state

    def blocks(self, max_elements: int, *, split_inputs: bool = True) -> Iterator[tuple[slice, AttentionState]]:
        """``(inputs, state)`` for blocks of heads and inputs, `(inputs, heads, N, N)` under ``max_elements``.

        Groups of heads of the whole batch, as :meth:`head_chunks`; where one head of the whole
        batch is larger than ``max_elements`` (and ``split_inputs``), the batch is split as well
        (down to one input and one head), so that a block's N x N work stays in the processor's
        cache while a kernel passes over it several times. ``inputs`` is the block's slice of the
        batch, with explicit bounds.
        """
        return self._blocks(max_elements, None, split_inputs=split_inputs)

    def _blocks(
        self, max_elements: int, workspace: Workspace | None, *, split_inputs: bool = True
    ) -> Iterator[tuple[slice, AttentionState]]:
        """:meth:`blocks`, each state's N x N tensors in ``workspace`` where one is given (see :meth:`_state`)."""
        batch, tokens, _ = self.query.shape
        per_input = tokens * tokens
        if not split_inputs or batch * per_input <= max_elements:
            step = max(1, min(self.site.num_heads, max_elements // (batch * per_input)))
            for first in range(0, self.site.num_heads, step):
                yield slice(0, batch), self._state(slice(first, first + step), slice(None), workspace)
            return
        rows = max(1, max_elements // per_input)
        for first in range(0, batch, rows):
            inputs = slice(first, min(batch, first + rows))
            for head in range(self.site.num_heads):
                yield inputs, self._state(slice(head, head + 1), inputs, workspace)

    def _token_mask(self, batch: slice) -> Tensor | None:
        """:attr:`token_mask` of the inputs ``batch``, or None where every token is real."""
        return None if self.token_mask is None else self.token_mask[batch]


def _batched(matrices: Tensor) -> Tensor:
    """`(..., rows, columns)` -> `(groups, rows, columns)` for ``torch.bmm`` (a view where the strides allow)."""
    return matrices.reshape(-1, *matrices.shape[-2:])


@dataclass(frozen=True)
class _CapturedLayer(LayerProjections):
    """A layer whose attention runs here: each :meth:`state` also writes those heads' output.

    ``model_values`` is the value tensor the model handed its attention function, `(batch,
    num_heads, N, head_dim)` in the model's dtype; ``output`` the layer's attention output
    `(batch, num_heads, N, head_dim)`, filled block by block, that the model receives back as
    `(batch, N, num_heads, head_dim)`.
    """

    model_values: Tensor | None = None
    output: Tensor | None = None
    #: ``(head, input)`` pairs whose output ``output`` holds already (bookkeeping on the host, no tensor op).
    done: set[tuple[int, int]] = field(default_factory=set)
    #: ``"exact"``: the float32 probabilities the model's own attention computed, `(batch, num_heads, N, N)`.
    probabilities: Tensor | None = None

    def _state(self, heads: slice, batch: slice, workspace: Workspace | None) -> AttentionState:
        if self.probabilities is not None:
            attention = self.probabilities[batch, heads]
            if workspace is not None:  # the built-in kernels overwrite it: never the model's own tensor
                attention = workspace.get("attention", tuple(attention.shape), attention).copy_(attention)
            values = self._heads("value", heads, batch)
            return AttentionState(attention, values, self.site.layer_index, self._token_mask(batch))
        state = super()._state(heads, batch, workspace)
        # Before returning: a built-in kernel overwrites the probabilities (workspace) in place.
        values = self.model_values[batch, heads]
        attention = state.attention if state.attention.dtype == values.dtype else state.attention.to(values.dtype)
        target = self.output[batch, heads]
        if target.is_contiguous():
            torch.bmm(_batched(attention), _batched(values), out=target.view(-1, *target.shape[-2:]))
        else:
            target.copy_(torch.matmul(attention, values))
        batch_size, num_heads = self.output.shape[0], self.site.num_heads
        self.done.update(itertools.product(range(num_heads)[heads], range(batch_size)[batch]))
        return state

    def complete(self, max_elements: int) -> Tensor:
        """``"fast"``: the full output, computing the heads the caller's computation did not ask for."""
        batch, tokens, _ = self.query.shape
        step = max(1, min(self.site.num_heads, max_elements // (batch * tokens * tokens)))
        missing = [any((head, row) not in self.done for row in range(batch)) for head in range(self.site.num_heads)]
        first = 0
        while first < self.site.num_heads:
            if not missing[first]:
                first += 1
                continue
            last = first
            while last < min(self.site.num_heads, first + step) and missing[last]:
                last += 1
            self.state(slice(first, last))
            first = last
        # The layout the models' own attention functions return.
        return self.output.transpose(1, 2).contiguous()


#: Largest `(batch, heads, N, N)` group of heads the capture computes at once for heads the
#: caller's computation did not ask for (e.g. layers of the raw-attention baseline left unread).
_COMPLETION_ELEMENTS = 2**25
_call_ids = itertools.count()
#: Values of ``record_layers(capture=...)``, the default first.
CAPTURE_MODES = ("exact", "fast", "recompute")


def _registry():
    """transformers' attention-function registry, or None where this release has none."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers without the registry (< 4.48)
        return None
    return ALL_ATTENTION_FUNCTIONS


def _mask_registry():
    """transformers' attention-mask registry (``masking_utils``), or None where this release has none."""
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers without masking_utils (< 4.53)
        return None
    return ALL_MASK_ATTENTION_FUNCTIONS


def _calls_registry(module: nn.Module) -> bool:
    """Whether ``module``'s modeling code looks its attention function up in transformers' registry."""
    return "ALL_ATTENTION_FUNCTIONS" in vars(sys.modules.get(type(module).__module__, sys))


def _own_attention(module: nn.Module, implementation: str | None, registry) -> Callable | None:
    """The attention function ``module`` would call itself under ``implementation``, or None if unknown."""
    if implementation not in (None, "eager") and implementation in registry:
        return registry[implementation]
    # "eager" is each modeling file's own function, not a registry entry.
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


@contextmanager
def _attention_function(sites: Sequence[AttentionSite], capture: Callable) -> Iterator[bool]:
    """Point the sites' attention configs at ``capture`` for the duration; yields whether it did.

    ``capture(module, query, key, value, attention_mask, own, **kwargs)`` serves every attention
    module that reads one of these configs; ``own`` is the function the module would have called.
    Nothing changes (yields False) where the registry is missing or a module's config or own
    attention cannot be found; the configs' ``_attn_implementation`` and the registry are restored
    on exit, also on error.
    """
    registry = _registry()
    configs = {id(site.module): getattr(site.module, "config", None) for site in sites}
    usable = registry is not None and all(
        config is not None and "_attn_implementation_internal" in vars(config) for config in configs.values()
    )
    # Only modules whose modeling code calls the registry: elsewhere (BERT on transformers 4.x) the
    # implementation name also selects mask formats, which another name would silently change.
    usable = usable and all(_calls_registry(site.module) for site in sites)
    own: dict[int, Callable] = {}
    if usable:
        for site in sites:
            function = _own_attention(site.module, configs[id(site.module)]._attn_implementation, registry)
            if function is None:
                usable = False
                break
            own[id(site.module)] = function
    if not usable:
        yield False
        return
    name = f"captum_tokenlrp_capture_{next(_call_ids)}"  # unique: calls may nest or run side by side
    distinct = {id(config): config for config in configs.values()}
    saved = {key: vars(config)["_attn_implementation_internal"] for key, config in distinct.items()}

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask, **kwargs):
        function = own.get(id(module))
        if function is None:  # another module reading the same config: its own implementation
            config_key = id(getattr(module, "config", None))
            function = _own_attention(module, saved.get(config_key), registry)
            if function is None:
                raise RuntimeError(
                    f"{type(module).__name__} called the attention registry during an explanation, but its own "
                    "attention function could not be found; pass a model whose attention modules read "
                    "config._attn_implementation."
                )
            return function(module, query, key, value, attention_mask, **kwargs)
        return capture(module, query, key, value, attention_mask, function, **kwargs)

    masks = _mask_registry()
    try:
        # The instance's own mapping, not transformers' global one: removed below, visible to every model.
        registry[name] = attention
        if masks is not None:
            # Mask creation skips implementations it does not know (no mask at all: no causal or padding
            # mask for text models), so the name builds the masks the model's own implementation builds.
            implementations = {saved_name or "eager" for saved_name in saved.values()}
            own_masks = {masks._global_mapping.get(implementation) for implementation in implementations}
            if len(own_masks) != 1:
                raise ValueError(
                    f"The attention layers use implementations {sorted(implementations)} whose attention masks "
                    "differ; load the model with one attn_implementation (e.g. 'eager' or 'sdpa')."
                )
            own_mask = own_masks.pop()
            if own_mask is not None:  # an implementation without a mask function gets none from the model either
                masks._global_mapping[name] = own_mask
        for config in distinct.values():
            config._attn_implementation_internal = name
        yield True
    finally:
        for key, config in distinct.items():
            config._attn_implementation_internal = saved[key]
        for mapping in (registry, None if masks is None else masks._global_mapping):
            if mapping is not None and name in mapping:
                del mapping[name]


@contextmanager
def record_layers(
    sites: Sequence[AttentionSite], compute: Callable[[LayerProjections], object], *, capture: str = "exact"
) -> Iterator[list]:
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
    capture : {"exact", "fast", "recompute"}, default "exact"
        How the probabilities are obtained (see the module docstring): ``"exact"`` keeps the
        model's outputs bitwise its own (eager float32 layers hand over their probabilities, the
        others are recomputed); ``"fast"`` computes each layer's attention once, here (outputs
        within float32 rounding of the model's own kernel); ``"recompute"`` always recomputes
        (gradients flow through the model's own kernel).

    Yields
    ------
    list
        One entry per site, filled during the forward pass.
    """
    kept: list[Tensor | None] = [None] * len(sites)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    slots: dict[int, tuple[int, AttentionSite, dict]] = {}

    def store(slot: dict[str, Tensor], name: str, copy: bool = False) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            slot[name] = output.detach().clone() if copy else output

        return hook

    def projections(site: AttentionSite, slot: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The layer's hooked query, key and value (taken out of the slot) and its score bias."""
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
        return slot.pop("query"), slot.pop("key"), slot.pop("value"), bias

    def finish(position: int, site: AttentionSite, slot: dict[str, Tensor]) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, _output: object) -> None:
            if slot.pop("captured", False):
                return
            kept[position] = compute(LayerProjections(site, *projections(site, slot)))

        return hook

    def captured(module, query, key, value, attention_mask, own, *, scaling=None, dropout=0.0, **kwargs):
        position, site, slot = slots[id(module)]
        unusual = [
            what
            for what, present in (
                ("dropout", bool(dropout)),
                ("a causal mask", bool(kwargs.get("is_causal"))),
                ("an attention mask", attention_mask is not None and not site.score_bias),
                ("another scaling", scaling is not None and abs(float(scaling) - site.scaling) > 1e-6 * site.scaling),
                ("another layout", tuple(value.shape[1:2]) != (site.num_heads,)),
            )
            if present
        ]
        if unusual or capture == "exact":  # the model's own attention; unusual calls are recomputed by the hook
            output, weights = own(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
            batch, heads, tokens, _ = value.shape
            if (
                unusual
                or weights is None
                or weights.dtype != torch.float32
                or weights.shape != (batch, heads, tokens, tokens)
            ):
                return output, weights
            layer = _CapturedLayer(site, *projections(site, slot), probabilities=weights.detach())
            slot["captured"] = True
            kept[position] = compute(layer)
            return output, weights
        batch, heads, tokens, head_dim = value.shape
        layer = _CapturedLayer(
            site,
            *projections(site, slot),
            model_values=value,
            output=torch.empty(batch, heads, tokens, head_dim, dtype=value.dtype, device=value.device),
        )
        slot["captured"] = True
        kept[position] = compute(layer)
        return layer.complete(_COMPLETION_ELEMENTS), None

    try:
        with ExitStack() as stack:
            for position, site in enumerate(sites):
                slot: dict[str, Tensor] = {}
                slots[id(site.module)] = (position, site, slot)
                for name in ("query", "key", "value"):
                    handles.append(getattr(site, name).register_forward_hook(store(slot, name)))
                # A shared bias: each layer keeps its latest output. A copy, since a model may add into it in
                # place (transformers 4.x BEiT adds the shared bias into the layer's own bias tensor).
                for index, bias_module in enumerate(site.score_bias):
                    handles.append(bias_module.register_forward_hook(store(slot, f"score_bias_{index}", copy=True)))
                handles.append(site.module.register_forward_hook(finish(position, site, slot)))
            if capture not in CAPTURE_MODES:
                raise ValueError(f"capture must be one of {CAPTURE_MODES}, got {capture!r}.")
            if capture != "recompute":
                stack.enter_context(_attention_function(sites, captured))
            yield kept
    finally:
        for handle in handles:
            handle.remove()
