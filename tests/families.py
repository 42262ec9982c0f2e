"""Seeded tiny CLIP, SigLIP, BEiT and ViT-MAE models, with float64 references from their own eager forward.

Works on transformers 4.57 and 5.x. Module layouts differ between them:

- CLIP / SigLIP: ``<vision>.encoder.layers[i].self_attn.{q,k,v,out}_proj`` (``scale``) in both, where
  ``<vision>`` is ``vision_model`` (4.57 ``*VisionModel``, every ``*WithProjection`` / ``*Model``) or the
  model itself (5.x ``CLIPVisionModel`` / ``SiglipVisionModel``).
- BEiT / ViT-MAE, 5.x: ``layers[i].attention.{q,k,v,o}_proj`` (``scaling``);
  4.57: ``encoder.layer[i].attention.attention.{query,key,value}`` + ``attention.output.dense``
  (MAE has ``scaling``; BEiT divides by ``sqrt(attention_head_size)``, no attribute).

Every builder returns the model in eval mode with its default (sdpa) attention; the references run an
eager float64 copy and never touch the model passed in.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import transformers
from conftest import seeded
from torch import nn

VISION = dict(
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    patch_size=8,
    image_size=32,
)
TEXT = dict(
    vocab_size=64,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=16,
    # In-vocabulary special ids (the defaults, 49406/49407, are outside a 64-token vocabulary).
    pad_token_id=0,
    bos_token_id=62,
    eos_token_id=63,
)
PROJECTION_DIM = 32

NAMES = (
    "CLIPVisionModel",
    "CLIPVisionModelWithProjection",
    "CLIPModel",
    "SiglipVisionModel",
    "SiglipModel",
    "BeitModel",
    "BeitForImageClassification",
    "BeitModel-shared-bias",
    "ViTMAEModel",
)


@dataclass(frozen=True)
class FamilyInfo:
    """What a test needs to know about a tiny model besides the model itself."""

    name: str
    family: str  # "clip", "siglip", "beit" or "vit_mae"
    special_token_names: tuple[str, ...]  # tokens before the patches ("cls" or none)
    grid: tuple[int, int]  # patches at ``image_size``
    patch_size: int
    image_size: int
    readout: str  # how the model's output reads the tokens
    has_text: bool = False  # CLIPModel / SiglipModel: forward also needs ``input_ids``
    eager_implementation: str = "eager"  # the ``attn_implementation`` that returns attention probabilities

    @property
    def num_special_tokens(self) -> int:
        return len(self.special_token_names)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_special_tokens + self.num_patches

    def forward_kwargs(self, pixel_values: torch.Tensor) -> dict:
        """Keyword arguments for ``model(pixel_values=pixel_values, **kwargs)`` (see :func:`forward_kwargs`)."""
        return forward_kwargs_for(self.family, self.has_text, pixel_values, self.patch_size)


def text_inputs(batch_size: int = 2, length: int = 6) -> dict:
    """Fixed ``input_ids`` / ``attention_mask`` for the tiny text towers: BOS, random words, EOS; no padding.

    Two texts by default, so ``logits_per_image`` is `(num_images, 2)`. CLIP pools the first EOS (id 63),
    SigLIP the last token.

    No offline tokenizer is needed (SigLIP's needs sentencepiece and a model file; a CLIPTokenizer can be
    built from a hand-made vocab.json + merges.txt, but ids are simpler).
    """
    words = torch.randint(1, 62, (batch_size, length - 2), generator=torch.Generator().manual_seed(3))
    ids = torch.cat(
        [torch.full((batch_size, 1), TEXT["bos_token_id"]), words, torch.full((batch_size, 1), TEXT["eos_token_id"])],
        dim=1,
    )
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def identity_noise(pixel_values: torch.Tensor, patch_size: int = VISION["patch_size"]) -> torch.Tensor:
    """ViT-MAE ``noise`` whose argsort is the identity: with ``mask_ratio=0`` every patch is kept, in order."""
    rows, cols = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
    return torch.arange(rows * cols, dtype=torch.float32).expand(pixel_values.shape[0], -1).clone()


def forward_kwargs_for(family: str, has_text: bool, pixel_values: torch.Tensor, patch_size: int) -> dict:
    kwargs: dict = {}
    if has_text:
        kwargs.update(text_inputs())
    if family == "vit_mae":
        kwargs["noise"] = identity_noise(pixel_values, patch_size)
    return kwargs


def forward_kwargs(model: nn.Module, pixel_values: torch.Tensor) -> dict:
    """The extra forward arguments a tiny model of this module needs (text ids; MAE's identity noise)."""
    config = model.config
    family = _family(model)
    vision_config = getattr(config, "vision_config", config)
    return forward_kwargs_for(family, hasattr(model, "text_model"), pixel_values, int(vision_config.patch_size))


# ------------------------------------------------------------------ builders
def _family(model: nn.Module) -> str:
    model_type = model.config.model_type
    for family in ("clip", "siglip", "beit", "vit_mae", "vit"):  # vit_mae before vit (a prefix of it)
        if model_type.startswith(family):
            return family
    raise TypeError(f"Not a family of this module: {type(model).__name__} ({model_type}).")


def _clip(name: str, vision: dict) -> nn.Module:
    T = transformers
    if name == "CLIPVisionModel":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**vision))
    if name == "CLIPVisionModelWithProjection":
        return T.CLIPVisionModelWithProjection(T.CLIPVisionConfig(**vision, projection_dim=PROJECTION_DIM))
    return T.CLIPModel(T.CLIPConfig(text_config=dict(TEXT), vision_config=vision, projection_dim=PROJECTION_DIM))


def _siglip(name: str, vision: dict) -> nn.Module:
    T = transformers
    if name == "SiglipVisionModel":
        return T.SiglipVisionModel(T.SiglipVisionConfig(**vision))
    model = T.SiglipModel(T.SiglipConfig(text_config=dict(TEXT), vision_config=vision))
    with torch.no_grad():  # both init to 0 (exp(0) = 1, no bias)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-1.0)
    return model


def _beit(name: str, vision: dict) -> nn.Module:
    T = transformers
    shared = name == "BeitModel-shared-bias"
    config = T.BeitConfig(
        **vision,
        use_relative_position_bias=not shared,
        use_shared_relative_position_bias=shared,
        use_mean_pooling=True,
        layer_scale_init_value=0.1,
        num_labels=5,
    )
    model = T.BeitForImageClassification(config) if name == "BeitForImageClassification" else T.BeitModel(config)
    with torch.no_grad():
        for module in model.modules():
            # Relative position bias tables and the CLS token init to 0, layer scale to a constant.
            if type(module).__name__ == "BeitRelativePositionBias":
                module.relative_position_bias_table.normal_(0.0, 1.0)
            if type(module).__name__ == "BeitEmbeddings":
                module.cls_token.normal_(0.0, 1.0)
            for scale in ("lambda_1", "lambda_2"):
                if isinstance(getattr(module, scale, None), nn.Parameter):
                    getattr(module, scale).uniform_(0.2, 1.5)
    return model


def _vit_mae(name: str, vision: dict) -> nn.Module:
    # mask_ratio=0 keeps every patch; the order is still shuffled unless forward gets identity noise.
    return transformers.ViTMAEModel(transformers.ViTMAEConfig(**vision, mask_ratio=0.0))


def _nonzero_biases(model: nn.Module) -> None:
    """Give the vision tower's zero-initialized attention biases (SigLIP q/k/v/out and pooling head) values."""
    with torch.no_grad():
        for module in vision_root(model).modules():
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_bias is not None:
                module.in_proj_bias.normal_(0.0, 0.2)
        for site in attention_sites(model):
            for linear in (site.query, site.key, site.value, site.output):
                if linear.bias is not None and not linear.bias.any():
                    linear.bias.normal_(0.0, 0.2)


def _sharpen(model: nn.Module, gain: float) -> None:
    """Scale the query and key projections so attention is far from uniform (as in conftest's peaked ViTs)."""
    with torch.no_grad():
        for site in attention_sites(model):
            site.query.weight.mul_(gain)
            site.key.weight.mul_(gain)
        for module in vision_root(model).modules():
            if isinstance(module, nn.MultiheadAttention):  # SigLIP's pooling probe: query and key thirds
                module.in_proj_weight[: 2 * module.embed_dim].mul_(_POOLING_GAIN)


#: Query/key gains giving clearly non-uniform attention at default init (default init is nearly uniform).
_GAINS = {"clip": 6.0, "siglip": 2.5, "beit": 1.0, "vit_mae": 1.0}
_POOLING_GAIN = 5.0
_CONFIG_OVERRIDES = {"beit": {"initializer_range": 0.3}, "vit_mae": {"initializer_range": 0.3}}


def _factory(name: str):
    family = _name_family(name)
    builder = {"clip": _clip, "siglip": _siglip, "beit": _beit, "vit_mae": _vit_mae}[family]

    def factory():
        model = builder(name, {**VISION, **_CONFIG_OVERRIDES.get(family, {})})
        _nonzero_biases(model)
        _sharpen(model, _GAINS[family])
        return model

    return factory


def _name_family(name: str) -> str:
    if name.startswith("CLIP"):
        return "clip"
    if name.startswith("Siglip"):
        return "siglip"
    if name.startswith("Beit"):
        return "beit"
    if name.startswith("ViTMAE"):
        return "vit_mae"
    raise KeyError(f"Unknown tiny model {name!r}; known: {', '.join(NAMES)}.")


_READOUTS = {
    "CLIPVisionModel": "pooler_output = post_layernorm(last_hidden_state[:, 0]) (CLS)",
    "CLIPVisionModelWithProjection": "image_embeds = visual_projection(post_layernorm(CLS))",
    "CLIPModel": "logits_per_image = exp(logit_scale) * cos(visual_projection(post_layernorm(CLS)), text_embeds)",
    "SiglipVisionModel": "pooler_output = head(post_layernorm(tokens)): attention pooling over all tokens",
    "SiglipModel": "logits_per_image = exp(logit_scale) * cos(head(post_layernorm(tokens)), text_embeds) + logit_bias",
    "BeitModel": "pooler_output = pooler.layernorm(mean of patch tokens)",
    "BeitModel-shared-bias": "pooler_output = pooler.layernorm(mean of patch tokens)",
    "BeitForImageClassification": "logits = classifier(pooler.layernorm(mean of patch tokens))",
    "ViTMAEModel": "last_hidden_state = layernorm(tokens) (no pooler)",
}


def build(name: str) -> tuple[nn.Module, FamilyInfo]:
    """A seeded tiny model (eval mode, default attention implementation) and its :class:`FamilyInfo`."""
    family = _name_family(name)
    if name not in NAMES:
        raise KeyError(f"Unknown tiny model {name!r}; known: {', '.join(NAMES)}.")
    model = seeded(_factory(name), trained_norms=True)
    patch, size = VISION["patch_size"], VISION["image_size"]
    info = FamilyInfo(
        name=name,
        family=family,
        special_token_names=() if family == "siglip" else ("cls",),
        grid=(size // patch, size // patch),
        patch_size=patch,
        image_size=size,
        readout=_READOUTS[name],
        has_text=name in ("CLIPModel", "SiglipModel"),
    )
    return model, info


# ------------------------------------------------------------------ module discovery
@dataclass(frozen=True)
class Site:
    """One vision self-attention layer: the module returning ``(output, weights)`` and its projections."""

    module: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    output: nn.Linear
    num_heads: int
    head_dim: int
    scaling: float


def vision_root(model: nn.Module) -> nn.Module:
    """The module holding the vision embeddings and encoder (``vision_model`` chains, BEiT's ``beit``)."""
    root = getattr(model, "beit", model)
    while hasattr(root, "vision_model"):
        root = root.vision_model
    return root


def vision_layers(model: nn.Module) -> nn.ModuleList:
    root = vision_root(model)
    if hasattr(root, "layers"):  # BEiT / MAE, 5.x
        return root.layers
    encoder = root.encoder
    return encoder.layers if hasattr(encoder, "layers") else encoder.layer  # CLIP/SigLIP; BEiT/MAE 4.x


def attention_sites(model: nn.Module) -> list[Site]:
    """Per vision layer, input side first, for both module layouts."""
    sites = []
    for layer in vision_layers(model):
        if hasattr(layer, "self_attn"):  # CLIP, SigLIP
            att = layer.self_attn
            parts = (att, att.q_proj, att.k_proj, att.v_proj, att.out_proj, att.head_dim, att.scale)
        elif hasattr(layer.attention, "q_proj"):  # BEiT, MAE on 5.x
            att = layer.attention
            parts = (att, att.q_proj, att.k_proj, att.v_proj, att.o_proj, att.head_dim, att.scaling)
        else:  # BEiT, MAE on 4.x
            att = layer.attention.attention
            head_dim = att.attention_head_size
            scaling = getattr(att, "scaling", head_dim**-0.5)
            parts = (att, att.query, att.key, att.value, layer.attention.output.dense, head_dim, scaling)
        module, query, key, value, output, head_dim, scaling = parts
        sites.append(Site(module, query, key, value, output, query.out_features // head_dim, head_dim, float(scaling)))
    return sites


def pooling_head(model: nn.Module) -> nn.Module:
    """SigLIP's ``SiglipMultiheadAttentionPoolingHead`` (``<vision>.head``)."""
    head = getattr(vision_root(model), "head", None)
    if head is None:
        raise TypeError(f"{type(model).__name__} has no attention-pooling head.")
    return head


# ------------------------------------------------------------------ references
def eager_copy(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of ``model`` with eager attention, in ``dtype``; ``model`` is left as it is.

    ``set_attn_implementation("eager")`` on a deep copy where it works (4.57 and 5.x alike); 4.57 BEiT
    picks its attention class at construction and refuses, so it is rebuilt from its config with
    ``attn_implementation="eager"`` and given the same state dict.
    """

    def not_eager(module: nn.Module) -> bool:
        return any(
            "Sdpa" in type(sub).__name__
            or getattr(getattr(sub, "config", None), "_attn_implementation", "eager") != "eager"
            for sub in module.modules()
        )

    clone = copy.deepcopy(model)
    if not any("Sdpa" in type(sub).__name__ for sub in clone.modules()):
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # 4.57 composite models warn about their sub-configs
        try:
            clone.set_attn_implementation("eager")
        finally:
            transformers.logging.set_verbosity(verbosity)
    if not_eager(clone):
        with torch.random.fork_rng():
            clone = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="eager")
        clone.load_state_dict(model.state_dict())
        if not_eager(clone):
            raise RuntimeError(f"Could not make an eager copy of {type(model).__name__}.")
    return clone.to(dtype).eval()


def _vision_forward(eager: nn.Module, pixel_values: torch.Tensor, **kwargs):
    """Run the float64 copy: the whole model, or only its vision tower when it has a text tower too.

    The text tower cannot change the vision attention, and 4.57's CLIP text tower fails in float64 (its causal
    mask is filled with ``finfo(float64).min`` in float32).
    """
    module = vision_root(eager) if hasattr(eager, "text_model") else eager
    extra = {"noise": identity_noise(pixel_values, int(eager.config.patch_size))} if _family(eager) == "vit_mae" else {}
    return module(pixel_values=pixel_values.to(torch.float64), **extra, **kwargs)


def eager_attention_and_values(model: nn.Module, pixel_values: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per vision layer ``(probs (B, H, N, N), values (B, H, N, d))`` in float64, from the model's own eager forward.

    An eager float64 copy runs with ``output_attentions=True``; forward hooks read each attention module's
    returned weights (identical to ``outputs.attentions``, checked where the model returns them: 4.57
    ``SiglipModel`` drops the vision attentions) and each value projection's output. HF's eager softmax
    runs in float32 (``softmax(..., dtype=torch.float32).to(query.dtype)``, except 4.57 BEiT), so the
    probabilities carry float32 rounding (~1e-7); values are float64 throughout.

    CLIPModel / SiglipModel run only their vision tower (``vision_model``). ViT-MAE gets ``noise = arange(num_patches)``
    so that ``argsort(noise)`` is the identity: with the builder's ``mask_ratio=0`` every patch is kept
    *in its original row-major order* (tokens = CLS, then patches). Without it (``noise=None``) MAE draws
    fresh random noise on every call and the patch tokens come out permuted (``ids_restore`` undoes it),
    even when nothing is masked.
    """
    eager = eager_copy(model)
    sites = attention_sites(eager)
    probs: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    hooks = []
    for index, site in enumerate(sites):

        def read_probs(module, args, output, index=index):
            probs[index] = output[1]

        def read_values(module, args, output, index=index, site=site):
            batch, tokens, _ = output.shape
            values[index] = output.reshape(batch, tokens, site.num_heads, site.head_dim).transpose(1, 2)

        hooks.append(site.module.register_forward_hook(read_probs))
        hooks.append(site.value.register_forward_hook(read_values))
    try:
        with torch.no_grad():
            outputs = _vision_forward(eager, pixel_values, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    returned = getattr(outputs, "vision_model_output", outputs).attentions
    if returned:  # None or () where the model drops them (4.57 SiglipModel)
        for index, weights in enumerate(returned):
            if not torch.equal(weights, probs[index]):
                raise AssertionError(f"layer {index}: hooked attention weights differ from outputs.attentions")
    return [(probs[index].to(torch.float64), values[index].to(torch.float64)) for index in range(len(sites))]


def siglip_pooling_attention(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Attention weights `(B, N)` of SigLIP's pooling probe over the tokens, mean over heads, float64.

    A forward hook on ``head.attention`` (an ``nn.MultiheadAttention``, batch_first) of a float64 eager copy
    captures its ``(probe, tokens, tokens)`` inputs; the weights are then recomputed by that same module with
    ``need_weights=True, average_attn_weights=True``. Per head h this is
    ``softmax_j((W_q p + b_q)_h . (W_k x_j + b_k)_h / sqrt(D / H))`` with ``W_q, W_k, b_q, b_k`` the first two
    thirds of ``in_proj_weight`` / ``in_proj_bias`` and ``x_j`` the post-layernorm tokens.
    """
    eager = eager_copy(model)
    attention = pooling_head(eager).attention
    captured: dict = {}
    hook = attention.register_forward_hook(lambda module, args, output: captured.update(args=args))
    try:
        with torch.no_grad():
            _vision_forward(eager, pixel_values)
    finally:
        hook.remove()
    query, key, value = captured["args"]
    with torch.no_grad():
        _, weights = attention(query, key, value, need_weights=True, average_attn_weights=True)
    return weights[:, 0, :].to(torch.float64)  # (B, 1 probe, N) -> (B, N)
