"""Rule (i) with heads fused by mean is Attention Rollout (Abnar & Zuidema 2020)."""

from __future__ import annotations

import pytest
import torch
from conftest import seeded, tiny_config, with_attention
from transformers import ViTModel

from captum_tokenlrp import RULE_I, TokenRelevanceLRP


def rollout_from_model_attentions(model, pixel_values):
    """Rollout from the model's own eager attention probabilities: prod_l (0.5 A_l + 0.5 I), CLS row."""
    with torch.no_grad():
        attentions = model(pixel_values, output_attentions=True).attentions
    n = attentions[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    joint = eye.expand(pixel_values.shape[0], n, n)
    for layer_attention in attentions:  # input side first
        fused = 0.5 * layer_attention.double().mean(dim=1) + 0.5 * eye
        joint = fused @ joint
    return joint[:, 0, :]


def test_rule_i_mean_equals_rollout_of_eager_attentions(tiny_images):
    model = seeded(lambda: ViTModel(with_attention(tiny_config(), "eager"), add_pooling_layer=False))
    expected = rollout_from_model_attentions(model, tiny_images)
    got = TokenRelevanceLRP(model, rule=RULE_I).token_relevance(tiny_images)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)


def test_rule_i_mean_equals_rollout_on_dino_config(dino_s16, dino_images):
    model = seeded(lambda: ViTModel(with_attention(dino_s16.config, "eager"), add_pooling_layer=False))
    model.load_state_dict(dino_s16.state_dict())
    expected = rollout_from_model_attentions(model, dino_images)
    got = TokenRelevanceLRP(model, rule="i").token_relevance(dino_images)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not ViTModel._supports_sdpa, reason="this transformers release has no SDPA attention for ViT")
def test_eager_and_sdpa_give_the_same_relevance(tiny_images):
    eager = seeded(lambda: ViTModel(with_attention(tiny_config(), "eager"), add_pooling_layer=False))
    sdpa = seeded(lambda: ViTModel(with_attention(tiny_config(), "sdpa"), add_pooling_layer=False))
    for rule in ("i", "iv"):
        a = TokenRelevanceLRP(eager, rule=rule).token_relevance(tiny_images, head_fusion=None)
        b = TokenRelevanceLRP(sdpa, rule=rule).token_relevance(tiny_images, head_fusion=None)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert eager.config._attn_implementation == "eager"
    assert sdpa.config._attn_implementation == "sdpa"
