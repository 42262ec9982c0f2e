"""Record every layer's redistribution matrix during one forward pass, for image and text models.

One recorder, :func:`record_layers`. Every path gives the caller the float32 attention
probabilities of each recorded layer; they differ in how the model's own attention runs
(``capture=...``):

- ``"exact"`` (the default): the model's computation is untouched, its outputs are bitwise its
  own. A layer whose attention runs eagerly in float32 hands over the probabilities it computed
  (the attention function the model calls through transformers' attention interface is served
  here for the call, :mod:`.attention_interface`); any other layer (sdpa, flash, half precision)
  is recomputed: image layers from the hooked projections, see below; text layers with their
  modeling file's eager attention function on the same query, key and mask in float32 (what
  ``attn_implementation="eager"`` would have computed).
- ``"fast"``: each recorded layer's attention runs once, here: its probabilities are computed in
  float32 from the query and key, handed to the caller's computation, and the layer's output is
  formed from the same probabilities (``probs.to(dtype) @ v``, as the models' eager attention
  does), a group of heads at a time. The model's own kernel (e.g. sdpa) does not run for that
  layer, so nothing is computed twice; the outputs equal the model's own within float32 rounding
  (its kernel's, e.g. sdpa's blocked softmax, and ours differ in summation order).
- ``"recompute"``: the model runs its own attention; the probabilities are recomputed in float32
  from ``q`` and ``k`` with the module's own scaling (needed where gradients must flow through the
  model's kernel): image layers by a hook once the layer is done, text layers at the attention call.

Image models: capture works where the attention module calls the interface with ``(module,
query, key, value, attention_mask, scaling=..., dropout=...)``: ViT, DeiT, DINOv2 (with
registers), ViT-MAE, CLIP and SigLIP vision towers on transformers 4.57 and 5.x, and BEiT on 5.x
(its relative position bias arrives as the additive ``attention_mask``; the hooked bias is used,
as in the recomputation). BEiT on transformers 4.x picks its attention class at construction and
never calls the interface: its layers are recomputed, automatically (a layer the attention
function did not serve falls back to the recomputation, as does one called with a mask, dropout
or another scaling).

Text models (``token_mask=`` given) are read at the attention call in every mode: there the
query and key arrive after the rotary position embedding (Llama, Qwen2, Gemma, Mistral), split per
head out of a fused projection (GPT-2), the key and value with their own heads (grouped-query
attention: head ``h`` reads key and value head ``h // (num_heads / num_key_value_heads)``, as the
models' eager attention repeats them), and the mask the model built (causal, padding, sliding
window), which ``"fast"`` and ``"recompute"`` add to the scores. Encoders whose modeling code does
not call the interface (BERT, RoBERTa, DistilBERT on transformers 4.x) are recomputed from the
hooked query, key and value projections with the padding mask of the call, in every mode.

The model's configs keep their attention implementation (transformers 4.x with eager attention
aside, see :mod:`.attention_interface`); the interface entry and every hook are restored on exit,
also on error.
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
from .attention_interface import serve_attention
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
#: Values of ``record_layers(capture=...)``, the default first.
CAPTURE_MODES = ("exact", "fast", "recompute")


#: Attention-function keyword arguments that change the probabilities in a way the recorder does
#: not reproduce (attention sinks): such a call is refused rather than explained wrongly.
_UNSUPPORTED_ARGUMENTS = ("s_aux", "sinks")


def merge_heads(per_head: Tensor) -> Tensor:
    """`(batch, heads, N, head_dim)` -> `(batch, N, heads * head_dim)`."""
    batch, heads, tokens, head_dim = per_head.shape
    return per_head.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def repeat_key_value_heads(states: Tensor, num_heads: int) -> Tensor:
    """`(batch, kv_heads, N, d)` -> `(batch, num_heads, N, d)`: query head ``h`` gets kv head ``h // groups``."""
    kv_heads = states.shape[1]
    if kv_heads == num_heads:
        return states
    if num_heads % kv_heads:
        raise RuntimeError(f"{num_heads} query heads cannot share {kv_heads} key/value heads evenly.")
    return states.repeat_interleave(num_heads // kv_heads, dim=1)


def additive_mask(
    attention_mask: Tensor | None, module: nn.Module, query: Tensor, key: Tensor, kwargs: dict
) -> Tensor | None:
    """The mask the layer applied, as a float32 additive mask broadcastable to `(batch, heads, Nq, Nk)`.

    Boolean masks (True = attend) become 0 / float32 minimum; float masks are taken as they are; no
    mask on a causal layer (sdpa's ``is_causal`` path) becomes the causal mask.
    """
    lowest = torch.finfo(torch.float32).min
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, lowest)
        return mask.float()
    causal = kwargs.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", False)
    queries, keys = query.shape[-2], key.shape[-2]
    if not causal or queries == 1:
        return None
    above = torch.ones(queries, keys, dtype=torch.bool, device=query.device).triu(keys - queries + 1)
    return torch.zeros(queries, keys, device=query.device).masked_fill_(above, lowest)[None, None]


def eager_probabilities(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, kwargs: dict
) -> Tensor:
    """float32 probabilities `(batch, heads, Nq, Nk)` from the module's own eager attention function."""
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise RuntimeError(
            f"{type(module).__module__} has no eager_attention_forward to compute {type(module).__name__}'s "
            "attention probabilities with; load the model with attn_implementation='eager'."
        )
    options = {name: value for name, value in kwargs.items() if name not in ("is_causal", "dropout")}
    mask = additive_mask(attention_mask, module, query, key, kwargs)
    _, weights = eager(module, query.float(), key.float(), value.float(), mask, dropout=0.0, **options)
    return weights.float()


@contextmanager
def record_layers(
    sites: Sequence[AttentionSite],
    compute: Callable[[LayerProjections], object],
    *,
    capture: str = "exact",
    token_mask: Tensor | None = None,
    needs_registry: bool = False,
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
    token_mask : Tensor, optional
        A text batch: `(batch, N)` bool, True for real tokens. Its layers are read where the model
        calls its attention function (after rotary embeddings, per head, key and value heads
        repeated to the query heads) with the mask the model built (causal, padding, sliding
        window), and each state carries ``token_mask``. None (the default): an image model.
    needs_registry : bool, default False
        Text models: refuse (RuntimeError) a layer that ran without calling the attention
        interface, where its projections alone cannot give the attention (rotary embeddings, fused
        projections).

    Yields
    ------
    list
        One entry per site, filled during the forward pass.
    """
    if capture not in CAPTURE_MODES:
        raise ValueError(f"capture must be one of {CAPTURE_MODES}, got {capture!r}.")
    kept: list[object] = [None] * len(sites)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    slots: dict[int, tuple[int, AttentionSite, dict]] = {}
    text = token_mask is not None
    if text:
        lowest = torch.finfo(torch.float32).min
        padding_bias = torch.zeros(token_mask.shape, device=token_mask.device).masked_fill_(~token_mask, lowest)
        padding_bias = padding_bias[:, None, None, :]

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
            if not text:
                kept[position] = compute(LayerProjections(site, *projections(site, slot)))
                return
            if needs_registry or not {"query", "key", "value"} <= slot.keys():
                raise RuntimeError(
                    f"Layer {site.layer_index} ({type(site.module).__name__}) ran without calling transformers' "
                    "attention registry, so its attention (rotary embeddings, fused projections) cannot be read; "
                    "this transformers release or attn_implementation is not supported for this model."
                )
            query, key, value = slot.pop("query"), slot.pop("key"), slot.pop("value")
            kept[position] = compute(LayerProjections(site, query, key, value, padding_bias, token_mask))

        return hook

    def served_fast(position: int, site: AttentionSite, slot: dict, fields: tuple, values: Tensor):
        """``"fast"``: the layer's attention runs here, once; the caller's computation sees the layer, the
        model gets its output `(batch, N, heads, head_dim)` (and no probabilities)."""
        layer = _CapturedLayer(site, *fields, model_values=values, output=values.new_empty(values.shape))
        slot["captured"] = True
        kept[position] = compute(layer)
        return layer.complete(_COMPLETION_ELEMENTS), None

    def captured(module, query, key, value, attention_mask, own, *, scaling=None, dropout=0.0, **kwargs):
        """An image layer's attention call."""
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
        return served_fast(position, site, slot, projections(site, slot), value)

    def captured_text(module, query, key, value, attention_mask, own, **kwargs):
        """A text layer's attention call: query and key as the model scores them, its own mask."""
        position, site, slot = slots[id(module)]
        unsupported = sorted(name for name in _UNSUPPORTED_ARGUMENTS if kwargs.get(name) is not None)
        if unsupported:
            raise ValueError(
                f"Layer {site.layer_index}: the attention was called with {unsupported} (attention sinks), which "
                "the explanation does not reproduce."
            )
        batch, heads, tokens, head_dim = query.shape
        scaling = kwargs.get("scaling")
        # Where the recorder cannot reproduce the call (dropout in training, another scaling, a cache of
        # earlier keys, another head layout), the model's own attention runs and its probabilities are read.
        usual = (
            not kwargs.get("dropout")
            and (scaling is None or abs(float(scaling) - site.scaling) <= 1e-6 * site.scaling)
            and tuple(key.shape[-2:]) == (tokens, head_dim)
            and (heads, head_dim) == (site.num_heads, site.head_dim)
        )
        detached = query.detach(), repeat_key_value_heads(key.detach(), heads)
        if capture == "fast" and usual:
            values = repeat_key_value_heads(value, heads)
            fields = (
                merge_heads(detached[0]),
                merge_heads(detached[1]),
                merge_heads(values.detach()),
                additive_mask(attention_mask, module, query, key, kwargs),
                token_mask,
            )
            return served_fast(position, site, slot, fields, values)
        output, weights = own(module, query, key, value, attention_mask, **kwargs)
        values = merge_heads(repeat_key_value_heads(value.detach(), heads))
        if capture == "recompute" and usual:  # from q and k with the module's scaling and the model's mask
            bias = additive_mask(attention_mask, module, query, key, kwargs)
            layer = LayerProjections(site, merge_heads(detached[0]), merge_heads(detached[1]), values, bias, token_mask)
        else:
            if (
                weights is None
                or weights.dtype != torch.float32
                or tuple(weights.shape) != (batch, heads, tokens, tokens)
            ):
                weights = eager_probabilities(module, detached[0], key.detach(), value.detach(), attention_mask, kwargs)
            layer = _CapturedLayer(
                site,
                merge_heads(detached[0]),
                merge_heads(detached[1]),
                values,
                token_mask=token_mask,
                probabilities=weights.detach(),
            )
        slot["captured"] = True
        kept[position] = compute(layer)
        return output, weights

    try:
        with ExitStack() as stack:
            for position, site in enumerate(sites):
                slot: dict[str, Tensor] = {}
                slots[id(site.module)] = (position, site, slot)
                if not (text and needs_registry):  # fused or rotary projections are read at the call instead
                    for name in ("query", "key", "value"):
                        handles.append(getattr(site, name).register_forward_hook(store(slot, name)))
                # A shared bias: each layer keeps its latest output. A copy, since a model may add into it in
                # place (transformers 4.x BEiT adds the shared bias into the layer's own bias tensor).
                for index, bias_module in enumerate(site.score_bias):
                    handles.append(bias_module.register_forward_hook(store(slot, f"score_bias_{index}", copy=True)))
                handles.append(site.module.register_forward_hook(finish(position, site, slot)))
            # Images under "recompute" need no call served: every layer is recomputed from its projections.
            if text or capture != "recompute":
                stack.enter_context(serve_attention(sites, captured_text if text else captured))
            yield kept
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_text_layers(
    sites: Sequence[AttentionSite],
    compute: Callable[[LayerProjections], object],
    token_mask: Tensor,
    *,
    needs_registry: bool,
) -> Iterator[list]:
    """``record_layers(sites, compute, capture="exact", token_mask=token_mask, needs_registry=...)``.

    A thin wrapper kept for the callers written before :func:`record_layers` served text models
    (the text template records with the model's own attention, ``"exact"``).
    """
    with record_layers(sites, compute, capture="exact", token_mask=token_mask, needs_registry=needs_registry) as kept:
        yield kept
