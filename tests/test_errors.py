"""Bad input gets a clear error that says what was expected and what arrived; the model stays clean."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_tokenlrp import TokenRelevanceLRP


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("make_input", "error", "message"),
    [
        (lambda x: x[0], ValueError, r"\(batch_size, channels, height, width\), got shape \(3, 32, 32\)"),
        (lambda x: x[:, :2], ValueError, "Expected 3 channels, got 2"),
        (lambda x: x[:0], ValueError, "empty batch"),
        (lambda x: x.numpy(), TypeError, "got ndarray"),
        (lambda x: [x], TypeError, "got list"),
        (lambda x: (x, x), ValueError, "tuple of 2"),
        (lambda x: x.to(torch.int64), TypeError, "floating-point"),
        (lambda x: x[:, :, :4, :4], ValueError, r"smaller than one patch \(8x8\)"),
        (lambda x: x[:, :, :24, :], ValueError, r"does not match the model's 32x32.*interpolate_pos_encoding"),
        (lambda x: x.clone().index_fill_(2, torch.tensor([3]), float("nan")), ValueError, "NaN or infinite"),
    ],
)
def test_bad_pixel_values(make_input, error, message, tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    with pytest.raises(error, match=message):
        lrp.token_relevance(make_input(tiny_images))
    with pytest.raises(error, match=message):
        lrp.attribute(make_input(tiny_images))
    assert no_hooks(tiny_model)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target": 17}, ValueError, r"target 17 is out of range: expected an output token index in \[-17, 17\)"),
        ({"target": -18}, ValueError, "out of range"),
        ({"target": [0, 1]}, ValueError, r"one target per sample \(3\), got 2"),
        ({"target": 1.5}, TypeError, "got float"),
        ({"target": torch.tensor([0.0, 1.0, 2.0])}, TypeError, "must hold integers"),
        ({"initial_relevance": torch.ones(16)}, ValueError, r"shape \(17,\) or \(3, 17\).*got \(16,\)"),
        ({"initial_relevance": -torch.ones(17)}, ValueError, "non-negative"),
        ({"initial_relevance": torch.zeros(17)}, ValueError, "all zero"),
        ({"initial_relevance": torch.full((17,), float("nan"))}, ValueError, "NaN"),
        ({"initial_relevance": [1.0] * 17}, TypeError, "must be a torch.Tensor"),
        ({"initial_relevance": torch.ones(17), "target": 3}, ValueError, "either target"),
        ({"head_fusion": "median"}, ValueError, r"Unknown head_fusion 'median'"),
        ({"additional_forward_args": {"head_mask": torch.ones(3)}}, (TypeError, ValueError), "head_mask"),
        ({"additional_forward_args": (None,) * 12}, TypeError, "do not fit ViTModel.forward"),
    ],
)
def test_bad_arguments(kwargs, error, message, tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    with pytest.raises(error, match=message):
        lrp.token_relevance(tiny_images, **kwargs)
    assert no_hooks(tiny_model)


def test_classifier_target_is_a_class_index(tiny_classifier, tiny_images):
    lrp = TokenRelevanceLRP(tiny_classifier)
    with pytest.raises(ValueError, match=r"expected a class index in \[0, 5\)"):
        lrp.token_relevance(tiny_images, target=5)


def test_attribute_refuses_per_head_modes(tiny_model, tiny_images):
    with pytest.raises(ValueError, match="token_relevance"):
        TokenRelevanceLRP(tiny_model).attribute(tiny_images, head_fusion=None)


def test_unknown_rule_and_unsupported_model(tiny_model):
    with pytest.raises(ValueError, match="Unknown rule"):
        TokenRelevanceLRP(tiny_model, rule="v")
    with pytest.raises(
        TypeError, match=r"Unsupported model class Linear. Supported: .*ViTModel, ViTForImageClassification"
    ):
        TokenRelevanceLRP(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="got str"):
        TokenRelevanceLRP("facebook/dino-vits16")


def test_model_and_input_on_different_devices(tiny_model, tiny_images):
    tiny_images = tiny_images.to("meta")
    with pytest.raises(ValueError, match=r"on meta but the model is on cpu"):
        TokenRelevanceLRP(tiny_model).token_relevance(tiny_images)


def test_input_dtype_must_match_the_model(tiny_model, tiny_images):
    with pytest.raises(TypeError, match=r"pixel_values are torch.float64 but the model is torch.float32"):
        TokenRelevanceLRP(tiny_model).token_relevance(tiny_images.double())
    assert no_hooks(tiny_model)
