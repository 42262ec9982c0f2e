"""Class-sensitive token relevance (``TokenRelevanceLRP(class_sensitive=...)``) against a float64 reference.

The reference shares no code with the package: the classifier runs in float64 with eager attention,
``dS/dA`` comes from autograd on the attention probabilities the model returns (not from the output
projection's gradient, as in the package), and the rules are the per-head loops of ``reference.py``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import seeded, tiny_config, vit_layers
from helpers import Boom, assert_same_state, model_state
from reference import DOUBLE, attention_projections, reference_redistribution_from_probs
from transformers import ViTForImageClassification

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import GenericAttentionExplainability

MODES = ("heads", "attention", "attention+heads")
RULES = ("i", "ii", "iii", "iv")
#: float32 maps against the float64 reference.
TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # measured: <= 2.6e-6 absolute over every rule, mode and target


@pytest.fixture(scope="module")
def classifier() -> ViTForImageClassification:
    return seeded(lambda: ViTForImageClassification(tiny_config(num_labels=5)), trained_norms=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def float64_attention_gradients(model, pixel_values, targets):
    """Per layer `(A, v, dS/dA)` in float64, `(batch, heads, N, N)`, `(batch, heads, N, d)`, `(batch, heads, N, N)`."""
    double = copy.deepcopy(model).to(DOUBLE).eval()
    double.config._attn_implementation = "eager"
    heads = double.config.num_attention_heads
    values = []
    handles = [
        value.register_forward_hook(lambda _m, _i, out: values.append(out))
        for _q, _k, value in attention_projections(double)
    ]
    try:
        outputs = double(pixel_values.to(DOUBLE), output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    batch = len(pixel_values)
    chosen = outputs.logits.detach().argmax(-1) if targets is None else torch.as_tensor(targets).expand(batch)
    scalar = outputs.logits.gather(1, chosen[:, None]).sum()
    gradients = torch.autograd.grad(scalar, outputs.attentions)
    layers = []
    for attention, value, gradient in zip(outputs.attentions, values, gradients, strict=True):
        batch, tokens, width = value.shape
        split = value.reshape(batch, tokens, heads, width // heads).transpose(1, 2)
        layers.append((attention.detach(), split.detach(), gradient))
    return layers


def reference_class_sensitive(model, pixel_values, rule, mode, target=None, head_fusion="mean"):
    """Straight from the formulas in ``_core/class_weighting.py``, one sample and one head at a time."""
    layers = float64_attention_gradients(model, pixel_values, target)
    batch, heads, tokens, _ = layers[0][0].shape
    maps = []
    for b in range(batch):
        # s: the largest row sum of the positive contribution over every layer, head and query token.
        scale = max(
            float((gradient[b, h] * attention[b, h]).clamp(min=0).sum(dim=1).max())
            for attention, _values, gradient in layers
            for h in range(heads)
        )
        scale = scale if scale > 0 else 1.0
        relevance = torch.zeros(tokens, dtype=DOUBLE)
        relevance[0] = 1.0
        per_head = [relevance.clone() for _ in range(heads)]
        for index, (attention, values, gradient) in reversed(list(enumerate(layers))):
            matrices, contributions = [], []
            for h in range(heads):
                positive = (gradient[b, h] * attention[b, h]).clamp(min=0)
                contributions.append(float(positive.sum()))
                if mode.startswith("attention"):
                    w = positive / scale
                else:
                    w = attention[b, h]
                matrices.append(reference_redistribution_from_probs(w, values[b, h], rule))
            if mode.endswith("heads"):
                total = sum(contributions)
                alphas = [c / total if total > 0 else 1 / heads for c in contributions]
                fused = sum(alpha * matrix for alpha, matrix in zip(alphas, matrices, strict=True))
            else:
                fused = torch.stack(matrices).mean(0)
            relevance = relevance @ fused
            per_head = [r @ (m if head_fusion is None else fused) for r, m in zip(per_head, matrices, strict=True)]
            del index
        maps.append(torch.stack(per_head) if head_fusion is None else relevance)
    return torch.stack(maps)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", RULES)
def test_matches_float64_reference(classifier, images, rule, mode):
    lrp = TokenRelevanceLRP(classifier, rule=rule, class_sensitive=mode)
    for target in (None, 2):
        expected = reference_class_sensitive(classifier, images, rule, mode, target)
        got = lrp.token_relevance(images, target=target)
        torch.testing.assert_close(got.double(), expected, **TOLERANCE)


@pytest.mark.parametrize("rule", ("ii", "iv"))
def test_per_head_chains_match_reference(classifier, images, rule):
    lrp = TokenRelevanceLRP(classifier, rule=rule, class_sensitive="attention")
    expected = reference_class_sensitive(classifier, images, rule, "attention", 1, head_fusion=None)
    got = lrp.token_relevance(images, target=1, head_fusion=None)
    torch.testing.assert_close(got.double(), expected, **TOLERANCE)


@pytest.mark.parametrize("mode", MODES)
def test_conserved_non_negative_and_target_dependent(classifier, images, mode):
    lrp = TokenRelevanceLRP(classifier, rule="iv", class_sensitive=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "class-agnostic" warning: the target is used
        maps = [lrp.token_relevance(images, target=target) for target in range(5)]
    for relevance in maps:
        torch.testing.assert_close(relevance.sum(-1), torch.ones(len(images)), atol=1e-5, rtol=0)
        assert relevance.min() >= 0
    assert (maps[0] - maps[3]).abs().max() > 1e-3
    predicted = classifier(images).logits.argmax(-1)
    torch.testing.assert_close(lrp.token_relevance(images), lrp.token_relevance(images, target=predicted))
    attributions, delta = lrp.attribute(images, target=4, return_convergence_delta=True)
    assert attributions.shape == images.shape
    assert delta.abs().max() < 1e-5


def test_by_rule_is_one_pass_of_the_single_rule_calls(classifier, images):
    lrp = TokenRelevanceLRP(classifier, class_sensitive="attention")
    by_rule = lrp.token_relevance_by_rule(images, RULES, target=3, head_fusions=("mean", None))
    for name in RULES:
        single = TokenRelevanceLRP(classifier, rule=name, class_sensitive="attention")
        for mode in ("mean", None):
            torch.testing.assert_close(by_rule[name][mode], single.token_relevance(images, target=3, head_fusion=mode))


def test_class_agnostic_default_is_unchanged(classifier, images):
    plain = TokenRelevanceLRP(classifier, rule="ii")
    assert plain.class_sensitive is None and not plain.target_sensitive
    with pytest.warns(UserWarning, match="class-agnostic"):
        first = plain.token_relevance(images, target=0)
    torch.testing.assert_close(first, plain.token_relevance(images, target=4))


def test_gradient_matches_gae_sign_convention(classifier, images):
    """Rule (i) with class attention keeps only positively contributing attention, as GAE does: the two maps
    must be clearly correlated (they differ by the scale of the contributions and the row normalisation)."""
    lrp = TokenRelevanceLRP(classifier, rule="i", class_sensitive="attention")
    gae = GenericAttentionExplainability(classifier)
    ours, theirs = lrp.token_relevance(images, target=1)[:, 1:], gae.token_relevance(images, target=1)[:, 1:]
    correlation = torch.corrcoef(torch.stack([ours.flatten(), theirs.flatten()]))[0, 1]
    assert correlation > 0.5


def test_errors(classifier, images, tiny_model):
    with pytest.raises(ValueError, match="class_sensitive must be one of"):
        TokenRelevanceLRP(classifier, class_sensitive="gradient")
    with pytest.raises(ValueError, match="no classification head"):
        TokenRelevanceLRP(tiny_model, class_sensitive="heads")
    lrp = TokenRelevanceLRP(classifier, class_sensitive="heads")
    with pytest.raises(ValueError, match='head_fusion must be "mean"'):
        lrp.token_relevance(images, head_fusion=None)
    with pytest.raises(ValueError, match="initial_relevance"):
        lrp.token_relevance(images, initial_relevance=torch.ones(17) / 17)
    with pytest.raises(ValueError, match="out of range"):
        lrp.token_relevance(images, target=5)
    with pytest.raises(ValueError, match="all_token_relevance"):
        lrp.all_token_relevance(images)


def test_model_unchanged_also_after_an_exception(images):
    model = seeded(lambda: ViTForImageClassification(tiny_config(num_labels=5)), trained_norms=True)
    model.train()
    lrp = TokenRelevanceLRP(model, class_sensitive="attention+heads")
    before = model_state(model, images)
    lrp.token_relevance(images, target=2)
    assert_same_state(before, model_state(model, images))

    def explode(_module, _inputs, _output):
        raise Boom("failure inside the forward pass")

    handle = vit_layers(model)[1].register_forward_hook(explode)
    with pytest.raises(Boom):
        lrp.token_relevance(images, target=2)
    handle.remove()
    assert_same_state(before, model_state(model, images))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("rule", ("i", "iv"))
def test_one_rule_several_head_modes_from_one_pass(classifier, images, rule):
    """A single rule's kernel works in place on the class attention: every head mode must still see the
    same matrices."""
    lrp = TokenRelevanceLRP(classifier, rule=rule, class_sensitive="attention")
    modes = ("mean", None, "per_head_mean", "last_layer_per_head")
    by_rule = lrp.token_relevance_by_rule(images, [rule], target=2, head_fusions=modes)
    for mode in modes:
        torch.testing.assert_close(by_rule[rule][mode], lrp.token_relevance(images, target=2, head_fusion=mode))
