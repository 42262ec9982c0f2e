"""A control for evaluations: relevance drawn at random, independent of the model."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from .._core.base import PreparedInputs, TokenAttribution
from .._utils.validation import TargetType

__all__ = ["RandomRelevance"]


class RandomRelevance(TokenAttribution):
    """Uniform random relevance on the patch tokens (special tokens get 0): the floor every
    metric should be read against.

    Each image's map depends only on ``seed`` and the image's values, not on the batch it is
    in, so evaluations in different batch sizes agree. ``token_relevance`` gives
    `(batch_size, num_tokens)`, uniform in [0, 1) on the patches and 0 on special tokens;
    ``target`` is accepted for a common interface and ignored.

    Parameters
    ----------
    model : nn.Module
        A supported HuggingFace ViT; only its token layout is used.
    seed : int, default 0
    tokenizer : tokenizer or processor, optional
        Tokenizes prompt strings given as ``target`` to an image-text model (CLIP, SigLIP).
    """

    def __init__(self, model: torch.nn.Module, seed: int = 0, *, tokenizer: Any = None) -> None:
        super().__init__(model, tokenizer=tokenizer)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
        self.seed = seed

    def _token_relevance(self, prepared: PreparedInputs, target: TargetType) -> Tensor:
        pixel_values, layout = prepared.pixel_values, prepared.layout
        relevance = torch.zeros(pixel_values.shape[0], layout.num_tokens)
        for index, image in enumerate(pixel_values.detach().float().cpu()):
            digest = hashlib.blake2b(image.numpy().tobytes(), digest_size=8, key=str(self.seed).encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)
            relevance[index, layout.patch_slice] = torch.rand(layout.num_patches, generator=generator)
        return relevance.to(pixel_values.device)

    @classmethod
    def get_name(cls) -> str:
        return "Random Relevance"
