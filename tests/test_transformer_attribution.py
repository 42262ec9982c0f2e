"""Transformer Attribution (Chefer, Gur & Wolf, CVPR 2021) against a port of the authors' code."""

from __future__ import annotations

import pytest
import reference_chefer_lrp as chefer
import torch
from conftest import TINY, seeded, tiny_config, vit_layers, with_attention
from helpers import Boom, assert_same_state, model_state
from transformers import DeiTConfig, DeiTForImageClassification, ViTForImageClassification, ViTModel

from captum_tokenlrp.baselines.transformer_attribution import (
    TransformerAttribution,
    add_relprop,
    linear_relprop,
    matmul_relprop,
)
from captum_tokenlrp.models import random_dino_model


def classifier(dtype=torch.float32, implementation=None):
    config = tiny_config(num_labels=5)
    if implementation is not None:
        config = with_attention(config, implementation)
    return seeded(lambda: ViTForImageClassification(config), trained_norms=True).to(dtype)


def label_free(dtype=torch.float32, trained_norms=True):
    return seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), trained_norms=trained_norms).to(dtype)


def authors_maps(model, images, targets, start_layer=0):
    """The port's map per image (their code explains one image at a time): patch entries, `(batch, patches)`."""
    port = chefer.from_hf(model)
    rows = [
        chefer.generate_transformer_attribution(
            port, image[None], None if targets is None else int(targets[i]), start_layer=start_layer
        )
        for i, image in enumerate(images)
    ]
    return torch.cat(rows).detach().double()


def authors_label_free_maps(model, images):
    """The port with a one-output head ``w = e / ||e||`` per image: the package's label-free scalar."""
    port = chefer.from_hf(model, num_classes=1)
    with torch.no_grad():
        embeddings = model(images).last_hidden_state[:, 0]
    rows = []
    for image, embedding in zip(images, embeddings, strict=True):
        with torch.no_grad():
            port.head.weight.copy_(embedding[None] / embedding.norm())
            port.head.bias.zero_()
        rows.append(chefer.generate_transformer_attribution(port, image[None], 0))
    return torch.cat(rows).detach().double()


# ----------------------------------------------------------------------------- (a) the authors' maps
@pytest.mark.parametrize(
    ("targets", "start_layer"), [(torch.tensor([1, 4, 0]), 0), (None, 0), (torch.tensor([3, 3, 2]), 1)]
)
def test_matches_the_authors_code_in_float64(targets, start_layer, tiny_images):
    """float64 model and port: equal to float32 output rounding (measured: <= 1e-9 absolute, ~1e-8 relative)."""
    model, images = classifier(torch.float64), tiny_images.double()
    ours = TransformerAttribution(model).token_relevance(images, target=targets, start_layer=start_layer)
    theirs = authors_maps(model, images, targets, start_layer)
    assert ours.shape == (3, 17) and ours.dtype == torch.float32
    torch.testing.assert_close(ours[:, 1:].double(), theirs, rtol=1e-6, atol=1e-9)
    assert (theirs.sum(-1) > 1e-3).all()  # the maps are not degenerate


def test_label_free_model_matches_the_authors_code_with_a_linear_score_head(tiny_images):
    model, images = label_free(torch.float64), tiny_images.double()
    ours = TransformerAttribution(model).token_relevance(images)
    theirs = authors_label_free_maps(model, images)
    torch.testing.assert_close(ours[:, 1:].double(), theirs, rtol=1e-6, atol=1e-9)
    assert (theirs.sum(-1) > 1e-3).all()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_matches_the_authors_code_in_float32(implementation, tiny_images):
    """float32, as the authors run it: measured max |difference| 7e-6 on maps peaking at 0.064 (1e-4 of the
    peak; the relprop divides by near-zero pre-activations, which amplifies float32 rounding alike in both)."""
    model = classifier(torch.float32, implementation)
    targets = torch.tensor([1, 4, 0])
    ours = TransformerAttribution(model).token_relevance(tiny_images, target=targets)
    theirs = authors_maps(model, tiny_images, targets)
    torch.testing.assert_close(ours[:, 1:].double(), theirs, rtol=1e-3, atol=2e-5)


# ----------------------------------------------------------------------------- (b) class sensitivity
def test_the_map_depends_on_the_target_and_defaults_to_the_prediction(tiny_images):
    model = classifier()
    method = TransformerAttribution(model)
    first, second = method.token_relevance(tiny_images, target=0), method.token_relevance(tiny_images, target=1)
    gap = (first[:, 1:] - second[:, 1:]).abs().amax(-1) / first[:, 1:].abs().amax(-1)
    assert (gap > 0.1).all(), gap
    with torch.no_grad():
        predicted = model(tiny_images).logits.argmax(-1)
    torch.testing.assert_close(
        method.token_relevance(tiny_images), method.token_relevance(tiny_images, target=predicted)
    )
    pixels = method.attribute(tiny_images, target=1)
    assert pixels.shape == tiny_images.shape and torch.isfinite(pixels).all()


# ----------------------------------------------------------------------------- (c) the model as found
def test_model_left_as_found_after_a_call_and_after_an_exception(tiny_images):
    model = classifier()
    armed = []

    def user_hook(_module, _inputs, _output):  # a user's hook, which fails when armed
        if armed:
            raise Boom("failure inside the forward pass")

    vit_layers(model)[1].register_forward_hook(user_hook)
    vit_layers(model)[2].layernorm_after.train()  # a user's mixed training state
    before = model_state(model, tiny_images)
    method = TransformerAttribution(model)
    method.token_relevance(tiny_images, target=2)
    assert_same_state(before, model_state(model, tiny_images))
    armed.append(True)
    with pytest.raises(Boom):
        method.token_relevance(tiny_images, target=2)
    armed.clear()
    assert_same_state(before, model_state(model, tiny_images))
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- (d) bad input
def test_bad_inputs_raise_clear_errors(tiny_images):
    method = TransformerAttribution(classifier())
    with pytest.raises(ValueError, match="class index"):
        method.token_relevance(tiny_images, target=9)
    with pytest.raises(ValueError, match="start_layer must be an int in \\[0, 3\\)"):
        method.token_relevance(tiny_images, start_layer=3)
    with pytest.raises(TypeError, match="its options are: start_layer"):
        method.token_relevance(tiny_images, head_fusion="mean")
    with pytest.raises(ValueError, match="channels"):
        method.token_relevance(tiny_images[:, :2])
    with pytest.raises(ValueError, match="does not match the model"):
        method.token_relevance(tiny_images[..., :24, :24])
    with pytest.raises(ValueError, match="target must be None"):
        TransformerAttribution(label_free()).token_relevance(tiny_images, target=1)
    deit = DeiTForImageClassification(DeiTConfig(**TINY, num_labels=3))
    with pytest.raises(TypeError, match="supports ViTModel and ViTForImageClassification"):
        TransformerAttribution(deit)


def test_vanishing_gradient_warns(tiny_images):
    """Unit-scale, zero-shift final LayerNorm: the label-free score ||e|| is constant, its gradient zero."""
    with pytest.warns(UserWarning, match="numerically zero"):
        TransformerAttribution(label_free(trained_norms=False)).token_relevance(tiny_images)


# ----------------------------------------------------------------------------- (e) LRP invariants
@pytest.mark.parametrize("kind", ["classifier", "label_free"])
def test_relevance_is_conserved_through_head_and_blocks(kind, tiny_images):
    """The one-hot start (total 1) reaches every block's input with total 1: the alpha-1/beta-0 Linear rule
    conserves (no bias share), the renormalised residual rule conserves exactly, the two attention products
    keep one half each, LayerNorm/GELU/softmax pass relevance through. Measured: 1 - 1.3e-8 in float64 (the
    1e-9 stabiliser); each attention's relevance is half its branch's share, so it sums to within [0, 1/2]."""
    model = classifier(torch.float64) if kind == "classifier" else label_free(torch.float64)
    method = TransformerAttribution(model)
    target = [1, 2, 3] if kind == "classifier" else None
    propagation = method._propagate(method._prepare(tiny_images.double(), None), target)
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(propagation.start.sum((1, 2)), ones, rtol=0, atol=1e-7)
    assert propagation.input_relevance[0] is None  # the map does not read below the first attention
    for relevance in propagation.input_relevance[1:]:
        torch.testing.assert_close(relevance.sum((1, 2)), ones, rtol=0, atol=1e-6)
    for relevance in propagation.attention_relevance:
        totals = relevance.sum((1, 2, 3))
        assert ((totals >= -1e-9) & (totals <= 0.5 + 1e-9)).all(), totals


def test_rules_conserve_on_random_tensors():
    generator = torch.Generator().manual_seed(0)
    inputs, weight = (
        torch.randn(2, 5, 7, generator=generator, dtype=torch.float64),
        torch.randn(4, 7, generator=generator, dtype=torch.float64),
    )
    relevance = torch.rand(2, 5, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(linear_relprop(inputs, weight, relevance).sum((1, 2)), relevance.sum((1, 2)))
    first, second = torch.randn(2, 2, 5, 7, generator=generator, dtype=torch.float64)
    shares = add_relprop(first, second, inputs)
    torch.testing.assert_close(shares[0].sum((1, 2)) + shares[1].sum((1, 2)), inputs.sum((1, 2)))
    left, right = (
        torch.rand(2, 3, 5, 5, generator=generator, dtype=torch.float64),
        torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64),
    )
    product_relevance = torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    for share in matmul_relprop(left, right, product_relevance):
        torch.testing.assert_close(share.sum((1, 2, 3)), product_relevance.sum((1, 2, 3)))


def test_dino_vit_s16_architecture_matches_the_authors_code():
    """A DINO checkpoint's configuration (ViT-S/16: 197 tokens, 6 heads, LayerNorm eps 1e-6), 4 of its 12 layers."""
    model = seeded(lambda: random_dino_model("facebook/dino-vits16", num_hidden_layers=4), trained_norms=True)
    model, image = model.double(), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)).double()
    ours = TransformerAttribution(model).token_relevance(image)
    assert ours.shape == (1, 197)
    torch.testing.assert_close(ours[:, 1:].double(), authors_label_free_maps(model, image), rtol=1e-6, atol=1e-9)
