"""Slow float64 reference, written straight from METHOD.md, sharing no code with the package.

It re-runs the ViT forward from the model's parameters in float64 (embeddings, pre-norm blocks,
exact GELU MLP) and applies the rules with explicit per-sample, per-head loops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DOUBLE = torch.float64


def _param(tensor):
    return tensor.detach().to(DOUBLE)


def _linear(x, module):
    bias = None if module.bias is None else _param(module.bias)
    return F.linear(x, _param(module.weight), bias)


def _layer_norm(x, module):
    return F.layer_norm(x, (x.shape[-1],), _param(module.weight), _param(module.bias), module.eps)


def _split(projection, heads):
    """(batch, N, heads * head_dim) -> (batch, heads, N, head_dim)."""
    b, n, d = projection.shape
    return projection.reshape(b, n, heads, d // heads).transpose(1, 2)


BACKBONES = ("vit", "deit", "dinov2", "dinov2_with_registers")


def _backbone(model):
    for name in BACKBONES:
        if hasattr(model, name):
            return getattr(model, name)
    return model


def attention_projections(model):
    """Per layer (q, k, v) projection modules, for ViT, DeiT and DINOv2 in either layout."""
    backbone = _backbone(model)
    layers = backbone.layers if hasattr(backbone, "layers") else backbone.encoder.layer
    out = []
    for layer in layers:
        att = layer.attention
        out.append(
            (att.q_proj, att.k_proj, att.v_proj)
            if hasattr(att, "q_proj")
            else (att.attention.query, att.attention.key, att.attention.value)
        )
    return out


def _vit_parts(model):
    """(embeddings, layers, per-layer (q, k, v, o, ln_before, ln_after, fc1, fc2)) for both layouts."""
    vit = _backbone(model)
    if hasattr(vit, "layers"):
        blocks = []
        for layer in vit.layers:
            att = layer.attention
            blocks.append(
                (
                    att.q_proj,
                    att.k_proj,
                    att.v_proj,
                    att.o_proj,
                    layer.layernorm_before,
                    layer.layernorm_after,
                    layer.mlp.fc1,
                    layer.mlp.fc2,
                )
            )
    else:
        blocks = []
        for layer in vit.encoder.layer:
            att = layer.attention
            blocks.append(
                (
                    att.attention.query,
                    att.attention.key,
                    att.attention.value,
                    att.output.dense,
                    layer.layernorm_before,
                    layer.layernorm_after,
                    layer.intermediate.dense,
                    layer.output.dense,
                )
            )
    return vit.embeddings, blocks


def per_layer_qkv_float64(model, pixel_values):
    """Run the ViT in float64; return per layer (q, k, v) each of shape (batch, heads, N, head_dim)."""
    embeddings, blocks = _vit_parts(model)
    heads = model.config.num_attention_heads
    x = pixel_values.to(DOUBLE)
    proj = embeddings.patch_embeddings.projection
    patches = F.conv2d(x, _param(proj.weight), _param(proj.bias), stride=proj.stride)
    tokens = patches.flatten(2).transpose(1, 2)
    cls = _param(embeddings.cls_token).expand(tokens.shape[0], -1, -1)
    hidden = torch.cat([cls, tokens], dim=1) + _param(embeddings.position_embeddings)
    out = []
    for q_m, k_m, v_m, o_m, ln1, ln2, fc1, fc2 in blocks:
        normed = _layer_norm(hidden, ln1)
        b, n, d = normed.shape
        q, k, v = (_split(_linear(normed, m), heads) for m in (q_m, k_m, v_m))
        out.append((q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        mixed = (att @ v).transpose(1, 2).reshape(b, n, d)
        hidden = hidden + _linear(mixed, o_m)
        mlp = _linear(F.gelu(_linear(_layer_norm(hidden, ln2), fc1)), fc2)
        hidden = hidden + mlp
    return out


def per_layer_qkv_from_model(model, pixel_values):
    """Per layer (q, k, v) in float64, taken from the model's own float32 projection outputs.

    Isolates the rules from float32 rounding in the model's forward, which a peaked softmax
    amplifies over the layers; everything after the projections is redone in float64.
    """
    blocks = attention_projections(model)
    heads = model.config.num_attention_heads
    outputs = {}
    handles = []
    for index, modules in enumerate(blocks):
        for slot, module in enumerate(modules):
            handles.append(
                module.register_forward_hook(
                    lambda m, args, out, key=(index, slot): outputs.__setitem__(key, out.detach())
                )
            )
    try:
        with torch.no_grad():
            model.eval()
            model(pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    return [
        tuple(_split(outputs[(index, slot)].to(DOUBLE), heads) for slot in range(3)) for index in range(len(blocks))
    ]


def reference_redistribution(q, k, v, rule):
    """M_ij for one sample and one head, straight from the table in METHOD.md (float64)."""
    w = torch.softmax(q @ k.T / math.sqrt(q.shape[1]), dim=-1)
    return reference_redistribution_from_probs(w, v, rule)


def reference_redistribution_from_probs(w, v, rule):
    """M_ij for one sample and one head from the attention probabilities ``w`` (N, N) and values ``v`` (N, d).

    ``z_ij = a_j W_ij``, ``M_ij = z_ij / sum_j' z_ij'``, float64.
    """
    w, v = w.to(DOUBLE), v.to(DOUBLE)
    n = w.shape[0]
    v_mean = v.mean(dim=0)
    a = torch.ones(n, dtype=DOUBLE)
    if rule in ("ii", "iv"):
        a = torch.stack([torch.linalg.norm(v[j] - v_mean) for j in range(n)])
    weight = w.clone()
    if rule in ("iii", "iv"):
        dist = torch.linalg.norm(v.unsqueeze(0) - v.unsqueeze(1), dim=-1)  # dist[i, j] = ||v_j - v_i||
        weight = dist * w
    weight = weight + torch.eye(n, dtype=DOUBLE)
    z = weight * a.unsqueeze(0)  # z_ij = a_j W_ij
    row = z.sum(dim=1, keepdim=True)
    return z / row


def reference_relevance(model, pixel_values, rule, head_fusion="mean", start=None, qkv="float64_forward", layers=None):
    """Token relevance in float64; start defaults to e_CLS. Returns (batch, N) or (batch, heads, N).

    rule is a rule name or a list of names, one per layer (input side first).
    qkv="float64_forward" recomputes the whole model in float64; "model_inputs" takes each
    attention layer's float32 input from the model and goes on in float64. ``layers`` may hold
    a previous result of either, to save time.
    """
    if layers is None:
        source = per_layer_qkv_float64 if qkv == "float64_forward" else per_layer_qkv_from_model
        layers = source(model, pixel_values)
    rules = [rule] * len(layers) if isinstance(rule, str) else list(rule)
    batch, heads, n, _ = layers[0][0].shape
    results = []
    for b in range(batch):
        matrices = []  # per layer: (heads, N, N)
        for (q, k, v), layer_rule in zip(layers, rules, strict=True):
            matrices.append(
                torch.stack([reference_redistribution(q[b, h], k[b, h], v[b, h], layer_rule) for h in range(heads)])
            )
        r0 = torch.zeros(n, dtype=DOUBLE)
        r0[0] = 1.0
        if start is not None:
            r0 = start[b].to(DOUBLE)
        if head_fusion in (None, "per_head_mean"):
            maps = []
            for h in range(heads):
                r = r0.clone()
                for m in reversed(matrices):
                    r = r @ m[h]
                maps.append(r)
            maps = torch.stack(maps)
            results.append(maps.mean(0) if head_fusion == "per_head_mean" else maps)
            continue
        if head_fusion == "last_layer_per_head":
            maps = []
            for h in range(heads):
                r = r0 @ matrices[-1][h]
                for m in reversed(matrices[:-1]):
                    r = r @ m.mean(0)
                maps.append(r)
            results.append(torch.stack(maps))
            continue
        r = r0.clone()
        for m in reversed(matrices):
            if head_fusion == "mean":
                fused = m.mean(0)
            else:
                fused = m.max(0).values if head_fusion == "max" else m.min(0).values
                fused = fused / fused.sum(dim=1, keepdim=True)
            r = r @ fused
        results.append(r)
    return torch.stack(results)
