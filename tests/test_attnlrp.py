"""AttnLRP against a port of the authors' lxt code, its conservation accounting, and the model left as found."""

from __future__ import annotations

import pytest
import torch
from conftest import seeded, tiny_config, vit_layers, with_attention
from families import build as build_family
from families import eager_copy, identity_noise
from helpers import FAMILIES, assert_same_state, model_state
from helpers import build as build_vit_family
from reference_attnlrp import _backbone, explained_score, lxt_relevance
from transformers import Dinov2Config, Dinov2Model, ViTForImageClassification, ViTModel

from captum_tokenlrp.baselines.attnlrp import AttnLRP
from captum_tokenlrp.baselines.gradient import patch_sums


class Boom(RuntimeError):
    pass


def vit(kind, implementation="sdpa", **config):
    factory = {
        "model": lambda: ViTModel(with_attention(tiny_config(**config), implementation), add_pooling_layer=False),
        "classifier": lambda: ViTForImageClassification(
            with_attention(tiny_config(num_labels=5, **config), implementation)
        ),
    }[kind]
    return seeded(factory, trained_norms=True)


def model_named(name):
    if name in ("model", "classifier"):
        return vit(name)
    if name == "eager-classifier":
        return vit("classifier", "eager")
    with torch.random.fork_rng():  # helpers.build draws DINOv2's LayerScale from the global generator
        torch.manual_seed(0)
        return build_vit_family(name)[0]


def targets_for(model, batch):
    """One class per sample for a classifier (its heads: ``classifier`` or DeiT's ``cls_classifier``), else None."""
    is_classifier = hasattr(model, "classifier") or hasattr(model, "cls_classifier")
    return torch.arange(batch) % model.config.num_labels if is_classifier else None


def first_block(model):
    backbone = _backbone(model)
    return (backbone.layers if hasattr(backbone, "layers") else backbone.encoder.layer)[0]


def relative_error(ours, expected):
    return float((ours.double() - expected.double()).abs().max() / expected.double().abs().max())


# ------------------------------------------------------------------ (a) the authors' rules
@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize("name", ["model", "classifier", "eager-classifier", *FAMILIES])
def test_matches_the_lxt_port_in_float64(name, variant, tiny_images):
    """The package (hooks on the model's own modules, any attention implementation) against lxt's functions
    patched into an eager float64 copy. Measured: <= 5e-7 of the largest |R| (<= 4e-8 on eager models):
    HF's eager attention computes the softmax in float32 even in a float64 model, which bounds it."""
    model = model_named(name).double()
    images = tiny_images.double()
    target = targets_for(model, len(images))
    ours = AttnLRP(model).token_relevance(images, target=target, attention_rule=variant)
    expected = lxt_relevance(eager_copy(model), images, target, variant)
    assert ours.shape == expected.shape
    assert relative_error(ours, expected) < 5e-6
    assert expected[:, 1:].abs().sum() > 1e-3  # patches get relevance: the comparison is not vacuous


@pytest.mark.parametrize("kind", ["model", "classifier"])
def test_matches_the_lxt_port_in_float32(kind, tiny_images):
    """float32: the package keeps the model's own forward (F.layer_norm), lxt recomputes LayerNorm by hand;
    measured <= 5e-6 of the largest |R|."""
    model = vit(kind)
    target = torch.tensor([1, 4, 0]) if kind == "classifier" else None
    ours = AttnLRP(model).token_relevance(tiny_images, target=target)
    expected = lxt_relevance(eager_copy(model, torch.float32), tiny_images, target)
    assert relative_error(ours, expected) < 2e-5


def test_vit_mae_matches_the_lxt_port(tiny_images):
    model, _ = build_family("ViTMAEModel")
    model = model.double()
    images = tiny_images.double()
    ours = AttnLRP(model).token_relevance(images)
    expected = lxt_relevance(eager_copy(model), images, noise=identity_noise(images).double())
    assert relative_error(ours, expected) < 1e-6


# ------------------------------------------------------------------ (b) conservation
def without_biases(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
    return model


@pytest.mark.parametrize("name", ["model", "classifier", "Dinov2ForImageClassification"])
def test_cp_conserves_exactly_without_biases(name, tiny_images):
    """CP-LRP inside the attention and lxt's rules elsewhere conserve every step (LayerNorm with constant std,
    GELU identity rule, A v with A constant); without biases nothing absorbs relevance: sum_t R_t = S
    (float64 model; within 1e-6 of sum_t |R_t|: the output is float32, and HF's eager softmax too).
    Plain Gradient x Input does not conserve (LayerNorm and GELU are not homogeneous)."""
    model = without_biases(model_named(name).double())
    images = tiny_images.double()
    target = targets_for(model, len(images))
    relevance = AttnLRP(model).token_relevance(images, target=target, attention_rule="cp")
    _, score, bias_terms, _ = lxt_relevance(eager_copy(model), images, target, "cp", with_terms=True)
    assert bias_terms == 0.0
    relevance = relevance.double()
    assert ((relevance.sum(-1) - score).abs() < 1e-6 * relevance.abs().sum(-1)).all()  # float32 output
    plain = plain_gradient_times_input(model, images, target)
    assert (plain.sum(-1) - score).abs().max() > 1e-2


def plain_gradient_times_input(model, images, target):
    tokens = []

    def leaf(_module, args):
        tokens.append(args[0].detach().requires_grad_(True))
        return (tokens[-1], *args[1:])

    handle = first_block(model).register_forward_pre_hook(leaf)
    try:
        score = explained_score(model, model(images), target)
        (gradient,) = torch.autograd.grad(score.sum(), tokens)
    finally:
        handle.remove()
    return (tokens[0] * gradient).sum(-1).detach()


@pytest.mark.parametrize("biases", [False, True], ids=["bias-free", "with-biases"])
@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
@pytest.mark.parametrize("kind", ["model", "classifier"])
def test_relevance_accounting(kind, variant, biases, tiny_images):
    """S = sum_t R_t + sum_b b * dS/db + softmax terms, summed over the batch (float64 model, float32 relevance): the
    biases and AttnLRP's softmax rule (sum_i (x_i - sum_j s_j x_j) R_i^out per row instead of sum_i R_i^out)
    are the only places relevance leaves. Under "attnlrp" the softmax term is not small: measured, the
    token relevance sums to 33-63% of the logit on these random models."""
    model = vit(kind, "eager").double()
    if not biases:
        without_biases(model)
    images = tiny_images.double()
    target = torch.tensor([1, 4, 0]) if kind == "classifier" else None
    relevance = AttnLRP(model).token_relevance(images, target=target, attention_rule=variant).double()
    _, score, bias_terms, softmax_terms = lxt_relevance(eager_copy(model), images, target, variant, with_terms=True)
    total = float(relevance.sum()) + bias_terms + softmax_terms
    scale = float(relevance.abs().sum()) + abs(bias_terms) + abs(softmax_terms)
    assert abs(total - float(score.sum())) < 1e-6 * scale  # float32 output; measured <= 1e-7
    assert (softmax_terms == 0.0) == (variant == "cp")
    if variant == "attnlrp":
        assert abs(softmax_terms) > 1e-2 * abs(float(score.sum()))


def test_pixel_map_sums_to_the_patch_tokens(tiny_images):
    model = vit("classifier")
    method = AttnLRP(model)
    pixels = method.attribute(tiny_images, target=2)
    tokens = method.token_relevance(tiny_images, target=2)
    assert pixels.shape == tiny_images.shape
    torch.testing.assert_close(
        patch_sums(pixels, method.token_layout(tiny_images)),
        torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, 1:]], dim=1),
        atol=1e-6,
        rtol=1e-5,
    )


# ------------------------------------------------------------------ (c) the model is left as found
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_model_unchanged_after_calls(implementation, tiny_images):
    model = vit("classifier", implementation)
    model.classifier.train()  # a user's mixed training state
    calls = []
    vit_layers(model)[0].register_forward_hook(lambda *args: calls.append(1))
    before = model_state(model, tiny_images)
    method = AttnLRP(model)
    method.token_relevance(tiny_images)
    method.token_relevance(tiny_images, target=3, attention_rule="cp")
    method.attribute(tiny_images, target=1)
    assert_same_state(before, model_state(model, tiny_images))
    assert model.classifier.training and not model.vit.training
    assert len(calls) > 3  # the user's hook stayed and fired


def test_model_unchanged_after_an_exception_mid_forward(tiny_images):
    model = vit("classifier")
    before = model_state(model, tiny_images)

    def explode(_module, _args, _output):
        if torch.is_grad_enabled():  # inside the explanation's forward, after the rules' hooks were installed
            raise Boom("failure inside the forward pass")

    handle = (
        vit_layers(model)[1].mlp.register_forward_hook(explode)
        if hasattr(vit_layers(model)[1], "mlp")
        else vit_layers(model)[1].output.register_forward_hook(explode)
    )
    with pytest.raises(Boom):
        AttnLRP(model).token_relevance(tiny_images, target=0)
    handle.remove()
    assert_same_state(before, model_state(model, tiny_images))


@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
def test_forward_inside_the_call_is_the_models_own(variant, tiny_images):
    """The rules change only the backward: the logits seen inside the call are bitwise the model's."""
    model = vit("classifier")
    with torch.no_grad():
        expected = model(tiny_images).logits.clone()
    seen = []
    handle = model.register_forward_hook(lambda _m, _a, output: seen.append(output.logits.detach().clone()))
    try:
        AttnLRP(model).token_relevance(tiny_images, target=1, attention_rule=variant)
    finally:
        handle.remove()
    assert seen and all(torch.equal(logits, expected) for logits in seen)


# ------------------------------------------------------------------ (d) target
def test_target_selects_the_class(tiny_images):
    model = vit("classifier")
    method = AttnLRP(model)
    first, second = method.token_relevance(tiny_images, target=0), method.token_relevance(tiny_images, target=3)
    assert (first - second).abs().amax(dim=-1).min() > 1e-3
    with torch.no_grad():
        predicted = model(tiny_images).logits.argmax(-1)
    torch.testing.assert_close(
        method.token_relevance(tiny_images), method.token_relevance(tiny_images, target=predicted)
    )
    mixed = method.token_relevance(tiny_images, target=[0, 3, 0])
    torch.testing.assert_close(mixed[1], second[1])
    torch.testing.assert_close(mixed[2], first[2])
    singles = torch.cat([method.token_relevance(image[None], target=3) for image in tiny_images])
    torch.testing.assert_close(second, singles, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------ (e) errors
def test_unsupported_models_are_refused():
    for name in ("BeitModel", "CLIPVisionModel"):
        with pytest.raises(TypeError, match="AttnLRP covers pre-norm ViT blocks"):
            AttnLRP(build_family(name)[0])
    swiglu = Dinov2Model(Dinov2Config(**{**_dinov2_size(), "use_swiglu_ffn": True}))
    with pytest.raises(TypeError, match="SwiGLU"):
        AttnLRP(swiglu)
    function_activation = vit("model")  # the activation as a plain function (4.x accepts a callable hidden_act)
    block = vit_layers(function_activation)[1]
    owner, attribute = (
        (block.mlp, "activation_fn") if hasattr(block, "mlp") else (block.intermediate, "intermediate_act_fn")
    )
    delattr(owner, attribute)
    setattr(owner, attribute, torch.nn.functional.gelu)
    with pytest.raises(TypeError, match=r"block 1 .* holds 0 activation modules"):
        AttnLRP(function_activation)
    with pytest.raises(TypeError, match="Unsupported model class Linear"):
        AttnLRP(torch.nn.Linear(2, 2))


def _dinov2_size():
    return dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, patch_size=8, image_size=32)


def test_bad_arguments(tiny_images):
    classifier = AttnLRP(vit("classifier"))
    with pytest.raises(ValueError, match="attention_rule must be one of"):
        classifier.token_relevance(tiny_images, attention_rule="softmax")
    with pytest.raises(TypeError, match="unexpected option"):
        classifier.token_relevance(tiny_images, rule="iv")
    with pytest.raises(ValueError, match="class index"):
        classifier.token_relevance(tiny_images, target=9)
    with pytest.raises(ValueError, match="target must be None"):
        AttnLRP(vit("model")).token_relevance(tiny_images, target=1)
    with pytest.raises(ValueError):
        classifier.token_relevance(tiny_images[:, :, :30])
    with pytest.raises(ValueError, match="by keyword"):
        classifier.token_relevance(tiny_images, additional_forward_args=(None,))
    assert AttnLRP.get_name() == "AttnLRP"
