"""HuggingFace CLIP and SigLIP vision towers, alone or inside the image-text model.

Both run a pre-norm ViT encoder whose layers keep ``self_attn.{q,k,v,out}_proj`` with a ``scale``.
CLIP puts a CLS token before the patches and a LayerNorm (``pre_layrnorm``) before the encoder,
which acts per token and moves no relevance; its image embedding is the output CLS token
(``post_layernorm``, then ``visual_projection``), so relevance starts at CLS. SigLIP has no CLS
token: its image embedding is an attention-pooling head (a learned probe attending to every output
token), so the start is that head's attention over the tokens, averaged over its heads, read from
the same forward pass (it sums to 1, so relevance stays conserved).

In ``CLIPModel`` / ``SiglipModel`` the explanation runs the vision tower; the image-text similarity
is what the gradient methods explain when prompts are given as ``target``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor, nn

from .base import AttentionSite, ModelAdapter, TokenLayout, register_adapter
from .hf_vit_family import ConfigTokens


class _ContrastiveVisionAdapter(ConfigTokens, ModelAdapter):
    """Shared by CLIP and SigLIP: where the vision tower and its layers are, in 4.x and 5.x."""

    #: Names of the image-text classes (their forward also takes text).
    image_text_class_names: tuple[str, ...] = ()

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.config = getattr(model.config, "vision_config", model.config)
        self.backbone = self.vision_root

    @property
    def has_text(self) -> bool:
        """Whether the model is the image-text model (its forward also takes ``input_ids``)."""
        return type(self.model).__name__ in self.image_text_class_names

    @property
    def forward_module(self) -> nn.Module:
        # CLIPModel / SiglipModel: the vision tower (pixel_values first, interpolate_pos_encoding).
        return self.model.vision_model if self.has_text else self.model

    @property
    def vision_root(self) -> nn.Module:
        """The module holding the vision embeddings and encoder (``vision_model`` chains in 4.x)."""
        root = self.model
        while hasattr(root, "vision_model"):
            root = root.vision_model
        return root

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.vision_root.encoder.layers)

    def attention_sites(self) -> list[AttentionSite]:
        sites = []
        for index, layer in enumerate(self.vision_root.encoder.layers):
            attention = layer.self_attn
            sites.append(
                AttentionSite.of(
                    index,
                    attention,
                    (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj),
                    int(attention.num_heads),
                    int(attention.head_dim),
                    float(attention.scale),
                )
            )
        return sites

    def output_embedding(self, output: object) -> Tensor:
        """The image embedding: ``image_embeds`` (with projection), else the pooled output."""
        for name in ("image_embeds", "pooler_output"):
            value = getattr(output, name, None)
            if value is not None:
                return value
        return output[1]


@register_adapter
class CLIPAdapter(_ContrastiveVisionAdapter):
    """``CLIPVisionModel``, ``CLIPVisionModelWithProjection`` and ``CLIPModel`` (its vision tower)."""

    supported_class_names = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel")
    image_text_class_names = ("CLIPModel",)
    model_types = ("clip", "clip_vision_model")

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        from transformers import CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

        return (CLIPVisionModel, CLIPVisionModelWithProjection, CLIPModel)


@register_adapter
class SiglipAdapter(_ContrastiveVisionAdapter):
    """``SiglipVisionModel`` and ``SiglipModel`` (its vision tower): no CLS; the start is the pooling head's
    attention over the tokens (mean over its heads), recorded in the same forward pass."""

    supported_class_names = ("SiglipVisionModel", "SiglipModel")
    image_text_class_names = ("SiglipModel",)
    model_types = ("siglip", "siglip_vision_model")

    @classmethod
    def model_classes(cls) -> tuple[type, ...]:
        from transformers import SiglipModel, SiglipVisionModel

        return (SiglipVisionModel, SiglipModel)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._pooling: Tensor | None = None

    def special_token_names(self) -> tuple[str, ...]:
        return ()

    @property
    def pooling_head(self) -> nn.Module | None:
        """The attention-pooling head (``None`` with ``vision_use_head=False``)."""
        return getattr(self.vision_root, "head", None)

    def explaining(self) -> AbstractContextManager[None]:
        return self._record_pooling()

    @contextmanager
    def _record_pooling(self) -> Iterator[None]:
        head = self.pooling_head
        if head is None:
            yield
            return

        def keep(_module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
            probe, tokens = args[0], args[1]
            self._pooling = _pooling_weights(head.attention, probe, tokens)

        handle = head.attention.register_forward_hook(keep, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def default_start(self, layout: TokenLayout) -> Tensor:
        """The pooling head's attention over the tokens, `(batch_size, num_tokens)`, mean over its heads;
        without a head (``vision_use_head=False``), the mean of the tokens."""
        if self.pooling_head is None:
            return torch.full((layout.num_tokens,), 1.0 / layout.num_tokens)
        if self._pooling is None:
            raise RuntimeError("SigLIP's start is read from the forward pass; call default_start after it.")
        start, self._pooling = self._pooling, None
        return start


def _pooling_weights(attention: nn.MultiheadAttention, probe: Tensor, tokens: Tensor) -> Tensor:
    """``mean_h softmax_j(q_h . k_{j,h} / sqrt(d))`` of ``nn.MultiheadAttention`` (batch first), float32.

    ``q = W_q p + b_q`` from the probe ``p`` and ``k_j = W_k x_j + b_k`` from the tokens, with
    ``W_q, W_k, b_q, b_k`` the first two thirds of ``in_proj_weight`` / ``in_proj_bias``.
    """
    with torch.no_grad():
        dim, heads = attention.embed_dim, attention.num_heads
        weight = attention.in_proj_weight.float()
        bias = attention.in_proj_bias.float() if attention.in_proj_bias is not None else None
        query = nn.functional.linear(probe.float(), weight[:dim], None if bias is None else bias[:dim])
        key = nn.functional.linear(tokens.float(), weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
        batch, tokens_count = key.shape[:2]
        head_dim = dim // heads
        query = query.reshape(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.reshape(batch, tokens_count, heads, head_dim).transpose(1, 2)
        weights = torch.softmax(query @ key.transpose(-1, -2) * head_dim**-0.5, dim=-1)  # (B, H, 1, N)
        return weights.mean(dim=1)[:, 0]
