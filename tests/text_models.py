"""Seeded random-init text models of every supported family, and a float64 reference built from their
own eager attention (``output_attentions=True``) and value projections."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from reference import reference_redistribution_from_probs
from torch import nn

DOUBLE = torch.float64
VOCAB = 120

#: name -> (config class, config kwargs, model class name)
FAMILIES = {
    "bert": (
        "BertConfig",
        dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48),
        "BertModel",
    ),
    "bert_classifier": (
        "BertConfig",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=3),
        "BertForSequenceClassification",
    ),
    "roberta": (
        "RobertaConfig",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, pad_token_id=1),
        "RobertaModel",
    ),
    "distilbert": ("DistilBertConfig", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48), "DistilBertModel"),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0), "GPT2LMHeadModel"),
    "llama": (
        "LlamaConfig",
        dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48),
        "LlamaForCausalLM",
    ),
    "qwen2": (
        "Qwen2Config",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, intermediate_size=48),
        "Qwen2ForCausalLM",
    ),
    "gemma": (
        "GemmaConfig",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=48,
        ),
        "GemmaForCausalLM",
    ),
    "mistral": (
        "MistralConfig",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48),
        "MistralForCausalLM",
    ),
}
DECODERS = {"gpt2", "llama", "qwen2", "gemma", "mistral"}


def build_text_model(name: str, attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """A seeded random-init model of the family ``name``; biases made non-zero so they matter."""
    config_name, kwargs, class_name = FAMILIES[name]
    config = getattr(transformers, config_name)(vocab_size=VOCAB, **kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(transformers, class_name)._from_config(config, attn_implementation=attn_implementation)
        for module in model.modules():  # sharper attention than the 0.02 init, and non-zero biases
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.3)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.1)
    return model.eval()


def token_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def eager_copy(model: nn.Module, dtype: torch.dtype = DOUBLE) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.set_attn_implementation("eager")
    for module in clone.modules():
        if "Sdpa" in type(module).__name__:  # 4.57 encoders pick their attention class at construction
            clone = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="eager")
            clone.load_state_dict(model.state_dict())
            break
    return clone.to(dtype).eval()


def _value_module(model: nn.Module, layer: int) -> tuple[nn.Module, str]:
    base = model.base_model
    if hasattr(base, "encoder"):  # BERT, RoBERTa
        return base.encoder.layer[layer].attention.self.value, "value"
    if hasattr(base, "transformer"):  # DistilBERT
        return base.transformer.layer[layer].attention.v_lin, "value"
    if hasattr(base, "h"):  # GPT-2: the last third of c_attn
        return base.h[layer].attn.c_attn, "gpt2"
    return base.layers[layer].self_attn.v_proj, "value"


def _attention_module(model: nn.Module, layer: int) -> nn.Module:
    base = model.base_model
    if hasattr(base, "encoder"):
        return base.encoder.layer[layer].attention.self
    if hasattr(base, "transformer"):
        return base.transformer.layer[layer].attention
    if hasattr(base, "h"):
        return base.h[layer].attn
    return base.layers[layer].self_attn


def eager_attention_and_values(
    model: nn.Module, input_ids, attention_mask=None, position_ids=None, dtype=DOUBLE, **forward_kwargs
):
    """Per layer ``(probs (B, H, N, N), values (B, H, N, d))`` from an eager copy's own forward with
    ``output_attentions=True`` (``outputs.attentions``) and hooked value projections; kv heads repeated."""
    eager = eager_copy(model, dtype)
    config = eager.config
    layers = len(eager.base_model.encoder.layer if hasattr(eager.base_model, "encoder") else
                 eager.base_model.transformer.layer if hasattr(eager.base_model, "transformer") else
                 eager.base_model.h if hasattr(eager.base_model, "h") else eager.base_model.layers)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or config.n_head
    values: dict[int, torch.Tensor] = {}
    hooks = []
    for index in range(layers):
        module, kind = _value_module(eager, index)

        def keep(_module, _args, output, index=index, kind=kind):
            if kind == "gpt2":
                output = output.split(output.shape[-1] // 3, dim=-1)[2]
            batch, tokens, width = output.shape
            attention = _attention_module(eager, index)
            head_dim = getattr(attention, "head_dim", None) or getattr(attention, "attention_head_size", None)
            head_dim = head_dim or width // heads
            per_head = output.reshape(batch, tokens, width // head_dim, head_dim).transpose(1, 2)
            values[index] = per_head.repeat_interleave(heads // per_head.shape[1], dim=1)

        hooks.append(module.register_forward_hook(keep))
    kwargs = {"output_attentions": True, **forward_kwargs}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if getattr(config, "is_decoder", False) or hasattr(eager.base_model, "h") or hasattr(eager.base_model, "layers"):
        kwargs["use_cache"] = False
    try:
        with torch.no_grad():
            outputs = eager(input_ids, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return [(outputs.attentions[index].to(DOUBLE), values[index].to(DOUBLE)) for index in range(layers)]


def reference_text_relevance(layers, token_mask, start, rule, head_fusion="mean"):
    """float64 relevance `(B, N)` (fused mean) or `(B, H, N)` (``head_fusion=None``), computed per sentence on
    its real tokens (padding dropped; it gets 0). ``start`` `(B, N)`."""
    batch, heads = layers[0][0].shape[:2]
    tokens = token_mask.shape[1]
    out = torch.zeros((batch, tokens) if head_fusion == "mean" else (batch, heads, tokens), dtype=DOUBLE)
    for b in range(batch):
        real = token_mask[b].nonzero().flatten()
        per_layer = []
        for w, v in layers:
            w_real = w[b][:, real][:, :, real]
            real_values = v[b][:, real]
            matrices = [reference_redistribution_from_probs(w_real[h], real_values[h], rule) for h in range(heads)]
            per_layer.append(torch.stack(matrices))
        r_start = start[b, real].to(DOUBLE)
        if head_fusion == "mean":
            r = r_start
            for m in reversed(per_layer):
                r = r @ m.mean(dim=0)
            out[b, real] = r
        else:
            for h in range(heads):
                r = r_start
                for m in reversed(per_layer):
                    r = r @ m[h]
                out[b, h, real] = r
    return out


def require_family(name: str) -> None:
    _, _, class_name = FAMILIES[name]
    if not hasattr(transformers, class_name):
        pytest.skip(f"{class_name} is not in this transformers release")
