"""TokenTM against an independent float64 port of the public TokenTM code, and its contract.

The agreement reached (float32 package vs float64 reference, tiny seeded ViTs, eager and sdpa):
max |difference| about 5e-6 for maps whose largest entry is about 4, i.e. about 1e-6 of the
map's scale and at most about 5e-5 relative on the smallest entries: float32 rounding.
"""

from __future__ import annotations

import families
import pytest
import torch
from conftest import seeded, tiny_config, vit_layers, with_attention
from helpers import FAMILIES, Boom, assert_same_state, build, model_state
from transformers import ViTForImageClassification, ViTModel

from captum_tokenlrp.baselines import GenericAttentionExplainability
from captum_tokenlrp.baselines.tokentm import TokenTM, block_norms, transformation_weights


def vit(kind: str, implementation: str = "eager"):
    factory = {
        "model": lambda: ViTModel(with_attention(tiny_config(), implementation), add_pooling_layer=False),
        "classifier": lambda: ViTForImageClassification(with_attention(tiny_config(num_labels=5), implementation)),
    }[kind]
    return seeded(factory, trained_norms=True)


def test_batch_equals_single_images(tiny_images):
    method = TokenTM(vit("classifier"))
    batch = method.token_relevance(tiny_images, target=2)
    singles = torch.cat([method.token_relevance(image[None], target=2) for image in tiny_images])
    torch.testing.assert_close(batch, singles, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ (b) the target selects the class
def test_target_selects_the_class(tiny_images):
    method = TokenTM(vit("classifier"))
    first, second = method.token_relevance(tiny_images, target=0), method.token_relevance(tiny_images, target=3)
    gap = (first[:, 1:] - second[:, 1:]).abs().amax(-1) / first[:, 1:].abs().amax(-1)
    assert (gap > 1e-2).all(), gap
    with torch.no_grad():
        predicted = method.model(tiny_images).logits.argmax(-1)
    torch.testing.assert_close(method.token_relevance(tiny_images), method.token_relevance(tiny_images, predicted))


# ------------------------------------------------------------------ (c) the model is left as found
def test_model_unchanged_after_the_call(tiny_images):
    model = vit("classifier", "sdpa")
    vit_layers(model)[1].layernorm_after.train()  # a user's mixed training state
    calls = []
    vit_layers(model)[0].register_forward_hook(lambda *args: calls.append(1))
    before = model_state(model, tiny_images)
    method = TokenTM(model)
    method.token_relevance(tiny_images)
    pixels = method.attribute(tiny_images, target=1)
    assert pixels.shape == tiny_images.shape and torch.isfinite(pixels).all()
    assert len(calls) >= 3  # the user's hook stayed in place and ran
    assert_same_state(before, model_state(model, tiny_images))
    assert all(p.grad is None for p in model.parameters())


def test_model_unchanged_after_an_exception_mid_forward(tiny_images):
    model = vit("classifier", "sdpa")

    def explode(*_args):
        raise Boom("failure inside the forward pass")

    bomb = vit_layers(model)[2].layernorm_after.register_forward_pre_hook(explode)
    before_with_bomb = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}
    with pytest.raises(Boom):
        TokenTM(model).token_relevance(tiny_images)
    after = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}
    assert after == before_with_bomb
    bomb.remove()
    assert model.config._attn_implementation == "sdpa" and not model.training
    assert all(p.grad is None for p in model.parameters())
    reference = vit("classifier", "sdpa")
    torch.testing.assert_close(
        TokenTM(model).token_relevance(tiny_images), TokenTM(reference).token_relevance(tiny_images)
    )


# ------------------------------------------------------------------ (d) bad inputs
def test_bad_inputs_are_refused(tiny_images):
    with pytest.raises(ValueError, match="target must be None"):
        TokenTM(vit("model")).token_relevance(tiny_images, target=1)
    classifier = TokenTM(vit("classifier"))
    with pytest.raises(ValueError, match="class index"):
        classifier.token_relevance(tiny_images, target=9)
    with pytest.raises(ValueError):
        classifier.token_relevance(tiny_images[:, :, :20])  # not a whole number of patches / wrong size
    with pytest.raises(ValueError, match="by keyword"):
        classifier.token_relevance(tiny_images, additional_forward_args=(None,))
    with pytest.raises(TypeError):
        TokenTM(torch.nn.Linear(2, 2))


def test_a_block_without_the_two_norms_is_a_type_error(tiny_images):
    model = vit("model")
    layer = vit_layers(model)[1]
    layer.norm_after_attention = layer.layernorm_after
    del layer.layernorm_after
    with pytest.raises(TypeError, match="LayerNorm"):
        TokenTM(model).token_relevance(tiny_images)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(TypeError, match="layernorm_before/layernorm_after"):
        block_norms(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ (e) invariants of the method
def test_transformation_weights_known_values():
    tokens = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    # Unchanged tokens: length ratio 1, cosine 1 everywhere, NECC uniform.
    torch.testing.assert_close(transformation_weights(tokens, tokens), torch.full((2, 5), 0.2))
    # Scaling by c multiplies the length ratio and leaves the direction: w = c / N.
    torch.testing.assert_close(transformation_weights(tokens, 3.0 * tokens), torch.full((2, 5), 0.6))
    # NECC sums to 1 over the tokens: with equal lengths, w sums to 1.
    turned = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(4))
    turned = turned / turned.norm(dim=-1, keepdim=True) * tokens.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(transformation_weights(tokens, turned).sum(-1), torch.ones(2))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_gives_a_non_negative_finite_map(name, tiny_images):
    model, specials = build(name)
    method = TokenTM(model)
    relevance = method.token_relevance(tiny_images)
    assert relevance.shape == (3, specials + 16)
    assert torch.isfinite(relevance).all() and (relevance >= 0).all()
    assert (relevance[:, specials:].sum(-1) > 0).all()


@pytest.mark.parametrize("name", ["CLIPVisionModel", "SiglipVisionModel", "BeitForImageClassification", "ViTMAEModel"])
def test_other_families_give_a_non_negative_finite_map(name):
    model, info = families.build(name)
    images = torch.randn(2, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(5))
    relevance = TokenTM(model).token_relevance(images)
    assert relevance.shape == (2, info.num_tokens)
    assert torch.isfinite(relevance).all() and (relevance >= 0).all()
    assert (relevance[:, info.num_special_tokens :].sum(-1) > 0).all()


def test_differs_from_gae_by_the_transformation_weights(tiny_images):
    """Same gradients and attention, another aggregation: TokenTM is not GAE renamed."""
    model = vit("classifier")
    tokentm = TokenTM(model).token_relevance(tiny_images, target=2)
    gae = GenericAttentionExplainability(model).token_relevance(tiny_images, target=2)
    normalised = [m[:, 1:] / m[:, 1:].sum(-1, keepdim=True) for m in (tokentm, gae)]
    assert float((normalised[0] - normalised[1]).abs().max()) > 1e-3
