"""HuggingFace BEiT: relative position biases in the attention, and a head that reads the patch mean.

BEiT adds a learned relative position bias to every layer's attention scores (per layer with
``use_relative_position_bias``, shared by all layers with ``use_shared_relative_position_bias``,
or both). The recorder adds the biases' outputs of the same forward pass to the recomputed scores,
so the probabilities are the model's own. With ``use_mean_pooling`` (the ImageNet classifiers)
the head reads the mean of the patch tokens, so that is where the propagation starts.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from .base import AttentionSite, TokenLayout, register_adapter
from .hf_vit_family import HFViTFamilyAdapter


@register_adapter
class BeitAdapter(HFViTFamilyAdapter):
    """``BeitModel`` and ``BeitForImageClassification``, transformers 4.x and 5.x layouts."""

    base_class_names = ("BeitModel",)
    classifier_class_names = ("BeitForImageClassification",)
    model_types = ("beit",)
    backbone_attribute = "beit"

    @classmethod
    def loading_options(cls, model_class: type) -> dict[str, object]:
        return {}  # BEiT's pooler is where its output is read (the patch mean): keep it

    @property
    def any_image_size(self) -> bool:  # the relative bias table is resized to any grid
        return not bool(getattr(self.config, "use_absolute_position_embeddings", False))

    def _bias_modules(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        own = getattr(layer, "relative_position_bias", None)  # transformers 5: on the layer
        if own is None and hasattr(layer.attention, "attention"):  # 4.x: inside the self-attention
            own = getattr(layer.attention.attention, "relative_position_bias", None)
        shared = getattr(self.backbone, "shared_position_bias", None)  # transformers 5
        if shared is None and hasattr(self.backbone, "encoder"):
            shared = getattr(self.backbone.encoder, "relative_position_bias", None)  # 4.x
        return tuple(module for module in (own, shared) if isinstance(module, nn.Module))

    def attention_sites(self) -> list[AttentionSite]:
        sites = super().attention_sites()
        layers = self._layers()
        return [replace(site, score_bias=self._bias_modules(layer)) for site, layer in zip(sites, layers, strict=True)]

    def _reads_patch_mean(self) -> bool:
        return bool(getattr(self.config, "use_mean_pooling", False))

    def classifier_start(self, layout: TokenLayout) -> Tensor:
        """Mean pooling: the head reads the mean of the patch tokens; otherwise CLS."""
        if not self._reads_patch_mean():
            return super().classifier_start(layout)
        start = torch.zeros(layout.num_tokens)
        start[layout.patch_slice] = 1.0 / layout.num_patches
        return start

    def default_start(self, layout: TokenLayout) -> Tensor:
        """Where the pooled output is read: the patch mean with ``use_mean_pooling``, else CLS."""
        return self.classifier_start(layout)
