"""HuggingFace ``ViTModel`` (DINO checkpoints) and ``ViTForImageClassification``: one CLS token."""

from __future__ import annotations

from .base import register_adapter
from .hf_vit_family import HFViTFamilyAdapter


@register_adapter
class ViTAdapter(HFViTFamilyAdapter):
    supported_class_names = ("ViTModel", "ViTForImageClassification")
    model_types = ("vit",)
    backbone_attribute = "vit"
    pre_norm_blocks = True
    vit_layers = True

    @classmethod
    def base_classes(cls) -> tuple[type, ...]:
        from transformers import ViTModel

        return (ViTModel,)

    @classmethod
    def classifier_classes(cls) -> tuple[type, ...]:
        from transformers import ViTForImageClassification

        return (ViTForImageClassification,)
