"""An independent TokenTM reference: a float64 timm-style ViT and a port of the public TokenTM code.

The authors' repository was not available; the one public implementation found is
``transform_TokenTM`` of the decompv benchmark (NightMachinery), which runs on timm ViT blocks
(``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``) and reads per block the tokens entering it,
after the attention's residual addition ("post-attn") and leaving it, the attention
probabilities and their gradients. This file re-implements that computation in float64 on a ViT
written out here from a HuggingFace ``ViTModel`` / ``ViTForImageClassification``'s weights (both
transformers layouts), with autograd on the explicit attention probabilities. Nothing here uses
the package's hooks, adapters or capture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weights(model) -> tuple[dict, int, str]:
    """float64 weights under timm-style names, the block count and the model kind."""
    state = {name: value.detach().double() for name, value in model.state_dict().items()}
    prefix = "vit." if any(name.startswith("vit.") for name in state) else ""
    blocks = "layers" if any(name.startswith(f"{prefix}layers.") for name in state) else "encoder.layer"
    layout5 = blocks == "layers"
    names = {
        "q": "attention.q_proj" if layout5 else "attention.attention.query",
        "k": "attention.k_proj" if layout5 else "attention.attention.key",
        "v": "attention.v_proj" if layout5 else "attention.attention.value",
        "proj": "attention.o_proj" if layout5 else "attention.output.dense",
        "fc1": "mlp.fc1" if layout5 else "intermediate.dense",
        "fc2": "mlp.fc2" if layout5 else "output.dense",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
    }
    weights = {
        "cls_token": state[f"{prefix}embeddings.cls_token"],
        "pos_embed": state[f"{prefix}embeddings.position_embeddings"],
        "patch.weight": state[f"{prefix}embeddings.patch_embeddings.projection.weight"],
        "patch.bias": state[f"{prefix}embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state[f"{prefix}layernorm.weight"],
        "norm.bias": state[f"{prefix}layernorm.bias"],
    }
    depth = model.config.num_hidden_layers
    for index in range(depth):
        for short, hf in names.items():
            for kind in ("weight", "bias"):
                weights[f"blocks.{index}.{short}.{kind}"] = state[f"{prefix}{blocks}.{index}.{hf}.{kind}"]
    if "classifier.weight" in state:
        weights["head.weight"], weights["head.bias"] = state["classifier.weight"], state["classifier.bias"]
    return weights, depth, "classifier" if "classifier.weight" in state else "model"


def timm_style_forward(model, images: torch.Tensor) -> dict:
    """float64 forward of the HF ViT's weights, timm-style; keeps what decompv's TokenTM reads.

    Returns ``patches`` (tokens entering block 0), per block ``output``, ``post_attn`` and
    ``attn`` (probabilities `(batch, heads, N, N)`, requiring grad), and ``score`` (the logits, or
    the CLS-embedding score ``<e, e.detach()> / ||e||`` of a model without a head).
    """
    config = model.config
    weights, depth, kind = _weights(model)
    eps, heads = config.layer_norm_eps, config.num_attention_heads
    pixels = images.detach().double().requires_grad_(True)  # the weights are constants: the graph starts here
    x = F.conv2d(pixels, weights["patch.weight"], weights["patch.bias"], stride=config.patch_size)
    x = x.flatten(2).transpose(1, 2)
    cls = weights["cls_token"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + weights["pos_embed"]
    record = {"patches": x.detach()}
    batch, tokens, hidden = x.shape
    head_dim = hidden // heads

    def linear(name, value):
        return F.linear(value, weights[f"{name}.weight"], weights[f"{name}.bias"])

    def split(value):
        return value.reshape(batch, tokens, heads, head_dim).transpose(1, 2)

    for index in range(depth):
        block = f"blocks.{index}"
        h = F.layer_norm(x, (hidden,), weights[f"{block}.norm1.weight"], weights[f"{block}.norm1.bias"], eps)
        q, k, v = (split(linear(f"{block}.{name}", h)) for name in ("q", "k", "v"))
        attn = torch.softmax(q @ k.transpose(-1, -2) * head_dim**-0.5, dim=-1)
        attn.retain_grad()
        context = (attn @ v).transpose(1, 2).reshape(batch, tokens, hidden)
        x = x + linear(f"{block}.proj", context)
        record[f"blocks__{index}__post_attn"] = x.detach()
        h = F.layer_norm(x, (hidden,), weights[f"{block}.norm2.weight"], weights[f"{block}.norm2.bias"], eps)
        x = x + linear(f"{block}.fc2", F.gelu(linear(f"{block}.fc1", h)))
        record[f"blocks__{index}__output"] = x.detach()
        record[f"blocks__{index}__attn__rawattn"] = attn
    x = F.layer_norm(x, (hidden,), weights["norm.weight"], weights["norm.bias"], eps)
    if kind == "classifier":
        record["score"] = linear("head", x[:, 0])
    else:
        embedding = x[:, 0]
        reference = embedding.detach()
        record["score"] = (embedding * reference).sum(-1) / reference.norm(dim=-1)
    record["depth"] = depth
    return record


def decompv_tokentm(record: dict) -> torch.Tensor:
    """decompv's ``transform_TokenTM`` on the record (gradients already in ``attn.grad``): ``C_L`` `(batch, N, N)`."""
    epsilon = 1e-8

    def length(embedding):
        return torch.norm(embedding, p=2, dim=-1)

    def necc(before, after):
        return F.softmax(F.cosine_similarity(before, after, dim=-1), dim=-1)

    def w_compute(before, after):
        return torch.diag_embed(length(after) / (length(before) + epsilon) * necc(before, after))

    c_curr = torch.diag_embed(length(record["patches"]))
    for block_i in range(record["depth"]):
        pre_attn = record["patches"] if block_i == 0 else record[f"blocks__{block_i - 1}__output"]
        post_attn = record[f"blocks__{block_i}__post_attn"]
        out = record[f"blocks__{block_i}__output"]
        identity = torch.eye(c_curr.shape[-1], dtype=c_curr.dtype)[None]
        rawattn = record[f"blocks__{block_i}__attn__rawattn"]
        a = rawattn.detach().mean(dim=1)
        a_grad_relu = rawattn.grad.relu().mean(dim=1)
        t = a @ w_compute(pre_attn, post_attn)  # decompv's mat_combine(current=A, agg=W) = A x W
        u_attn = identity + t * a_grad_relu
        u_mlp = identity + w_compute(post_attn, out)
        u_curr = u_mlp @ u_attn
        c_curr = u_curr @ c_curr
    return c_curr


def tokentm_reference(model, images: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """The TokenTM map `(batch, N)`, float64: the CLS row of decompv's ``C_L``."""
    record = timm_style_forward(model, images)
    score = record["score"]
    if targets is not None:
        score = score.gather(1, targets[:, None])[:, 0]
    score.sum().backward()
    return decompv_tokentm(record)[:, 0].detach()
