"""DeiT, DINOv2 and DINOv2 with registers: same guarantees as ViT, with their own special tokens."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES, build
from reference import per_layer_qkv_from_model, reference_relevance

from captum_tokenlrp import TokenRelevanceLRP, supported_model_classes
from captum_tokenlrp.baselines import AttentionRollout, GenericAttentionExplainability, RawAttention


def test_every_family_is_listed():
    listed = set(supported_model_classes())
    assert set(FAMILIES) | {"ViTModel", "ViTForImageClassification"} <= listed
    assert {"Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification"} <= listed


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("rule", ["i", "iv"])
def test_matches_reference_and_conserves(name, rule, tiny_images):
    model, specials = build(name)
    lrp = TokenRelevanceLRP(model, rule=rule)
    layout = lrp.token_layout(tiny_images)
    assert layout.num_special_tokens == specials and layout.num_tokens == specials + 16
    start = lrp.token_relevance(tiny_images, initial_relevance=torch.eye(layout.num_tokens)[0])
    layers = per_layer_qkv_from_model(model, tiny_images)
    for mode in ("mean", None):
        ref = reference_relevance(model, tiny_images, rule, mode, layers=layers)
        fast = lrp.token_relevance(tiny_images, initial_relevance=torch.eye(layout.num_tokens)[0], head_fusion=mode)
        torch.testing.assert_close(fast.double(), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(start.sum(-1), torch.ones(3), atol=1e-5, rtol=0)
    pixels, delta = lrp.attribute(tiny_images, return_convergence_delta=True)
    assert pixels.shape == tiny_images.shape and delta.abs().max() < 1e-5
    torch.testing.assert_close(pixels.sum((1, 2, 3)), lrp.token_relevance(tiny_images)[:, specials:].sum(-1))


def test_deit_distillation_token_can_start(tiny_images):
    model, _ = build("DeiTModel")
    lrp = TokenRelevanceLRP(model, rule="iv")
    from_cls = lrp.token_relevance(tiny_images, target=0)
    from_distillation = lrp.token_relevance(tiny_images, target=1)
    assert (from_cls - from_distillation).abs().max() > 1e-4
    assert lrp.token_layout(tiny_images).special_token_names == ("cls", "distillation")


def test_deit_with_teacher_starts_half_on_each_special_token(tiny_images):
    model, _ = build("DeiTForImageClassificationWithTeacher")
    lrp = TokenRelevanceLRP(model, rule="iii")
    backbone = TokenRelevanceLRP(model.deit, rule="iii")
    expected = 0.5 * backbone.token_relevance(tiny_images, target=0) + 0.5 * backbone.token_relevance(
        tiny_images, target=1
    )
    torch.testing.assert_close(lrp.token_relevance(tiny_images, target=2), expected, atol=1e-6, rtol=1e-5)


def test_dinov2_classifier_starts_where_its_head_reads(tiny_images):
    model, _ = build("Dinov2ForImageClassification")
    start = torch.zeros(17)
    start[0] = 0.5
    start[1:] = 0.5 / 16
    expected = TokenRelevanceLRP(model.dinov2).token_relevance(tiny_images, initial_relevance=start)
    torch.testing.assert_close(TokenRelevanceLRP(model).token_relevance(tiny_images), expected)


@pytest.mark.skipif("Dinov2WithRegistersModel" not in FAMILIES, reason="transformers < 4.48 has no registers model")
def test_registers_are_special_tokens_not_pixels(tiny_images):
    model, _ = build("Dinov2WithRegistersModel")
    lrp = TokenRelevanceLRP(model, rule="ii")
    layout = lrp.token_layout(tiny_images)
    assert layout.special_token_names == ("cls", "register_0", "register_1", "register_2", "register_3")
    relevance = lrp.token_relevance(tiny_images)
    assert (relevance[:, 1:5] > 0).all()
    torch.testing.assert_close(lrp.attribute(tiny_images).sum((1, 2, 3)), relevance[:, 5:].sum(-1))


def test_dinov2_takes_any_image_size():
    model, _ = build("Dinov2Model")
    images = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    lrp = TokenRelevanceLRP(model, rule="iv")
    relevance = lrp.token_relevance(images)
    assert relevance.shape == (2, 1 + 5 * 7)
    assert lrp.attribute(images).shape == images.shape


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in ("DeiTForImageClassificationWithTeacher", "Dinov2WithRegistersForImageClassification")
        if n in FAMILIES
    ],
)
def test_baselines_run_on_other_families(name, tiny_images):
    model, specials = build(name)
    for method in (RawAttention(model), AttentionRollout(model), GenericAttentionExplainability(model)):
        relevance = method.token_relevance(tiny_images)
        assert relevance.shape == (3, specials + 16) and torch.isfinite(relevance).all()
    rollout = AttentionRollout(model).token_relevance(tiny_images)
    torch.testing.assert_close(rollout, TokenRelevanceLRP(model, rule="i").token_relevance(tiny_images))
