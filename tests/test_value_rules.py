"""The package's own rules ("ii-r4", "ii2-r4", the layer gate) against float64 references written from their
formulas (docs/method.md), on images and text, and their components' contracts."""

from __future__ import annotations

import math

import pytest
import torch
from reference import per_layer_qkv_float64
from test_rules import random_state
from text_models import build_text_model, eager_attention_and_values, token_ids

from captum_tokenlrp import TextTokenRelevanceLRP, TokenRelevanceLRP, TokenRule, get_rule
from captum_tokenlrp.rules import (
    RULE_II,
    AttentionWeight,
    LayerGatedWeight,
    ResidualWeight,
    SquaredValueDeviationActivation,
    ValueDeviationActivation,
)

DOUBLE = torch.float64
#: name -> (residual weight alpha, power p of the activation ||v_j - v_mean||^p)
NEW_RULES = {"ii-r4": (4.0, 1), "ii2-r4": (4.0, 2)}


def formula_matrix(w: torch.Tensor, v: torch.Tensor, alpha: float, power: int) -> torch.Tensor:
    """``M_ij = z_ij / sum_j' z_ij'`` with ``z_ij = ||v_j - v_mean||^p (w_ij + alpha delta_ij)``, element by element."""
    w, v = w.to(DOUBLE), v.to(DOUBLE)
    n = w.shape[0]
    v_mean = v.mean(0)
    m = torch.zeros(n, n, dtype=DOUBLE)
    for i in range(n):
        z = torch.zeros(n, dtype=DOUBLE)
        for j in range(n):
            a_j = torch.linalg.norm(v[j] - v_mean) ** power
            z[j] = a_j * (w[i, j] + (alpha if i == j else 0.0))
        m[i] = z / z.sum()
    return m


def formula_relevance(layers, start, alpha, power, head_fusion, identity_below=0):
    """float64 relevance from per-layer ``(w, v)`` `(B, H, N, N)`, `(B, H, N, d)`; layers below ``identity_below``
    are the identity. `(B, N)` for ``"mean"``, `(B, H, N)` for per-head chains (None)."""
    batch, heads, n = layers[0][0].shape[:3]
    out = []
    for b in range(batch):
        matrices = []
        for index, (w, v) in enumerate(layers):
            if index < identity_below:
                matrices.append(torch.eye(n, dtype=DOUBLE).expand(heads, n, n))
            else:
                matrices.append(torch.stack([formula_matrix(w[b, h], v[b, h], alpha, power) for h in range(heads)]))
        if head_fusion == "mean":
            r = start[b].to(DOUBLE)
            for m in reversed(matrices):
                r = r @ m.mean(0)
            out.append(r)
        else:
            chains = []
            for h in range(heads):
                r = start[b].to(DOUBLE)
                for m in reversed(matrices):
                    r = r @ m[h]
                chains.append(r)
            out.append(torch.stack(chains))
    return torch.stack(out)


def image_layers(model, images):
    """Per layer ``(w, v)`` in float64 from the float64 forward of tests/reference.py."""
    layers = []
    for q, k, v in per_layer_qkv_float64(model, images):
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        layers.append((w, v))
    return layers


@pytest.mark.parametrize("name", sorted(NEW_RULES))
def test_rule_matches_its_formula_element_by_element(name):
    alpha, power = NEW_RULES[name]
    state = random_state(seed=4)
    matrix = get_rule(name).redistribution(state)
    for b in range(2):
        for h in range(3):
            expected = formula_matrix(state.attention[b, h], state.values[b, h], alpha, power)
            torch.testing.assert_close(matrix[b, h].double(), expected, atol=1e-6, rtol=1e-5)
    assert float(matrix.min()) >= 0.0
    torch.testing.assert_close(matrix.sum(-1), torch.ones(2, 3, 7))


@pytest.mark.parametrize("name", sorted(NEW_RULES))
@pytest.mark.parametrize("head_fusion", ["mean", None])
def test_image_relevance_matches_the_float64_reference(tiny_model, tiny_images, name, head_fusion):
    alpha, power = NEW_RULES[name]
    ours = TokenRelevanceLRP(tiny_model, rule=name).token_relevance(tiny_images, head_fusion=head_fusion)
    start = torch.zeros(ours.shape[0], ours.shape[-1])
    start[:, 0] = 1.0
    expected = formula_relevance(image_layers(tiny_model, tiny_images), start, alpha, power, head_fusion)
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    assert float(ours.min()) >= 0.0  # non-negative and conserved: every map sums to the start's 1
    torch.testing.assert_close(ours.sum(-1), torch.ones(ours.shape[:-1]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(NEW_RULES))
def test_text_relevance_matches_the_float64_reference_with_padding(name):
    """On BERT, a padded batch: each sentence's map is its own (v_mean over its real tokens), padding gets 0."""
    alpha, power = NEW_RULES[name]
    model = build_text_model("bert")
    ids = token_ids(2, 8, seed=5)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    encoded = {"input_ids": ids, "attention_mask": mask}
    ours = TextTokenRelevanceLRP(model, rule=name).token_relevance(encoded, initial_relevance="mean")
    layers = eager_attention_and_values(model, ids, mask, None)
    expected = torch.zeros(2, 8, dtype=DOUBLE)
    for b in range(2):
        real = mask[b].bool().nonzero().flatten()
        real_layers = [(w[b : b + 1][:, :, real][..., real], v[b : b + 1][:, :, real]) for w, v in layers]
        start = torch.full((1, len(real)), 1.0 / len(real))
        expected[b, real] = formula_relevance(real_layers, start, alpha, power, "mean")[0]
    torch.testing.assert_close(ours.double(), expected, atol=5e-6, rtol=1e-4)
    torch.testing.assert_close(ours.sum(-1), torch.ones(2), atol=1e-6, rtol=0)


def test_one_call_for_several_rules_equals_each_rule_alone(tiny_model, tiny_images):
    explainer = TokenRelevanceLRP(tiny_model)
    together = explainer.token_relevance_by_rule(tiny_images, rules=("ii", *NEW_RULES), head_fusions=("mean", None))
    for name in ("ii", *NEW_RULES):
        for mode in ("mean", None):
            alone = TokenRelevanceLRP(tiny_model, rule=name).token_relevance(tiny_images, head_fusion=mode)
            torch.testing.assert_close(together[name][mode], alone, atol=1e-6, rtol=1e-5)


def test_residual_weight_one_is_rule_ii_and_larger_alpha_keeps_more_on_the_diagonal():
    state = random_state(seed=6)
    as_ii = TokenRule(ValueDeviationActivation(), ResidualWeight(1)).redistribution(state)
    torch.testing.assert_close(as_ii, RULE_II.redistribution(state), atol=1e-6, rtol=1e-5)
    diagonals = [
        TokenRule(ValueDeviationActivation(), ResidualWeight(alpha)).redistribution(state).diagonal(dim1=-2, dim2=-1)
        for alpha in (1, 4, 16)
    ]
    assert bool((diagonals[1] > diagonals[0]).all()) and bool((diagonals[2] > diagonals[1]).all())


def test_squared_activation_is_the_square_of_rule_ii_activation():
    state = random_state(seed=7)
    torch.testing.assert_close(SquaredValueDeviationActivation()(state), ValueDeviationActivation()(state).square())


def test_layer_gate_makes_lower_layers_the_identity(tiny_model, tiny_images):
    gated = TokenRule(ValueDeviationActivation(), LayerGatedWeight(ResidualWeight(4), first_layer=2), name="gated")
    ours = TokenRelevanceLRP(tiny_model, rule=gated).token_relevance(tiny_images)
    start = torch.zeros(ours.shape[0], ours.shape[-1])
    start[:, 0] = 1.0
    layers = image_layers(tiny_model, tiny_images)
    expected = formula_relevance(layers, start, 4.0, 1, "mean", identity_below=2)
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    state = random_state(seed=8)
    below = LayerGatedWeight(AttentionWeight(), first_layer=1)(state)  # the state's layer_index is 0
    assert torch.equal(below, torch.diag_embed(torch.ones(2, 3, 7)))
    state.layer_index = 1
    assert torch.equal(LayerGatedWeight(AttentionWeight(), first_layer=1)(state), AttentionWeight()(state))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: ResidualWeight(0), ValueError, "finite positive number, got 0"),
        (lambda: ResidualWeight(float("inf")), ValueError, "finite positive number"),
        (lambda: ResidualWeight(True), ValueError, "finite positive number, got True"),
        (lambda: ResidualWeight("4"), ValueError, "finite positive number, got '4'"),
        (lambda: LayerGatedWeight(AttentionWeight(), first_layer=-1), ValueError, "non-negative int, got -1"),
        (lambda: LayerGatedWeight(AttentionWeight(), first_layer=1.5), ValueError, "non-negative int, got 1.5"),
        (lambda: LayerGatedWeight("w", first_layer=1), TypeError, "must be callable"),
    ],
)
def test_bad_component_arguments_get_clear_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()
