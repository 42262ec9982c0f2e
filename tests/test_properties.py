"""Property-based tests over random small ViTs and random inputs (hypothesis)."""

from __future__ import annotations

import torch
from conftest import seeded, with_attention
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import ViTConfig, ViTModel

from captum_tokenlrp import TokenRelevanceLRP

RULES = st.sampled_from(["i", "ii", "iii", "iv"])
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def models_and_images(draw):
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([4, 8]))
    patch = draw(st.sampled_from([4, 8]))
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    config = ViTConfig(
        hidden_size=heads * head_dim,
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=heads,
        intermediate_size=2 * heads * head_dim,
        patch_size=patch,
        image_size=(rows * patch, cols * patch),
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=draw(st.sampled_from([0.02, 0.3, 1.0])),
    )
    model = seeded(lambda: ViTModel(with_attention(config, "eager"), add_pooling_layer=False), seed=seed)
    images = torch.randn(batch, 3, rows * patch, cols * patch, generator=torch.Generator().manual_seed(seed))
    return model, images


@SETTINGS
@given(models_and_images(), RULES, st.sampled_from(["mean", "max", "min", None, "last_layer_per_head"]))
def test_conservation_and_non_negativity(case, rule, mode):
    model, images = case
    relevance = TokenRelevanceLRP(model, rule=rule).token_relevance(images, head_fusion=mode)
    assert torch.isfinite(relevance).all() and (relevance >= 0).all()
    torch.testing.assert_close(relevance.sum(-1), torch.ones(relevance.shape[:-1]), atol=1e-5, rtol=0)


@SETTINGS
@given(models_and_images(), RULES)
def test_batch_independence_and_determinism(case, rule):
    model, images = case
    lrp = TokenRelevanceLRP(model, rule=rule)
    batched = lrp.token_relevance(images, head_fusion=None)
    assert torch.equal(batched, lrp.token_relevance(images, head_fusion=None))
    # Sample 0 does not depend on the others: pair it with fresh images.
    others = torch.randn_like(images)
    mixed = torch.cat([images[:1], others])
    # Float32 products differ in the last bits with the batch's make-up; a peaked softmax
    # (initializer_range 1.0) amplifies that to ~2e-6, hence the float32-level tolerance.
    torch.testing.assert_close(lrp.token_relevance(mixed, head_fusion=None)[:1], batched[:1], atol=1e-5, rtol=1e-4)


@SETTINGS
@given(models_and_images(), RULES)
def test_per_head_mean_is_the_papers_aggregate(case, rule):
    model, images = case
    lrp = TokenRelevanceLRP(model, rule=rule)
    per_head = lrp.token_relevance(images, head_fusion=None)
    torch.testing.assert_close(lrp.token_relevance(images, head_fusion="per_head_mean"), per_head.mean(1))
    if per_head.shape[1] == 1:  # one head: every fusion is that head
        torch.testing.assert_close(lrp.token_relevance(images), per_head[:, 0], atol=1e-6, rtol=1e-5)


@SETTINGS
@given(models_and_images())
def test_rule_i_is_rollout_of_the_models_own_attention(case):
    model, images = case
    with torch.no_grad():
        attentions = model(images, output_attentions=True).attentions
    n = attentions[0].shape[-1]
    joint = torch.eye(n, dtype=torch.float64).expand(len(images), n, n)
    for attention in attentions:
        joint = (0.5 * attention.double().mean(1) + 0.5 * torch.eye(n, dtype=torch.float64)) @ joint
    relevance = TokenRelevanceLRP(model, rule="i").token_relevance(images)
    torch.testing.assert_close(relevance.double(), joint[:, 0], atol=1e-5, rtol=1e-4)
