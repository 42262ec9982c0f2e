"""HuggingFace DINOv2, with and without register tokens.

DINOv2 always interpolates its position embeddings, so any image size whose sides are at
least one patch works. Register tokens sit between CLS and the patches; LayerScale rescales
channels, never mixes tokens, so it moves no relevance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import TokenLayout, register_adapter
from .hf_vit_family import HFViTFamilyAdapter


class _Dinov2Family(HFViTFamilyAdapter):
    any_image_size = True
    pre_norm_blocks = True  # with layer scale; the SwiGLU variant is refused by AttnLRP from its config

    def classifier_start(self, layout: TokenLayout) -> Tensor:
        """The classifier reads ``[CLS, mean of patches]``: half the relevance on CLS, half spread over patches."""
        start = torch.zeros(layout.num_tokens)
        start[0] = 0.5
        start[layout.patch_slice] = 0.5 / layout.num_patches
        return start


@register_adapter
class Dinov2Adapter(_Dinov2Family):
    base_class_names = ("Dinov2Model",)
    classifier_class_names = ("Dinov2ForImageClassification",)
    model_types = ("dinov2",)
    backbone_attribute = "dinov2"


@register_adapter
class Dinov2WithRegistersAdapter(_Dinov2Family):
    base_class_names = ("Dinov2WithRegistersModel",)
    classifier_class_names = ("Dinov2WithRegistersForImageClassification",)
    model_types = ("dinov2_with_registers",)
    backbone_attribute = "dinov2_with_registers"

    def special_token_names(self) -> tuple[str, ...]:
        registers = int(self.config.num_register_tokens)
        return ("cls", *(f"register_{index}" for index in range(registers)))
