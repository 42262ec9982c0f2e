"""What a user passes in gets the right answer or a clear error: Captum wrappers with forward
arguments, integer targets of every kind, wrapped models, non-finite relevance, class-agnostic
targets, vanishing gradients and IG's convergence delta."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from conftest import seeded, tiny_config
from transformers import ViTForImageClassification, ViTModel

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import (
    AttentionRollout,
    ExplainedForward,
    GenericAttentionExplainability,
    RandomRelevance,
    RawAttention,
    TokenGradCAM,
    TokenIntegratedGradients,
)

INTERPOLATE = {"interpolate_pos_encoding": True}
METHODS = {
    "lrp": TokenRelevanceLRP,
    "raw": RawAttention,
    "rollout": AttentionRollout,
    "gae": GenericAttentionExplainability,
    "ig": lambda model: TokenIntegratedGradients(model, n_steps=4),
    "gradcam": TokenGradCAM,
    "random": RandomRelevance,
}


@pytest.fixture
def classifier():
    return seeded(lambda: ViTForImageClassification(tiny_config(num_labels=5)), trained_norms=True)


@pytest.fixture
def wide_images():
    """Images of 40 x 48 pixels: not the model's 32 x 32, so interpolate_pos_encoding is needed."""
    return torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_dict_of_forward_arguments_survives_noise_tunnel(name, classifier, wide_images):
    method = METHODS[name](classifier)
    direct = method.attribute(wide_images, target=1, additional_forward_args=INTERPOLATE)
    assert direct.shape == wide_images.shape
    smooth = NoiseTunnel(method).attribute(
        wide_images, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, target=1, additional_forward_args=INTERPOLATE
    )
    # With zero noise every sample is the input itself: the tunnel's mean is the direct map.
    torch.testing.assert_close(smooth, direct, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["lrp", "rollout", "gae", "gradcam"])
def test_a_dict_of_forward_arguments_survives_sensitivity_max(name, classifier, wide_images):
    method = METHODS[name](classifier)
    score = sensitivity_max(
        method.attribute, wide_images, n_perturb_samples=2, target=1, additional_forward_args=INTERPOLATE
    )
    assert score.shape == (2,) and torch.isfinite(score).all() and (score >= 0).all()


def test_a_dict_of_forward_arguments_survives_infidelity(classifier, wide_images):
    attributions = TokenRelevanceLRP(classifier).attribute(wide_images, additional_forward_args=INTERPOLATE)
    explained = ExplainedForward(classifier)
    generator = torch.Generator().manual_seed(0)

    def perturb(inputs):
        noise = 0.05 * torch.randn(inputs.shape, generator=generator)
        return noise, inputs - noise

    with torch.no_grad():
        score = infidelity(
            explained,
            perturb,
            wide_images,
            attributions,
            target=1,
            additional_forward_args=INTERPOLATE,
            n_perturb_samples=3,
        )
    assert score.shape == (2,) and torch.isfinite(score).all()
    with torch.no_grad():
        logits = explained(wide_images, INTERPOLATE)
    torch.testing.assert_close(logits, classifier(wide_images, interpolate_pos_encoding=True).logits)


def test_positional_arguments_then_a_dict_both_reach_the_model(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    # ViTModel.forward(pixel_values, bool_masked_pos, ...): None positionally, then keywords.
    torch.testing.assert_close(
        lrp.token_relevance(tiny_images, additional_forward_args=(None, {"interpolate_pos_encoding": False})),
        lrp.token_relevance(tiny_images),
    )


@pytest.mark.parametrize(
    "target",
    [np.int64(3), np.int32(3), [np.int64(3)] * 3, np.array([3, 3, 3]), np.array(3), torch.tensor(3), (3, 3, 3)],
    ids=["int64", "int32", "list-of-np", "array", "0-d-array", "tensor", "tuple"],
)
def test_every_integer_target_captum_accepts(target, tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    torch.testing.assert_close(
        lrp.token_relevance(tiny_images, target=target), lrp.token_relevance(tiny_images, target=3)
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [(np.array([0.5, 1.0, 2.0]), "must hold integers"), (np.bool_(True), "got bool"), (np.array([1, 2]), "one target")],
)
def test_bad_numpy_targets(target, message, tiny_model, tiny_images):
    with pytest.raises((TypeError, ValueError), match=message):
        TokenRelevanceLRP(tiny_model).token_relevance(tiny_images, target=target)


def test_numpy_targets_on_gradient_methods(classifier, tiny_images):
    gae = GenericAttentionExplainability(classifier)
    torch.testing.assert_close(
        gae.token_relevance(tiny_images, target=np.array([1, 2, 3])), gae.token_relevance(tiny_images, target=[1, 2, 3])
    )


def test_wrapped_models_are_unwrapped_with_one_warning(tiny_model, tiny_images):
    expected = TokenRelevanceLRP(tiny_model).token_relevance(tiny_images)
    for wrapper in (torch.compile(tiny_model), torch.nn.DataParallel(tiny_model)):
        with pytest.warns(UserWarning, match=r"inside its wrapper") as caught:
            lrp = TokenRelevanceLRP(wrapper)
        assert len(caught) == 1 and lrp.model is tiny_model
        torch.testing.assert_close(lrp.token_relevance(tiny_images), expected, rtol=0, atol=0)


def test_a_pipeline_is_unwrapped(classifier, tiny_images):
    from transformers import ViTImageProcessor, pipeline

    pipe = pipeline("image-classification", model=classifier, image_processor=ViTImageProcessor(size=32))
    with pytest.warns(UserWarning, match=r"Pipeline -> \.model|\.model"):
        lrp = TokenRelevanceLRP(pipe)
    assert lrp.model is classifier


@pytest.mark.parametrize("name", ["lrp", "raw", "rollout", "gae"])
def test_non_finite_relevance_is_an_error_that_names_the_layer(name, tiny_model, tiny_images):
    method = METHODS[name](tiny_model)
    with pytest.raises(ValueError, match=r"non-finite in layer 0 \(0 = nearest the input\).*e\+30"):
        method.token_relevance(tiny_images * 1e30)


def test_non_finite_relevance_deep_in_the_model(tiny_model, tiny_images):
    with torch.no_grad():  # layer 2's scores overflow: q . k = inf, softmax NaN
        TokenRelevanceLRP(tiny_model).attention_sites[2].query.weight.mul_(1e38)
    with pytest.raises(ValueError, match=r"non-finite in layer 2 \(0 = nearest the input\) of 3"):
        TokenRelevanceLRP(tiny_model).token_relevance(tiny_images)
    with pytest.raises(ValueError, match=r"non-finite in layer 2"):
        TokenRelevanceLRP(tiny_model).token_relevance_by_rule(tiny_images, ["i", "iv"])


def test_class_agnostic_methods_say_once_that_target_is_ignored(classifier, tiny_images):
    lrp = TokenRelevanceLRP(classifier)
    with pytest.warns(UserWarning, match=r"class-agnostic.*target=2.*GenericAttentionExplainability") as caught:
        with_target = lrp.token_relevance(tiny_images, target=2)
        lrp.token_relevance(tiny_images, target=3)
    assert len([w for w in caught if "class-agnostic" in str(w.message)]) == 1
    torch.testing.assert_close(with_target, lrp.token_relevance(tiny_images))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no target, or a model without labels: no warning
        TokenRelevanceLRP(classifier).token_relevance(tiny_images)
    for method in (RawAttention(classifier), AttentionRollout(classifier)):
        with pytest.warns(UserWarning, match="class-agnostic"):
            method.token_relevance(tiny_images, target=1)


def test_vanishing_gradients_are_reported(tiny_images):
    untrained = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False))  # unit LayerNorms: constant score
    for method in (GenericAttentionExplainability(untrained), TokenGradCAM(untrained)):
        with pytest.warns(UserWarning, match="numerically zero"):
            method.token_relevance(tiny_images)


def test_no_vanishing_warning_on_a_model_with_gradients(classifier, tiny_images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenericAttentionExplainability(classifier).token_relevance(tiny_images, target=1)


def test_integrated_gradients_returns_captum_convergence_delta(classifier, tiny_images):
    from captum.attr import IntegratedGradients

    ours, delta = TokenIntegratedGradients(classifier, n_steps=16).attribute(
        tiny_images, target=2, return_convergence_delta=True
    )
    theirs, expected = IntegratedGradients(ExplainedForward(classifier)).attribute(
        tiny_images, target=2, n_steps=16, return_convergence_delta=True
    )
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(delta, expected)
    assert TokenIntegratedGradients(classifier).has_convergence_delta()


@pytest.mark.parametrize("fused_kernels", [True, False])
def test_several_rules_from_one_forward(tiny_model, tiny_images, fused_kernels):
    calls = []
    tiny_model.register_forward_hook(lambda *_: calls.append(1))
    lrp = TokenRelevanceLRP(tiny_model, fused_kernels=fused_kernels)
    modes = ["mean", None, "max", "min", "per_head_mean", "last_layer_per_head"]
    result = lrp.token_relevance_by_rule(tiny_images, ["i", "ii", "iii", "iv"], head_fusions=modes)
    assert len(calls) == 1
    for rule, by_mode in result.items():
        for mode, relevance in by_mode.items():
            single = TokenRelevanceLRP(tiny_model, rule=rule, fused_kernels=fused_kernels).token_relevance(
                tiny_images, head_fusion=mode
            )
            torch.testing.assert_close(relevance, single, rtol=0, atol=1e-7)


def test_several_rules_respect_a_layer_rule(tiny_model, tiny_images):
    from captum_tokenlrp import RULE_II

    layers = tiny_model.layers if hasattr(tiny_model, "layers") else tiny_model.encoder.layer
    layers[1].attention.rule = RULE_II
    result = TokenRelevanceLRP(tiny_model).token_relevance_by_rule(tiny_images, ["i", "iv"])
    for rule in ("i", "iv"):
        torch.testing.assert_close(
            result[rule]["mean"],
            TokenRelevanceLRP(tiny_model, rule=rule).token_relevance(tiny_images),
            rtol=0,
            atol=1e-7,
        )
    assert layers[1].attention.rule is RULE_II


@pytest.mark.parametrize(
    ("rules", "kwargs", "message"),
    [
        ("iv", {}, "non-empty sequence of rule names"),
        (["i", "i"], {}, "distinct"),
        (["i"], {"head_fusions": "mean"}, "sequence of head modes"),
    ],
)
def test_several_rules_bad_arguments(rules, kwargs, message, tiny_model, tiny_images):
    with pytest.raises((TypeError, ValueError), match=message):
        TokenRelevanceLRP(tiny_model).token_relevance_by_rule(tiny_images, rules, **kwargs)
