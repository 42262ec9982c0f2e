"""HuggingFace ViT-MAE's encoder, run on every patch, in order, deterministically.

``ViTMAEModel`` masks a random ``config.mask_ratio`` of the patches (0.75 by default) and shuffles
the rest by random noise on every forward pass. An explanation needs all patches in their grid
order, the same on every call, so during the explanation's forward passes the mask ratio is 0
(restored afterwards, also on error) and the noise is ``0, 1, 2, ...`` per image, which keeps the
row-major order (``argsort`` of increasing noise is the identity). The encoder then sees exactly
the image; relevance is that of the full image, not of a masked training view.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import torch
from torch import Tensor

from .base import register_adapter
from .hf_vit_family import HFViTFamilyAdapter


@register_adapter
class ViTMAEAdapter(HFViTFamilyAdapter):
    """``ViTMAEModel`` (a ``ViTMAEForPreTraining`` checkpoint loads its encoder)."""

    base_class_names = ("ViTMAEModel",)
    model_types = ("vit_mae",)
    backbone_attribute = "vit"
    pre_norm_blocks = True

    def explaining(self) -> AbstractContextManager[None]:
        return self._no_masking()

    @contextmanager
    def _no_masking(self) -> Iterator[None]:
        config = self.backbone.config
        ratio = config.mask_ratio
        try:
            config.mask_ratio = 0.0
            yield
        finally:
            config.mask_ratio = ratio

    def forward_kwargs(self, pixel_values: Tensor) -> dict[str, object]:
        layout = self.token_layout(*pixel_values.shape[-2:])
        order = torch.arange(layout.num_patches, device=pixel_values.device, dtype=torch.float32)
        return {"noise": order.expand(pixel_values.shape[0], layout.num_patches)}
