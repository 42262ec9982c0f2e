"""The package's attributions inside Captum: NoiseTunnel, metrics and visualisation."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import AttentionRollout, ExplainedForward, RawAttention
from captum_tokenlrp.visualization import (
    patch_grid,
    plot_method_comparison,
    plot_overlay,
    to_captum_image,
)

matplotlib.use("Agg")


def test_noise_tunnel_on_baselines(tiny_model, tiny_images):
    for method in (RawAttention(tiny_model), AttentionRollout(tiny_model)):
        smooth = NoiseTunnel(method).attribute(tiny_images, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.2)
        assert smooth.shape == tiny_images.shape and torch.isfinite(smooth).all() and (smooth >= 0).all()


def test_noise_tunnel_with_tuple_inputs(tiny_model, tiny_images):
    (smooth,), delta = NoiseTunnel(TokenRelevanceLRP(tiny_model)).attribute(
        (tiny_images,), nt_type="vargrad", nt_samples=8, stdevs=0.1, return_convergence_delta=True
    )
    assert smooth.shape == tiny_images.shape and (smooth >= 0).all()
    assert delta.shape == (24,) and delta.abs().max() < 1e-5


def test_infidelity_of_token_relevance(tiny_classifier, tiny_images):
    lrp = TokenRelevanceLRP(tiny_classifier, rule="iv")
    attributions = lrp.attribute(tiny_images)
    explained = ExplainedForward(tiny_classifier)
    generator = torch.Generator().manual_seed(0)

    def perturb(inputs):
        noise = 0.05 * torch.randn(inputs.shape, generator=generator)
        return noise, inputs - noise

    with torch.no_grad():
        score = infidelity(explained, perturb, tiny_images, attributions, target=1, n_perturb_samples=6)
    assert score.shape == (3,) and torch.isfinite(score).all() and (score >= 0).all()
    # A map scaled by 1e3 is less faithful: infidelity must see it (real values, not a constant).
    with torch.no_grad():
        worse = infidelity(
            explained, perturb, tiny_images, attributions * 1e3, target=1, n_perturb_samples=6, normalize=False
        )
    assert (worse > score).all()


def test_sensitivity_max_passes_tuples_under_no_grad(tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule="ii")
    sensitivity = sensitivity_max(lrp.attribute, tiny_images, n_perturb_samples=3, perturb_radius=0.05)
    assert sensitivity.shape == (3,) and torch.isfinite(sensitivity).all() and (sensitivity > 0).all()
    still = sensitivity_max(lrp.attribute, tiny_images, n_perturb_samples=3, perturb_radius=1e-6)
    assert (still < sensitivity).all()


def test_integrated_gradients_and_layer_gradcam_on_the_forward_wrapper(tiny_model, tiny_classifier, tiny_images):
    for model in (tiny_model, tiny_classifier):
        explained = ExplainedForward(model)
        extra = None if explained.is_classifier else (explained.reference(tiny_images),)
        target = 2 if explained.is_classifier else None
        ig = IntegratedGradients(explained).attribute(
            tiny_images, target=target, additional_forward_args=extra, n_steps=8
        )
        assert ig.shape == tiny_images.shape and torch.isfinite(ig).all()
        cam = LayerGradCam(explained, explained.patch_grid).attribute(tiny_images, target=target)
        assert cam.shape == (3, 1, 4, 4) and torch.isfinite(cam).all() and cam.abs().sum() > 0


def test_captum_visualization_accepts_our_maps(tmp_path, tiny_model, tiny_images):
    attributions = TokenRelevanceLRP(tiny_model).attribute(tiny_images)
    as_hwc = to_captum_image(attributions[0])
    assert as_hwc.shape == (32, 32, 3) and isinstance(as_hwc, np.ndarray)
    np.testing.assert_array_equal(to_captum_image(attributions[:1]), as_hwc)
    figure, _ = viz.visualize_image_attr(
        as_hwc, to_captum_image(tiny_images[0]), method="blended_heat_map", sign="positive", use_pyplot=False
    )
    figure.savefig(tmp_path / "captum.png")
    figure, _ = viz.visualize_image_attr_multiple(
        as_hwc,
        to_captum_image(tiny_images[0]),
        methods=["original_image", "heat_map"],
        signs=["all", "positive"],
        use_pyplot=False,
    )
    figure.savefig(tmp_path / "captum_multiple.png")
    with pytest.raises(ValueError, match="index the batch first"):
        to_captum_image(attributions)


def nonblank(path):
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.std() > 0.05
    return pixels


def test_overlay_and_method_comparison_figures(tmp_path, tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model)
    layout = lrp.token_layout(tiny_images)
    grid = patch_grid(lrp.token_relevance(tiny_images)[0], layout)
    for mode in ("nearest", "bilinear"):
        figure = plot_overlay(tiny_images[0], grid, interpolation=mode, title=mode, size=3.0, colorbar=False)
        figure.savefig(tmp_path / f"overlay_{mode}.png", dpi=100)
        assert nonblank(tmp_path / f"overlay_{mode}.png").shape[:2] == (300, 300)
    maps = {
        "rule (iv)": grid,
        "rollout": patch_grid(AttentionRollout(tiny_model).token_relevance(tiny_images)[0], layout),
        "raw attention": patch_grid(RawAttention(tiny_model).token_relevance(tiny_images)[0], layout),
    }
    figure = plot_method_comparison(tiny_images[0], maps, panel_size=2.0)
    assert len(figure.axes) == 4 + 3  # image and 3 methods, one colour bar per method (scale="panel")
    figure.savefig(tmp_path / "methods.png", dpi=100)
    # + 2 x 0.3 in for the two note lines (colour scale, what the image column shows); + 3 x 0.6 in colour bars
    assert nonblank(tmp_path / "methods.png").shape[:2] == (260, 980)
    with pytest.raises(ValueError, match="interpolation"):
        plot_overlay(tiny_images[0], grid, interpolation="cubic")
