"""``token_relevance_by_layer``: the relevance at every depth, against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from reference import per_layer_qkv_from_model, reference_relevance

from captum_tokenlrp import TokenRelevanceLRP

MODES = ["mean", "max", None, "per_head_mean", "last_layer_per_head"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule", ["i", "iv"])
def test_every_depth_matches_the_reference_through_the_layers_above_it(rule, mode, tiny_model, tiny_images):
    layers = per_layer_qkv_from_model(tiny_model, tiny_images)
    by_layer = TokenRelevanceLRP(tiny_model, rule=rule).token_relevance_by_layer(tiny_images, head_fusion=mode)
    depth_axis = 1 if mode in ("mean", "max", "per_head_mean") else 2
    assert by_layer.shape[depth_axis] == len(layers) + 1
    for depth in range(len(layers)):
        # R^(depth): the start moved down through layers depth .. L-1 only.
        expected = reference_relevance(tiny_model, tiny_images, rule, mode, layers=layers[depth:]).float()
        torch.testing.assert_close(by_layer.select(depth_axis, depth), expected, atol=1e-5, rtol=1e-4)
    top = by_layer.select(depth_axis, len(layers))
    start = torch.zeros_like(top)
    start[..., 0] = 1.0  # e_CLS, for every head
    torch.testing.assert_close(top, start)


@pytest.mark.parametrize("mode", ["mean", None])
def test_depth_zero_is_token_relevance_and_every_depth_conserves(mode, tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iii")
    start = torch.rand(3, 17, generator=torch.Generator().manual_seed(4))
    by_layer = lrp.token_relevance_by_layer(tiny_images, initial_relevance=start, head_fusion=mode)
    final = lrp.token_relevance(tiny_images, initial_relevance=start, head_fusion=mode)
    torch.testing.assert_close(by_layer[:, 0] if mode else by_layer[:, :, 0], final)
    totals = start.sum(-1).view(3, *([1] * (by_layer.dim() - 2)))
    torch.testing.assert_close(by_layer.sum(-1), totals.expand(by_layer.shape[:-1]), atol=1e-5, rtol=1e-6)
    assert (by_layer >= 0).all()
