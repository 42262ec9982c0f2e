"""HuggingFace ``ViTModel`` (DINO checkpoints) and ``ViTForImageClassification``: one CLS token."""

from __future__ import annotations

from .base import register_adapter
from .hf_vit_family import HFViTFamilyAdapter


@register_adapter
class ViTAdapter(HFViTFamilyAdapter):
    base_class_names = ("ViTModel",)
    classifier_class_names = ("ViTForImageClassification",)
    model_types = ("vit",)
    backbone_attribute = "vit"
    pre_norm_blocks = True
    vit_layers = True
