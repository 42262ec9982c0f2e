"""HuggingFace DeiT: a CLS token and a distillation token before the patches."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import TokenLayout, register_adapter
from .hf_vit_family import HFViTFamilyAdapter


@register_adapter
class DeiTAdapter(HFViTFamilyAdapter):
    """``DeiTModel``, ``DeiTForImageClassification`` and ``DeiTForImageClassificationWithTeacher``.

    Both special tokens can start the propagation (``target=0`` or ``1`` on ``DeiTModel``).
    The distilled classifier averages the logits of a CLS head and a distillation head, so
    its start splits the relevance equally between the two tokens.
    """

    base_class_names = ("DeiTModel",)
    classifier_class_names = ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")
    model_types = ("deit",)
    backbone_attribute = "deit"
    pre_norm_blocks = True

    def special_token_names(self) -> tuple[str, ...]:
        return ("cls", "distillation")

    def classifier_start(self, layout: TokenLayout) -> Tensor:
        from transformers import DeiTForImageClassificationWithTeacher

        if not isinstance(self.model, DeiTForImageClassificationWithTeacher):
            return super().classifier_start(layout)
        start = torch.zeros(layout.num_tokens)
        start[:2] = 0.5
        return start
