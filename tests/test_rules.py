"""Rules against readable re-implementations of their formulas, and the rule API."""

from __future__ import annotations

import pytest
import torch
from conftest import vit_layers

from captum_tokenlrp import (
    RULE_I,
    RULE_II,
    RULE_III,
    RULE_IV,
    AttentionState,
    TokenRelevanceLRP,
    TokenRule,
    available_rules,
    get_rule,
    register_rule,
)
from captum_tokenlrp.rules import AttentionWeight, ValueDeviationActivation, normalize_rows, pairwise_distances


def random_state(batch=2, heads=3, tokens=7, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    attention = torch.softmax(torch.randn(batch, heads, tokens, tokens, generator=g) * 2, dim=-1)
    values = torch.randn(batch, heads, tokens, dim, generator=g) * 3 + 10  # far from the origin
    return AttentionState(attention=attention, values=values)


def explicit_matrix(state, b, h, use_activation, use_distance):
    w = state.attention[b, h].double()
    v = state.values[b, h].double()
    n = w.shape[0]
    m = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        z = torch.zeros(n, dtype=torch.float64)
        for j in range(n):
            a_j = torch.linalg.norm(v[j] - v.mean(0)) if use_activation else 1.0
            w_ij = w[i, j] * (torch.linalg.norm(v[j] - v[i]) if use_distance else 1.0) + (1.0 if i == j else 0.0)
            z[j] = a_j * w_ij
        m[i] = z / z.sum()
    return m


@pytest.mark.parametrize(
    ("rule", "use_activation", "use_distance"),
    [(RULE_I, False, False), (RULE_II, True, False), (RULE_III, False, True), (RULE_IV, True, True)],
)
def test_rule_matches_elementwise_formula(rule, use_activation, use_distance):
    state = random_state()
    matrix = rule.redistribution(state)
    for b in range(2):
        for h in range(3):
            expected = explicit_matrix(state, b, h, use_activation, use_distance)
            torch.testing.assert_close(matrix[b, h].double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(matrix.sum(-1), torch.ones(2, 3, 7))


def test_rule_i_is_half_attention_plus_half_identity():
    state = random_state()
    expected = 0.5 * state.attention + 0.5 * torch.eye(7)
    torch.testing.assert_close(RULE_I.redistribution(state), expected)


def test_value_distances_match_cdist_and_have_zero_diagonal():
    state = random_state(seed=4)
    expected = torch.cdist(state.values.double(), state.values.double())
    torch.testing.assert_close(state.value_distances.double(), expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(state.value_distances.diagonal(dim1=-2, dim2=-1), torch.zeros(2, 3, 7))


def test_zero_rows_fall_back_to_identity():
    state = random_state()
    state.values[0, 1] = 4.0  # every value vector identical: a_j = 0 and ||v_j - v_i|| = 0
    for rule in (RULE_II, RULE_IV):
        matrix = rule.redistribution(state)
        assert torch.equal(matrix[0, 1], torch.eye(7))
        assert torch.isfinite(matrix).all()
    rows = normalize_rows(torch.tensor([[0.0, 0.0], [1.0, 3.0]]))
    assert torch.equal(rows, torch.tensor([[1.0, 0.0], [0.25, 0.75]]))


def test_user_rule_from_plain_callables(tiny_model, tiny_images):
    def squared_deviation(state):
        return ValueDeviationActivation()(state) ** 2

    custom = TokenRule(activation=squared_deviation, weight=AttentionWeight(), name="ii-squared")
    relevance = TokenRelevanceLRP(tiny_model, rule=custom).token_relevance(tiny_images)
    torch.testing.assert_close(relevance.sum(-1), torch.ones(3))
    assert (relevance - TokenRelevanceLRP(tiny_model, rule="ii").token_relevance(tiny_images)).abs().max() > 1e-4


def test_registry_round_trip(tiny_model, tiny_images):
    custom = TokenRule(activation=lambda s: s.values.norm(dim=-1), weight=AttentionWeight(), name="vnorm")
    register_rule("test-vnorm", custom)
    assert "test-vnorm" in available_rules()
    assert get_rule("test-vnorm") is custom
    assert get_rule("IV") is RULE_IV
    TokenRelevanceLRP(tiny_model, rule="test-vnorm").token_relevance(tiny_images)
    with pytest.raises(ValueError, match="already registered"):
        register_rule("test-vnorm", custom)
    register_rule("test-vnorm", RULE_I, overwrite=True)
    assert get_rule("test-vnorm") is RULE_I
    with pytest.raises(TypeError, match="expects a TokenRule"):
        register_rule("bad", "ii")


def test_unknown_rule_name():
    with pytest.raises(ValueError, match=r"Unknown rule 'v'.*'i', 'ii', 'iii', 'iv'"):
        get_rule("v")
    with pytest.raises(TypeError, match="rule name or a TokenRule"):
        get_rule(4)


def test_components_must_be_callable():
    with pytest.raises(TypeError, match="activation must be callable"):
        TokenRule(activation=1.0, weight=AttentionWeight())


def test_bad_user_components_are_reported(tiny_model, tiny_images):
    negative = TokenRule(activation=lambda s: -s.attention.new_ones(s.attention.shape[:-1]), weight=AttentionWeight())
    with pytest.raises(ValueError, match="non-negative"):
        TokenRelevanceLRP(tiny_model, rule=negative).token_relevance(tiny_images)
    wrong_shape = TokenRule(activation=lambda s: s.attention.new_ones(3), weight=AttentionWeight())
    with pytest.raises(ValueError, match="must return shape"):
        TokenRelevanceLRP(tiny_model, rule=wrong_shape).token_relevance(tiny_images)


def test_non_rule_on_attention_module_is_a_type_error(tiny_model, tiny_images):
    vit_layers(tiny_model)[0].attention.rule = "ii"
    with pytest.raises(TypeError, match=r"rule must be a TokenRule.*RULE_II"):
        TokenRelevanceLRP(tiny_model).token_relevance(tiny_images)
    assert all(len(m._forward_hooks) == 0 for m in tiny_model.modules())


def test_distances_are_exact_for_identical_and_nearly_identical_tokens():
    values = torch.randn(2, 3, 9, 16, generator=torch.Generator().manual_seed(5)) * 4 + 20
    values[:, :, 1] = values[:, :, 0]  # an exact duplicate (e.g. DeiT's zero-initialised special tokens)
    values[:, :, 2] = values[:, :, 0] + 1e-3  # a near duplicate, where the Gram identity cancels
    state = AttentionState(attention=torch.softmax(torch.randn(2, 3, 9, 9), -1), values=values)
    distances = state.value_distances
    assert torch.equal(distances[:, :, 0, 1], torch.zeros(2, 3))
    exact = (values.double().unsqueeze(-2) - values.double().unsqueeze(-3)).norm(dim=-1)
    torch.testing.assert_close(distances.double(), exact, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(distances[:, :, 0, 2].double(), exact[:, :, 0, 2], atol=0, rtol=1e-4)


def test_distances_from_differences_match_the_gram_path_exactly_where_it_refines():
    # Off the CPU the distances come from the differences (no host-device synchronisation); the CPU's
    # Gram identity with refinement of near pairs must agree with them, near pairs included.
    from captum_tokenlrp._core.distances import _distances_from_differences

    generator = torch.Generator().manual_seed(11)
    vectors = torch.randn(6, 40, 16, generator=generator)
    vectors[:, 5] = vectors[:, 3]  # identical tokens
    vectors[:, 7] = vectors[:, 3] + 1e-4 * torch.randn(6, 16, generator=generator)  # nearly identical
    vectors = vectors - vectors.mean(dim=-2, keepdim=True)
    direct = _distances_from_differences(vectors)
    assert torch.equal(direct.diagonal(dim1=-2, dim2=-1), torch.zeros(6, 40))
    assert torch.equal(direct[:, 3, 5], torch.zeros(6))
    exact = torch.cdist(vectors.double(), vectors.double(), compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(direct.double(), exact, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pairwise_distances(vectors), direct, atol=1e-5, rtol=1e-5)
    near = direct[:, 3, 7]
    torch.testing.assert_close(pairwise_distances(vectors)[:, 3, 7], near, atol=1e-7, rtol=1e-3)
