"""The fast path equals a float64 reference written straight from METHOD.md."""

from __future__ import annotations

import pytest
import torch
from conftest import vit_layers
from reference import per_layer_qkv_float64, per_layer_qkv_from_model, reference_relevance

from captum_tokenlrp import RULE_II, TokenRelevanceLRP

RULES = ["i", "ii", "iii", "iv"]
MODES = ["mean", "max", "min", None, "per_head_mean", "last_layer_per_head"]


def assert_close(fast, ref, atol=1e-5, rtol=1e-4):
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast.double(), ref, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def dino_reference_layers(dino_s16, dino_images):
    return per_layer_qkv_float64(dino_s16, dino_images)


@pytest.mark.slow  # the whole DINO ViT-S/16 forward in float64, for every rule and head mode
@pytest.mark.parametrize("rule", RULES)
def test_dino_vits16_config_matches_float64_reference(rule, dino_s16, dino_images, dino_reference_layers):
    lrp = TokenRelevanceLRP(dino_s16, rule=rule)
    for mode in MODES:
        fast = lrp.token_relevance(dino_images, head_fusion=mode)
        ref = reference_relevance(dino_s16, dino_images, rule, mode, layers=dino_reference_layers)
        assert fast.shape == ((2, 6, 197) if mode in (None, "last_layer_per_head") else (2, 197))
        # The whole forward is redone in float64, so this also checks what the hooks capture.
        assert_close(fast, ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("rule", RULES)
def test_peaked_tiny_model_matches_reference(rule, tiny_model, tiny_images):
    layers = per_layer_qkv_from_model(tiny_model, tiny_images)
    lrp = TokenRelevanceLRP(tiny_model, rule=rule)
    for mode in MODES:
        fast = lrp.token_relevance(tiny_images, head_fusion=mode)
        ref = reference_relevance(tiny_model, tiny_images, rule, mode, layers=layers)
        assert_close(fast, ref)
    # Attention here is far from uniform: the maps are not trivially flat.
    assert lrp.token_relevance(tiny_images).std(dim=-1).min() > 1e-3


def test_full_float64_forward_agrees_on_peaked_model(tiny_model, tiny_images):
    fast = TokenRelevanceLRP(tiny_model, rule="iv").token_relevance(tiny_images, head_fusion=None)
    ref = reference_relevance(tiny_model, tiny_images, "iv", None)
    assert_close(fast, ref)


def test_rules_differ_on_peaked_model(tiny_model, tiny_images):
    maps = {rule: TokenRelevanceLRP(tiny_model, rule=rule).token_relevance(tiny_images) for rule in RULES}
    for a in RULES:
        for b in RULES:
            if a < b:
                assert (maps[a] - maps[b]).abs().max() > 1e-3, (a, b)


def test_per_module_rule_overrides_only_that_layer(tiny_model, tiny_images):
    layers = per_layer_qkv_from_model(tiny_model, tiny_images)
    vit_layers(tiny_model)[1].attention.rule = RULE_II
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    fast = lrp.token_relevance(tiny_images, head_fusion=None)
    ref = reference_relevance(tiny_model, tiny_images, ["iv", "ii", "iv"], None, layers=layers)
    assert_close(fast, ref)
    plain = reference_relevance(tiny_model, tiny_images, "iv", None, layers=layers)
    assert (fast.double() - plain).abs().max() > 1e-4
    assert vit_layers(tiny_model)[1].attention.rule is RULE_II  # never removed
    assert [r.name for r in lrp.layer_rules()] == ["iv", "ii", "iv"]


@pytest.mark.parametrize("mode", ["mean", None])
def test_custom_start_vector_matches_reference(mode, tiny_model, tiny_images):
    start = torch.rand(3, 17, generator=torch.Generator().manual_seed(3))
    layers = per_layer_qkv_from_model(tiny_model, tiny_images)
    fast = TokenRelevanceLRP(tiny_model, rule="iii").token_relevance(
        tiny_images, initial_relevance=start, head_fusion=mode
    )
    ref = reference_relevance(tiny_model, tiny_images, "iii", mode, start=start, layers=layers)
    assert_close(fast, ref)
