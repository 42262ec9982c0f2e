"""A port of the authors' Transformer Attribution, for tests: hila-chefer/Transformer-Explainability.

Ported from ``modules/layers_ours.py`` (the relprop layers ``baselines/ViT/ViT_LRP.py`` imports),
``baselines/ViT/ViT_LRP.py`` (the timm-style ViT with ``relprop``) and
``baselines/ViT/ViT_explanation_generator.py`` (``LRP.generate_LRP``), keeping their autograd-based
``relprop`` rule by rule. Changes, none of which touches a rule:

- only what ``method="transformer_attribution"`` needs (no Conv2d/BatchNorm/pool relprop: the patch
  embedding's relprop is never run by it; no "full"/"rollout"/"last_layer" branches);
- ``einops.rearrange`` written as ``reshape``/``permute``; no CUDA; no ``load_pretrained``;
- LayerNorm epsilons taken from the HF config (theirs: 1e-6 in the blocks, 1e-5 at the end, the
  epsilons of the timm checkpoints they load); a model is built from a HF ViT's weights by
  :func:`from_hf` (HF's query, key and value Linears fused into their ``qkv``);
- ``generate_transformer_attribution`` is ``generate_LRP`` for one image, without ``model.zero_grad()``
  and the permanent ``model.eval()`` (the port is built in eval mode and never trained); it also takes a
  ready ``one_hot`` start for a one-output head (the label-free case of the package).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def safe_divide(a, b):
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + den.eq(0).type(den.type()) * 1e-9
    return a / den * b.ne(0).type(b.type())


def forward_hook(self, input, output):
    if type(input[0]) in (list, tuple):
        self.X = []
        for i in input[0]:
            x = i.detach()
            x.requires_grad = True
            self.X.append(x)
    else:
        self.X = input[0].detach()
        self.X.requires_grad = True
    self.Y = output


class RelProp(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_forward_hook(forward_hook)

    def gradprop(self, Z, X, S):
        return torch.autograd.grad(Z, X, S, retain_graph=True)

    def relprop(self, R, alpha):
        return R


class RelPropSimple(RelProp):
    def relprop(self, R, alpha):
        Z = self.forward(self.X)
        S = safe_divide(R, Z)
        C = self.gradprop(Z, self.X, S)
        if not torch.is_tensor(self.X):
            return [self.X[0] * C[0], self.X[1] * C[1]]
        return self.X * (C[0])


class GELU(nn.GELU, RelProp):
    pass


class Softmax(nn.Softmax, RelProp):
    pass


class LayerNorm(nn.LayerNorm, RelProp):
    pass


class Dropout(nn.Dropout, RelProp):
    pass


class Add(RelPropSimple):
    def forward(self, inputs):
        return torch.add(*inputs)

    def relprop(self, R, alpha):
        Z = self.forward(self.X)
        S = safe_divide(R, Z)
        C = self.gradprop(Z, self.X, S)
        a = self.X[0] * C[0]
        b = self.X[1] * C[1]
        a_sum = a.sum()
        b_sum = b.sum()
        a_fact = safe_divide(a_sum.abs(), a_sum.abs() + b_sum.abs()) * R.sum()
        b_fact = safe_divide(b_sum.abs(), a_sum.abs() + b_sum.abs()) * R.sum()
        a = a * safe_divide(a_fact, a.sum())
        b = b * safe_divide(b_fact, b.sum())
        return [a, b]


class einsum(RelPropSimple):
    def __init__(self, equation):
        super().__init__()
        self.equation = equation

    def forward(self, *operands):
        return torch.einsum(self.equation, *operands)


class IndexSelect(RelProp):
    def forward(self, inputs, dim, indices):
        self.dim = dim
        self.indices = indices
        return torch.index_select(inputs, dim, indices)

    def relprop(self, R, alpha):
        Z = self.forward(self.X, self.dim, self.indices)
        S = safe_divide(R, Z)
        C = self.gradprop(Z, self.X, S)
        return self.X * (C[0])


class Clone(RelProp):
    def forward(self, input, num):
        self.num = num
        return [input for _ in range(num)]

    def relprop(self, R, alpha):
        Z = [self.X for _ in range(self.num)]
        S = [safe_divide(r, z) for r, z in zip(R, Z, strict=True)]
        C = self.gradprop(Z, self.X, S)[0]
        return self.X * C


class Linear(nn.Linear, RelProp):
    def relprop(self, R, alpha):
        beta = alpha - 1
        pw = torch.clamp(self.weight, min=0)
        nw = torch.clamp(self.weight, max=0)
        px = torch.clamp(self.X, min=0)
        nx = torch.clamp(self.X, max=0)

        def f(w1, w2, x1, x2):
            Z1 = F.linear(x1, w1)
            Z2 = F.linear(x2, w2)
            S1 = safe_divide(R, Z1 + Z2)
            S2 = safe_divide(R, Z1 + Z2)
            C1 = x1 * torch.autograd.grad(Z1, x1, S1)[0]
            C2 = x2 * torch.autograd.grad(Z2, x2, S2)[0]
            return C1 + C2

        activator_relevances = f(pw, nw, px, nx)
        inhibitor_relevances = f(nw, pw, px, nx)
        return alpha * activator_relevances - beta * inhibitor_relevances


def compute_rollout_attention(all_layer_matrices, start_layer=0):
    """ViT_LRP.py's version: ``+ I``, no row normalisation."""
    num_tokens = all_layer_matrices[0].shape[1]
    batch_size = all_layer_matrices[0].shape[0]
    eye = torch.eye(num_tokens).expand(batch_size, num_tokens, num_tokens).to(all_layer_matrices[0].device)
    all_layer_matrices = [all_layer_matrices[i] + eye for i in range(len(all_layer_matrices))]
    joint_attention = all_layer_matrices[start_layer]
    for i in range(start_layer + 1, len(all_layer_matrices)):
        joint_attention = all_layer_matrices[i].bmm(joint_attention)
    return joint_attention


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = GELU()
        self.fc2 = Linear(hidden_features, in_features)
        self.drop = Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def relprop(self, cam, **kwargs):
        cam = self.drop.relprop(cam, **kwargs)
        cam = self.fc2.relprop(cam, **kwargs)
        cam = self.act.relprop(cam, **kwargs)
        return self.fc1.relprop(cam, **kwargs)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.matmul1 = einsum("bhid,bhjd->bhij")  # A = Q*K^T
        self.matmul2 = einsum("bhij,bhjd->bhid")  # attn = A*V
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = Dropout(0.0)
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(0.0)
        self.softmax = Softmax(dim=-1)
        self.attn_cam = None
        self.attn_gradients = None

    def save_attn_gradients(self, attn_gradients):
        self.attn_gradients = attn_gradients

    def forward(self, x):
        b, n, _ = x.shape
        h = self.num_heads
        qkv = self.qkv(x)
        # rearrange(qkv, 'b n (qkv h d) -> qkv b h n d', qkv=3, h=h)
        q, k, v = qkv.reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
        dots = self.matmul1([q, k]) * self.scale
        attn = self.softmax(dots)
        attn = self.attn_drop(attn)
        attn.register_hook(self.save_attn_gradients)
        out = self.matmul2([attn, v])
        out = out.permute(0, 2, 1, 3).reshape(b, n, -1)  # 'b h n d -> b n (h d)'
        return self.proj_drop(self.proj(out))

    def relprop(self, cam, **kwargs):
        cam = self.proj_drop.relprop(cam, **kwargs)
        cam = self.proj.relprop(cam, **kwargs)
        b, n, _ = cam.shape
        cam = cam.reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)  # 'b n (h d) -> b h n d'
        (cam1, cam_v) = self.matmul2.relprop(cam, **kwargs)
        cam1 /= 2
        cam_v /= 2
        self.attn_cam = cam1
        cam1 = self.attn_drop.relprop(cam1, **kwargs)
        cam1 = self.softmax.relprop(cam1, **kwargs)
        (cam_q, cam_k) = self.matmul1.relprop(cam1, **kwargs)
        cam_q /= 2
        cam_k /= 2
        # rearrange([cam_q, cam_k, cam_v], 'qkv b h n d -> b n (qkv h d)', qkv=3, h=h)
        cam_qkv = torch.stack([cam_q, cam_k, cam_v]).permute(1, 3, 0, 2, 4).reshape(b, n, -1)
        return self.qkv.relprop(cam_qkv, **kwargs)


class Block(nn.Module):
    def __init__(self, dim, num_heads, hidden, qkv_bias, eps):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden)
        self.add1 = Add()
        self.add2 = Add()
        self.clone1 = Clone()
        self.clone2 = Clone()

    def forward(self, x):
        x1, x2 = self.clone1(x, 2)
        x = self.add1([x1, self.attn(self.norm1(x2))])
        x1, x2 = self.clone2(x, 2)
        return self.add2([x1, self.mlp(self.norm2(x2))])

    def relprop(self, cam, **kwargs):
        (cam1, cam2) = self.add2.relprop(cam, **kwargs)
        cam2 = self.mlp.relprop(cam2, **kwargs)
        cam2 = self.norm2.relprop(cam2, **kwargs)
        cam = self.clone2.relprop((cam1, cam2), **kwargs)
        (cam1, cam2) = self.add1.relprop(cam, **kwargs)
        cam2 = self.attn.relprop(cam2, **kwargs)
        cam2 = self.norm1.relprop(cam2, **kwargs)
        return self.clone1.relprop((cam1, cam2), **kwargs)


class VisionTransformer(nn.Module):
    def __init__(self, img_size, patch_size, num_classes, embed_dim, depth, num_heads, hidden, qkv_bias, eps):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        num_patches = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, hidden, qkv_bias, eps) for _ in range(depth)])
        self.norm = LayerNorm(embed_dim, eps=eps)
        self.head = Linear(embed_dim, num_classes)
        self.pool = IndexSelect()

    def forward(self, x):
        b = x.shape[0]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_embed  # their Add module; its relprop is read by method="full" only
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        x = self.pool(x, dim=1, indices=torch.tensor(0, device=x.device))
        return self.head(x.squeeze(1))

    def relprop(self, cam, start_layer=0, **kwargs):
        cam = self.head.relprop(cam, **kwargs)
        cam = cam.unsqueeze(1)
        cam = self.pool.relprop(cam, **kwargs)
        cam = self.norm.relprop(cam, **kwargs)
        for blk in reversed(self.blocks):
            cam = blk.relprop(cam, **kwargs)
        # method == "transformer_attribution"
        cams = []
        for blk in self.blocks:
            grad = blk.attn.attn_gradients
            cam = blk.attn.attn_cam
            cam = cam[0].reshape(-1, cam.shape[-1], cam.shape[-1])
            grad = grad[0].reshape(-1, grad.shape[-1], grad.shape[-1])
            cam = grad * cam
            cam = cam.clamp(min=0).mean(dim=0)
            cams.append(cam.unsqueeze(0))
        rollout = compute_rollout_attention(cams, start_layer=start_layer)
        return rollout[:, 0, 1:]


def _layers(vit):
    return vit.layers if hasattr(vit, "layers") else vit.encoder.layer


def from_hf(model, num_classes=None):
    """The authors' ViT with the weights of a HF ``ViTForImageClassification`` / ``ViTModel`` (same dtype).

    A ``ViTModel`` gets a ``num_classes``-output head (weights to be set by the caller).
    """
    config = model.config
    vit = getattr(model, "vit", model)
    head_classes = config.num_labels if hasattr(model, "classifier") else num_classes
    ours = VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        num_classes=head_classes,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        hidden=config.intermediate_size,
        qkv_bias=config.qkv_bias,
        eps=config.layer_norm_eps,
    )
    dtype = next(model.parameters()).dtype
    ours = ours.to(dtype).eval()
    with torch.no_grad():
        embeddings = vit.embeddings
        ours.patch_embed.load_state_dict(embeddings.patch_embeddings.projection.state_dict())
        ours.cls_token.copy_(embeddings.cls_token)
        ours.pos_embed.copy_(embeddings.position_embeddings)
        for block, layer in zip(ours.blocks, _layers(vit), strict=True):
            attention = layer.attention
            if hasattr(attention, "q_proj"):  # transformers 5
                q, k, v, o = attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj
                fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
            else:  # transformers 4.x
                inner = attention.attention
                q, k, v, o = inner.query, inner.key, inner.value, attention.output.dense
                fc1, fc2 = layer.intermediate.dense, layer.output.dense
            block.attn.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            if config.qkv_bias:
                block.attn.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
            block.attn.proj.load_state_dict(o.state_dict())
            block.norm1.load_state_dict(layer.layernorm_before.state_dict())
            block.norm2.load_state_dict(layer.layernorm_after.state_dict())
            block.mlp.fc1.load_state_dict(fc1.state_dict())
            block.mlp.fc2.load_state_dict(fc2.state_dict())
        ours.norm.load_state_dict(vit.layernorm.state_dict())
        if hasattr(model, "classifier"):
            ours.head.load_state_dict(model.classifier.state_dict())
    return ours


def generate_transformer_attribution(model, image, index=None, start_layer=0):
    """``LRP.generate_LRP(image, index, method="transformer_attribution")`` for one image `(1, C, H, W)`:
    the patch entries of CLS's rollout row, `(1, num_patches)`."""
    output = model(image)
    kwargs = {"alpha": 1}
    if index is None:
        index = int(output.argmax(dim=-1))
    one_hot = torch.zeros((1, output.size()[-1]), dtype=output.dtype)
    one_hot[0, index] = 1
    one_hot_vector = one_hot.clone()
    one_hot = torch.sum(one_hot * output)
    one_hot.backward(retain_graph=True)
    return model.relprop(one_hot_vector, start_layer=start_layer, **kwargs)
