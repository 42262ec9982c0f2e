"""Shared models: seeded random-init ViTs with the DINO ViT-S/16 architecture and small ones.

The small "peaked" models use a large initializer range so that attention is far from uniform
and the rules give clearly different maps (default-init attention is nearly uniform).
"""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is imported, and transformers' model modules import it: without a
# GPU, the fused-kernel tests (test_fused_kernels.py) run Triton's kernels on CPU tensors in its interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import ViTConfig, ViTForImageClassification, ViTModel

from captum_tokenlrp.models import random_dino_model


def vit_layers(model):
    """Encoder blocks in either layout: model.layers (transformers 5) or model.encoder.layer (4.x)."""
    vit = getattr(model, "vit", model)
    return vit.layers if hasattr(vit, "layers") else vit.encoder.layer


def with_attention(config: ViTConfig, implementation: str) -> ViTConfig:
    """A copy of ``config`` that builds models with the given attention implementation."""
    config = ViTConfig.from_dict(config.to_dict())
    config._attn_implementation = implementation
    return config


#: A small peaked architecture: 3 layers, 4 heads, 32 px images of 4 x 4 patches.
TINY = dict(
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    patch_size=8,
    image_size=32,
    qkv_bias=True,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.3,
)


def tiny_config(**overrides) -> ViTConfig:
    return ViTConfig(**{**TINY, **overrides})


def seeded(factory, seed=0, trained_norms=False):
    """Build a model under a fixed seed (restoring the global RNG).

    trained_norms gives every LayerNorm a random scale and shift, as trained models have
    (at init they are 1 and 0, which makes the norm of a LayerNorm output constant).
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = factory().eval()
        if trained_norms:
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, torch.nn.LayerNorm):
                        module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))
                        module.bias.copy_(0.2 * torch.randn_like(module.bias))
        return model
    finally:
        torch.random.set_rng_state(state)


@pytest.fixture(scope="session")
def dino_s16() -> ViTModel:
    """Random-init ViTModel with the exact DINO ViT-S/16 architecture (12 layers, 6 heads, 197 tokens)."""
    return random_dino_model("facebook/dino-vits16", seed=0)


@pytest.fixture
def tiny_model() -> ViTModel:
    """Fresh per test (tests may set rules or hooks on it): 3 layers, 4 heads, 17 tokens."""
    return seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), trained_norms=True)


@pytest.fixture
def tiny_classifier() -> ViTForImageClassification:
    return seeded(lambda: ViTForImageClassification(tiny_config(num_labels=5)), trained_norms=True)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def dino_images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
