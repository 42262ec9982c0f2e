"""TokenRelevanceLRP as a Captum Attribution: shapes, pixel mapping, convergence delta, composition."""

from __future__ import annotations

import torch
from captum.attr import Attribution, NoiseTunnel

from captum_tokenlrp import TokenRelevanceLRP


def test_is_a_captum_attribution(tiny_model):
    lrp = TokenRelevanceLRP(tiny_model)
    assert isinstance(lrp, Attribution)
    assert lrp.has_convergence_delta()
    assert lrp.get_name() == "Token Relevance LRP"
    assert lrp.forward_func is tiny_model
    assert lrp.rule.name == "iv"


def test_attribute_spreads_patch_relevance_uniformly(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="ii")
    tokens = lrp.token_relevance(tiny_images)
    pixels = lrp.attribute(tiny_images)
    assert pixels.shape == tiny_images.shape and pixels.dtype == torch.float32
    # Patch (row 1, col 2) of the 4x4 grid is token 1 + 1 * 4 + 2; its 8x8 pixels x 3 channels share it.
    block = pixels[:, :, 8:16, 16:24]
    expected = tokens[:, 1 + 4 + 2] / (8 * 8 * 3)
    torch.testing.assert_close(block, expected[:, None, None, None].expand_as(block))
    torch.testing.assert_close(pixels.sum(dim=(1, 2, 3)), tokens[:, 1:].sum(-1))


def test_convergence_delta_accounts_for_cls(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    pixels, delta = lrp.attribute(tiny_images, return_convergence_delta=True)
    assert delta.shape == (3,)
    assert delta.abs().max() < 1e-5
    cls = lrp.token_relevance(tiny_images)[:, :1]
    assert (cls > 1e-3).all()  # the CLS share is real, so a delta ignoring it would be far from 0
    direct = lrp.compute_convergence_delta(pixels, cls, torch.ones(3))
    torch.testing.assert_close(direct, delta)
    wrong = lrp.compute_convergence_delta(pixels, torch.zeros(3, 1), torch.ones(3))
    torch.testing.assert_close(wrong, cls[:, 0])


def test_tuple_inputs_give_tuple_outputs(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    out = lrp.attribute((tiny_images,))
    assert isinstance(out, tuple) and len(out) == 1
    torch.testing.assert_close(out[0], lrp.attribute(tiny_images))
    (pixels,), delta = lrp.attribute((tiny_images,), return_convergence_delta=True)
    assert pixels.shape == tiny_images.shape and delta.shape == (3,)


def test_additional_forward_args_positional_and_keyword(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    plain = lrp.attribute(tiny_images)
    torch.testing.assert_close(lrp.attribute(tiny_images, additional_forward_args=(None,)), plain)
    torch.testing.assert_close(lrp.attribute(tiny_images, additional_forward_args={"bool_masked_pos": None}), plain)


def test_fused_modes_in_attribute(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    for mode in ("max", "min", "per_head_mean"):
        pixels, delta = lrp.attribute(tiny_images, head_fusion=mode, return_convergence_delta=True)
        assert pixels.shape == tiny_images.shape
        assert delta.abs().max() < 1e-5


def test_noise_tunnel_composes(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    nt = NoiseTunnel(lrp)
    smooth, delta = nt.attribute(
        tiny_images, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, return_convergence_delta=True
    )
    assert smooth.shape == tiny_images.shape
    assert torch.isfinite(smooth).all()
    assert delta.shape == (3 * 4,) and delta.abs().max() < 1e-5
    # Each noisy map sums to the patch share; so does their mean.
    plain = lrp.attribute(tiny_images)
    assert not torch.allclose(smooth, plain)
    cls = lrp.token_relevance(tiny_images)[:, 0]
    assert (smooth.sum(dim=(1, 2, 3)) - (1 - cls)).abs().max() < 0.1
