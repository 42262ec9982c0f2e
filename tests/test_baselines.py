"""Baselines against independent implementations from the model's own eager attention and autograd."""

from __future__ import annotations

import pytest
import torch
from conftest import seeded, tiny_config, with_attention
from transformers import ViTForImageClassification, ViTModel

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import (
    AttentionRollout,
    ExplainedForward,
    GenericAttentionExplainability,
    RawAttention,
    TokenGradCAM,
    TokenIntegratedGradients,
    mass_threshold_mask,
    patch_sums,
)


def eager(model_class, **config):
    factory = {
        "model": lambda: ViTModel(with_attention(tiny_config(**config), "eager"), add_pooling_layer=False),
        "classifier": lambda: ViTForImageClassification(with_attention(tiny_config(num_labels=5, **config), "eager")),
    }[model_class]
    return seeded(factory, trained_norms=True)


@pytest.fixture(params=["model", "classifier"])
def eager_model(request):
    return eager(request.param)


def eager_attentions(model, images):
    with torch.no_grad():
        return model(images, output_attentions=True).attentions


def explained_scalar_reference(model, output):
    """The documented scalar, written out: class logit or <e, e.detach()> / ||e||."""
    if hasattr(output, "logits"):
        return output.logits
    embedding = output.last_hidden_state[:, 0]
    reference = embedding.detach()
    return (embedding * reference).sum(-1) / reference.norm(dim=-1)


def test_raw_attention_is_the_last_layers_cls_row(eager_model, tiny_images):
    expected = eager_attentions(eager_model, tiny_images)[-1][:, :, 0, :]
    raw = RawAttention(eager_model)
    torch.testing.assert_close(raw.token_relevance(tiny_images, head_fusion=None), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(raw.token_relevance(tiny_images), expected.mean(1), atol=1e-6, rtol=1e-5)
    fused_max = expected.amax(1) / expected.amax(1).sum(-1, keepdim=True)
    torch.testing.assert_close(raw.token_relevance(tiny_images, head_fusion="max"), fused_max, atol=1e-6, rtol=1e-5)


def test_raw_attention_of_another_token(tiny_model, tiny_images):
    model = eager("model")
    expected = eager_attentions(model, tiny_images)[-1][:, :, 7, :].mean(1)
    torch.testing.assert_close(RawAttention(model).token_relevance(tiny_images, target=7), expected, atol=1e-6, rtol=0)


def test_mass_threshold_mask_known_values():
    values = torch.tensor([[0.1, 0.5, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]])
    assert mass_threshold_mask(values, 0.6).tolist() == [[False, True, False, True], [True, True, True, False]]
    assert mass_threshold_mask(values, 0.5).tolist() == [[False, True, False, False], [True, True, False, False]]
    assert mass_threshold_mask(values, 1.0).all()
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        mass_threshold_mask(values, 0.0)


def test_raw_attention_threshold_keeps_the_top_mass(tiny_model, tiny_images):
    raw = RawAttention(tiny_model)
    full = raw.token_relevance(tiny_images, head_fusion=None)
    masked = raw.token_relevance(tiny_images, head_fusion=None, threshold=0.6)
    kept = masked[..., 1:] > 0
    share = (full[..., 1:] * kept).sum(-1) / full[..., 1:].sum(-1)
    assert (share >= 0.6 - 1e-6).all()
    torch.testing.assert_close(masked[..., 0], full[..., 0])
    assert (kept.sum(-1) < 16).any()


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_without_discard_equals_rule_i(fusion, tiny_model, tiny_images):
    rollout = AttentionRollout(tiny_model).token_relevance(tiny_images, head_fusion=fusion)
    rule_i = TokenRelevanceLRP(tiny_model, rule="i").token_relevance(tiny_images, head_fusion=fusion)
    torch.testing.assert_close(rollout, rule_i, atol=1e-6, rtol=1e-5)


def vit_explain_rollout(attentions, discard_ratio, fusion, sample, keepdim=True):
    """vit-explain's rollout loop for one sample (its discard applied to that sample, not item 0).

    vit-explain itself divides by ``a.sum(dim=-1)`` without ``keepdim`` (its issue #16), which
    divides columns instead of rows; ``keepdim=True`` is the row-normalised version this package
    implements, ``keepdim=False`` the literal one.
    """
    n = attentions[0].shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for attention in attentions:
        heads = attention[sample].double()
        fused = {"mean": heads.mean(0), "max": heads.max(0).values, "min": heads.min(0).values}[fusion]
        flat = fused.flatten().clone()
        _, indices = flat.topk(int(flat.numel() * discard_ratio), largest=False)
        indices = indices[indices != 0]
        flat[indices] = 0
        fused = flat.reshape(n, n)
        a = (fused + torch.eye(n, dtype=torch.float64)) / 2
        a = a / a.sum(dim=-1, keepdim=True) if keepdim else a / a.sum(dim=-1)
        result = a @ result
    return result[0]


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_rollout_discard_is_per_sample(fusion, tiny_images):
    model = eager("model")
    attentions = eager_attentions(model, tiny_images)
    ours = AttentionRollout(model).token_relevance(tiny_images, head_fusion=fusion, discard_ratio=0.5)
    for sample in range(len(tiny_images)):
        expected = vit_explain_rollout(attentions, 0.5, fusion, sample)
        torch.testing.assert_close(ours[sample].double(), expected, atol=1e-6, rtol=1e-5)
    single = AttentionRollout(model).token_relevance(tiny_images[2:], head_fusion=fusion, discard_ratio=0.5)
    torch.testing.assert_close(ours[2:], single, atol=1e-6, rtol=1e-5)


def test_literal_vit_explain_differs_only_where_documented(tiny_images):
    """Mean fusion without discard: rows of (A + I) / 2 already sum to 1, so both agree; max fusion or a
    discard ratio: vit-explain's column-wise division gives another map (as AttentionRollout documents)."""
    model = eager("model")
    attentions = eager_attentions(model, tiny_images)
    ours = AttentionRollout(model)
    for fusion, ratio, differs in (("mean", 0.0, False), ("max", 0.0, True), ("mean", 0.5, True)):
        mine = ours.token_relevance(tiny_images, head_fusion=fusion, discard_ratio=ratio)[0].double()
        literal = vit_explain_rollout(attentions, ratio, fusion, 0, keepdim=False)
        gap = float((mine / mine.max() - literal / literal.max()).abs().max())
        assert (gap > 1e-3) if differs else (gap < 1e-6), (fusion, ratio, gap)


def chefer_reference(model, images, targets):
    """GAE straight from the paper with the eager model's own attention probabilities and their gradients."""
    output = model(images, output_attentions=True)
    scores = explained_scalar_reference(model, output)
    if targets is not None:
        scores = scores.gather(1, targets[:, None])[:, 0]
    gradients = torch.autograd.grad(scores.sum(), output.attentions)
    n = output.attentions[0].shape[-1]
    maps = []
    for b in range(len(images)):
        r = torch.eye(n, dtype=torch.float64)
        for attention, gradient in zip(output.attentions, gradients, strict=True):
            cam = (gradient[b].double() * attention[b].double()).clamp(min=0).mean(0)
            r = r + cam @ r
        maps.append(r[0])
    return torch.stack(maps)


def test_gae_matches_chefer_with_eager_attention_gradients(eager_model, tiny_images):
    is_classifier = isinstance(eager_model, ViTForImageClassification)
    targets = torch.tensor([1, 4, 0]) if is_classifier else None
    ours = GenericAttentionExplainability(eager_model).token_relevance(tiny_images, target=targets)
    expected = chefer_reference(eager_model, tiny_images, targets)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=1e-4)
    assert (expected[:, 1:].sum(-1) > 1e-4).all()  # the gradients are not degenerate
    assert all(p.grad is None for p in eager_model.parameters())


def test_gae_default_target_is_the_predicted_class(tiny_classifier, tiny_images):
    with torch.no_grad():
        predicted = tiny_classifier(tiny_images).logits.argmax(-1)
    gae = GenericAttentionExplainability(tiny_classifier)
    torch.testing.assert_close(gae.token_relevance(tiny_images), gae.token_relevance(tiny_images, target=predicted))
    singles = torch.cat([gae.token_relevance(image[None]) for image in tiny_images])
    torch.testing.assert_close(gae.token_relevance(tiny_images), singles, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not ViTModel._supports_sdpa, reason="this transformers release has no SDPA attention for ViT")
def test_gae_independent_of_attention_implementation(tiny_images):
    sdpa = seeded(
        lambda: ViTForImageClassification(with_attention(tiny_config(num_labels=5), "sdpa")), trained_norms=True
    )
    ours = GenericAttentionExplainability(sdpa).token_relevance(tiny_images, target=2)
    expected = chefer_reference(eager("classifier"), tiny_images, torch.full((3,), 2))
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=1e-4)
    assert sdpa.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", ["model", "classifier"])
def test_integrated_gradients_completeness(kind, tiny_images):
    # A smoother model than the peaked default: 64 Riemann steps then integrate accurately.
    eager_model = eager(kind, initializer_range=0.05)
    ig = TokenIntegratedGradients(eager_model, n_steps=64)
    is_classifier = isinstance(eager_model, ViTForImageClassification)
    target = 3 if is_classifier else None
    pixels = ig.attribute(tiny_images, target=target)
    explained = ExplainedForward(eager_model)
    with torch.no_grad():
        reference = None if is_classifier else explained.reference(tiny_images)
        at_input = explained(tiny_images, reference)
        at_baseline = explained(torch.zeros_like(tiny_images), reference)
    if is_classifier:
        at_input, at_baseline = at_input[:, 3], at_baseline[:, 3]
    torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), at_input - at_baseline, atol=1e-3, rtol=1e-3)
    assert (at_input - at_baseline).abs().min() > 1e-2
    tokens = ig.token_relevance(tiny_images, target=target)
    torch.testing.assert_close(tokens, patch_sums(pixels, ig.token_layout(tiny_images)))
    torch.testing.assert_close(tokens.sum(-1), pixels.sum(dim=(1, 2, 3)), atol=1e-5, rtol=1e-5)


def test_gradcam_matches_manual_gradcam_on_last_block_input(eager_model, tiny_images):
    is_classifier = isinstance(eager_model, ViTForImageClassification)
    output = eager_model(tiny_images, output_hidden_states=True)
    entering_last = output.hidden_states[-2]
    scores = explained_scalar_reference(eager_model, output)
    if is_classifier:
        scores = scores[:, 2]
    (gradient,) = torch.autograd.grad(scores.sum(), entering_last)
    weights = gradient[:, 1:].mean(dim=1, keepdim=True)
    expected = torch.relu((weights * entering_last[:, 1:]).sum(-1)).detach()
    ours = TokenGradCAM(eager_model).token_relevance(tiny_images, target=2 if is_classifier else None)
    torch.testing.assert_close(ours[:, 1:], expected, atol=1e-5, rtol=1e-4)
    assert (ours[:, 0] == 0).all() and (expected.sum(-1) > 0).all()


def test_label_free_models_refuse_a_class_target(tiny_model, tiny_images):
    with pytest.raises(ValueError, match="target must be None"):
        GenericAttentionExplainability(tiny_model).token_relevance(tiny_images, target=1)
    with pytest.raises(ValueError, match="class index"):
        TokenGradCAM(eager("classifier")).token_relevance(tiny_images, target=9)


@pytest.mark.parametrize(
    "make", [RawAttention, AttentionRollout, GenericAttentionExplainability, TokenGradCAM, TokenIntegratedGradients]
)
def test_baselines_leave_the_model_unchanged(make, tiny_classifier, tiny_images):
    from helpers import assert_same_state, model_state

    tiny_classifier.classifier.train()
    before = model_state(tiny_classifier, tiny_images)
    method = make(tiny_classifier) if make is not TokenIntegratedGradients else make(tiny_classifier, n_steps=4)
    pixels = method.attribute(tiny_images)
    assert pixels.shape == tiny_images.shape and torch.isfinite(pixels).all()
    assert method.token_relevance(tiny_images).shape == (3, 17)
    assert_same_state(before, model_state(tiny_classifier, tiny_images))
    assert all(p.grad is None for p in tiny_classifier.parameters())
