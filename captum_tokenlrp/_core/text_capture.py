"""Record every layer of a text Transformer during one forward pass: probabilities and values per head.

Text models are read where transformers calls a layer's attention function (its attention
registry, as in :mod:`.capture`): there the query and key arrive after the rotary position
embedding (Llama, Qwen2, Gemma, Mistral), split per head out of a fused projection (GPT-2), the
key and value with their own heads (grouped-query attention), and the mask the model built (causal,
padding, sliding window). The model's own attention function runs unchanged, so its outputs stay
bitwise its own; the float32 probabilities are the model's own where it runs eager attention in
float32, and otherwise those of its modeling file's eager attention function on the same query,
key and mask in float32 (what ``attn_implementation="eager"`` would have computed). Key and value
heads are repeated to the query heads as the model's eager attention does (head ``h`` reads key and
value head ``h // (num_heads / num_key_value_heads)``).

Encoders whose modeling code does not call the registry (BERT, RoBERTa, DistilBERT on transformers
4.x) are recomputed from the hooked query, key and value projections with the padding mask of the
call, as vision models are (:func:`.capture.record_layers`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .._adapters import AttentionSite
from .capture import LayerProjections, _attention_function, _CapturedLayer

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
def record_text_layers(
    sites: Sequence[AttentionSite],
    compute: Callable[[LayerProjections], object],
    token_mask: Tensor,
    *,
    needs_registry: bool,
) -> Iterator[list]:
    """Hook a text model so that one forward fills a list with ``compute(layer)`` for each site.

    Parameters
    ----------
    sites : sequence of AttentionSite
        The attention layers, input side first.
    compute : callable
        As in :func:`.capture.record_layers`: the layer's ``state()`` gives the float32
        probabilities and per-head values of every head, with ``token_mask`` attached.
    token_mask : Tensor
        `(batch, N)` bool, True for real tokens.
    needs_registry : bool
        Refuse (RuntimeError) a layer that ran without calling the attention registry, where its
        projections alone cannot give the attention (rotary embeddings, fused projections).

    Yields
    ------
    list
        One entry per site, filled during the forward pass.
    """
    kept: list[object] = [None] * len(sites)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    slots: dict[int, tuple[int, AttentionSite, dict]] = {}
    lowest = torch.finfo(torch.float32).min
    padding_bias = torch.zeros(token_mask.shape, device=token_mask.device).masked_fill_(~token_mask, lowest)[
        :, None, None, :
    ]

    def served(module, query, key, value, attention_mask, own, **kwargs):
        output, weights = own(module, query, key, value, attention_mask, **kwargs)
        position, site, slot = slots[id(module)]
        unsupported = sorted(name for name in _UNSUPPORTED_ARGUMENTS if kwargs.get(name) is not None)
        if unsupported:
            raise ValueError(
                f"Layer {site.layer_index}: the attention was called with {unsupported} (attention sinks), which "
                "the explanation does not reproduce."
            )
        batch, heads, tokens, _ = query.shape
        if weights is None or weights.dtype != torch.float32 or tuple(weights.shape) != (batch, heads, tokens, tokens):
            weights = eager_probabilities(module, query.detach(), key.detach(), value.detach(), attention_mask, kwargs)
        values = repeat_key_value_heads(value.detach(), heads)
        layer = _CapturedLayer(
            site,
            merge_heads(query.detach()),
            merge_heads(repeat_key_value_heads(key.detach(), heads)),
            merge_heads(values),
            token_mask=token_mask,
            probabilities=weights.detach(),
        )
        slot["captured"] = True
        kept[position] = compute(layer)
        return output, weights

    def store(slot: dict, name: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            slot[name] = output

        return hook

    def finish(position: int, site: AttentionSite, slot: dict) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, _output: object) -> None:
            if slot.pop("captured", False):
                return
            if needs_registry or not {"query", "key", "value"} <= slot.keys():
                raise RuntimeError(
                    f"Layer {site.layer_index} ({type(site.module).__name__}) ran without calling transformers' "
                    "attention registry, so its attention (rotary embeddings, fused projections) cannot be read; "
                    "this transformers release or attn_implementation is not supported for this model."
                )
            projections = (slot.pop("query"), slot.pop("key"), slot.pop("value"))
            kept[position] = compute(LayerProjections(site, *projections, padding_bias, token_mask))

        return hook

    try:
        for position, site in enumerate(sites):
            slot: dict = {}
            slots[id(site.module)] = (position, site, slot)
            if not needs_registry:
                for name in ("query", "key", "value"):
                    handles.append(getattr(site, name).register_forward_hook(store(slot, name)))
            handles.append(site.module.register_forward_hook(finish(position, site, slot)))
        with _attention_function(sites, served):
            yield kept
    finally:
        for handle in handles:
            handle.remove()
