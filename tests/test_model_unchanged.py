"""attribute/token_relevance leave the user's model exactly as they found it, also on error."""

from __future__ import annotations

import pytest
import torch
from conftest import vit_layers
from helpers import Boom, assert_same_state, exploding_weight, model_state

from captum_tokenlrp import RULE_II, TokenRelevanceLRP, TokenRule
from captum_tokenlrp.rules import UnitActivation


def snapshot(model, images):
    return model_state(model, images)


def assert_same(before, after):
    assert_same_state(before, after)


def test_model_unchanged_after_calls(tiny_model, tiny_images):
    vit_layers(tiny_model)[2].attention.rule = RULE_II
    calls = []
    vit_layers(tiny_model)[0].register_forward_hook(lambda *args: calls.append(1))
    vit_layers(tiny_model)[1].layernorm_after.train()  # a user's mixed training state
    before = snapshot(tiny_model, tiny_images)
    calls.clear()
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    for mode in ("mean", None, "last_layer_per_head"):
        lrp.token_relevance(tiny_images, head_fusion=mode)
    lrp.attribute(tiny_images, return_convergence_delta=True)
    assert len(calls) == 4  # the user's hook stayed and fired on every forward
    assert_same(before, snapshot(tiny_model, tiny_images))


def test_model_unchanged_after_exception_mid_forward(tiny_model, tiny_images):
    tiny_model.train()
    before = snapshot(tiny_model, tiny_images)
    lrp = TokenRelevanceLRP(tiny_model, rule=TokenRule(UnitActivation(), exploding_weight))
    with pytest.raises(Boom):
        lrp.token_relevance(tiny_images)
    assert_same(before, snapshot(tiny_model, tiny_images))
    assert tiny_model.training


def test_training_mode_gives_eval_maps(tiny_images):
    from conftest import seeded, tiny_config
    from transformers import ViTModel

    model = seeded(lambda: ViTModel(tiny_config(hidden_dropout_prob=0.5), add_pooling_layer=False))
    lrp = TokenRelevanceLRP(model, rule="iv")
    eval_map = lrp.token_relevance(tiny_images)
    model.train()
    torch.testing.assert_close(lrp.token_relevance(tiny_images), eval_map)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("rule", ["i", "iv"])
@pytest.mark.parametrize("mode", ["mean", None])
@pytest.mark.parametrize("capture", ["fast", "exact"])
def test_forward_inside_the_call_is_the_plain_forward(rule, mode, capture, tiny_model, tiny_images):
    """Nothing the hooks do (in-place work on reused buffers) leaks into the model's own computation.

    The default ``"fast"`` capture forms each layer's output from its own float32 attention: the model's
    outputs within float32 rounding of its sdpa kernel; ``"exact"`` keeps them bitwise.
    """
    with torch.no_grad():
        expected = tiny_model(tiny_images).last_hidden_state.clone()
    seen = []
    handle = tiny_model.register_forward_hook(lambda module, args, output: seen.append(output.last_hidden_state))
    options = {} if capture == "fast" else {"attention_capture": capture}
    try:
        TokenRelevanceLRP(tiny_model, rule=rule, max_chunk_elements=2 * 17 * 17 * 3, **options).token_relevance(
            tiny_images, head_fusion=mode
        )
    finally:
        handle.remove()
    if capture == "exact":
        assert torch.equal(seen[0], expected)
    else:
        torch.testing.assert_close(seen[0], expected, atol=2e-5, rtol=1e-5)
