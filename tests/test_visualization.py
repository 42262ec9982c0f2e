"""Figures: which relevance inputs they accept (and refuse), colour scales and bars, titles, de-normalisation."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import visualization as viz

from captum_tokenlrp import TokenLayout, TokenRelevanceLRP
from captum_tokenlrp.visualization import (
    image_for_display,
    patch_grid,
    plot_method_comparison,
    plot_overlay,
    plot_rule_grid,
    to_captum_image,
)

matplotlib.use("Agg")

PATCH = 8  # the tiny model: 32 px images, 8 px patches, 4 x 4 grid + CLS = 17 tokens


def drawn(axis) -> np.ndarray:
    """The relevance layer of a panel (drawn over the image) as a plain array."""
    return np.asarray(axis.images[-1].get_array().data)


def upsampled(grid) -> np.ndarray:
    """What nearest upsampling of a patch grid to the 32 x 32 image must show."""
    grid = grid.numpy() if isinstance(grid, torch.Tensor) else grid
    return np.kron(grid, np.ones((PATCH, PATCH)))


def texts(figure) -> list[str]:
    """Every line of the figure's texts (the note under the panels has one line per statement)."""
    return [line for text in figure.texts for line in text.get_text().split("\n")]


@pytest.fixture
def relevance(tiny_model, tiny_images):
    """Token relevance of the first image (17,), per head (4, 17), its layout and pixel attribution (1, 3, 32, 32)."""
    lrp = TokenRelevanceLRP(tiny_model, rule="iv")
    return {
        "tokens": lrp.token_relevance(tiny_images)[0],
        "heads": lrp.token_relevance(tiny_images, head_fusion=None)[0],
        "layout": lrp.token_layout(tiny_images),
        "pixels": lrp.attribute(tiny_images[:1]),
    }


def test_overlay_accepts_grids_token_vectors_and_pixel_maps(tiny_images, relevance):
    layout, tokens, pixels = relevance["layout"], relevance["tokens"], relevance["pixels"]
    grid = patch_grid(tokens, layout)
    expected_grid = upsampled(grid.double())
    channel_sum = pixels[0].double().sum(0).numpy()
    cases = {
        "grid tensor": (grid, {}, expected_grid),
        "grid numpy": (grid.numpy(), {}, expected_grid),
        "tokens (N,)": (tokens, {"layout": layout}, expected_grid),
        "tokens (1, N)": (tokens[None], {"layout": layout}, expected_grid),
        "tokens numpy": (tokens[None].numpy(), {"layout": layout}, expected_grid),
        "grid with layout": (grid, {"layout": layout}, expected_grid),
        "pixels (1, C, H, W)": (pixels, {}, channel_sum),
        "pixels (C, H, W)": (pixels[0], {}, channel_sum),
        "pixels numpy (C, H, W)": (pixels[0].numpy(), {}, channel_sum),
        "pixels (H, W)": (pixels[0, 0], {}, pixels[0, 0].double().numpy()),
    }
    for name, (value, options, expected) in cases.items():
        figure = plot_overlay(tiny_images[0], value, title=name, **options)
        overlay = drawn(figure.axes[0])
        np.testing.assert_allclose(overlay, expected, rtol=1e-6, atol=1e-9, err_msg=name)
        assert figure.axes[0].images[-1].get_clim() == pytest.approx((expected.min(), expected.max()), rel=1e-6)
    # A pixel map is drawn as it is: bilinear display smooths patch grids only.
    figure = plot_overlay(tiny_images[0], pixels, interpolation="bilinear")
    np.testing.assert_allclose(drawn(figure.axes[0]), channel_sum, rtol=1e-6)


def test_overlay_refuses_what_it_cannot_draw_and_says_how_to_fix_it(tiny_images, relevance):
    layout, tokens = relevance["layout"], relevance["tokens"]
    image = tiny_images[0]
    needs_layout = r"layout=lrp\.token_layout\(pixel_values\)"
    with pytest.raises(ValueError, match=rf"\(1, 17\) is token relevance.*{needs_layout}"):
        plot_overlay(image, tokens[None])
    with pytest.raises(ValueError, match=needs_layout):
        plot_overlay(image, tokens.numpy())
    # 16 = 4 x 4 tokens: a perfect square is never reshaped without a layout (special tokens would shift it).
    with pytest.raises(ValueError, match=rf"\(16,\) is token relevance.*{needs_layout}"):
        plot_overlay(image, tokens[1:])
    other = TokenLayout(special_token_names=("CLS", "register"), grid=(4, 4), patch_size=(8, 8))
    with pytest.raises(ValueError, match="has 17 tokens but the layout has 18"):
        plot_overlay(image, tokens, layout=other)
    with pytest.raises(ValueError, match=r"batch of 3 maps; pass one, e.g. attributions\[0\]"):
        plot_overlay(image, torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"not a pixel map \(channels, height, width\) of this image.*per-head"):
        plot_overlay(image, patch_grid(relevance["heads"], layout))
    with pytest.raises(ValueError, match=r"\(4, 17\) is not a patch grid of this 32 x 32 image"):
        plot_overlay(image, relevance["heads"])
    with pytest.raises(ValueError, match=r"neither the layout's patch grid \(4, 4\)"):
        plot_overlay(image, torch.rand(8, 8), layout=layout)
    with pytest.raises(ValueError, match=r"5 dimensions\). Expected a patch grid \(grid_rows, grid_cols\)"):
        plot_overlay(image, torch.rand(1, 1, 3, 32, 32))
    with pytest.raises(TypeError, match=r"got list; wrap it with torch\.as_tensor"):
        plot_overlay(image, [[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(TypeError, match="Expected layout as a TokenLayout"):
        plot_overlay(image, tokens, layout=(4, 4))


def rule_maps(relevance):
    layout = relevance["layout"]
    fused = {
        "rule (iv)": patch_grid(relevance["tokens"], layout),
        "rule (i)": 2 * patch_grid(relevance["tokens"], layout),
    }
    per_head = {label: patch_grid(relevance["heads"], layout) * (r + 1) for r, label in enumerate(fused)}
    return fused, per_head


def test_rule_grid_image_column_colour_scales_and_bars(tiny_images, relevance):
    fused, per_head = rule_maps(relevance)
    rows, columns = 2, 1 + 1 + 4
    image = image_for_display(tiny_images[0])
    expected_bars = {"row": rows, "panel": rows * (columns - 1), "shared": 1}
    notes = {"row": "colour scale: one per row (rule)", "panel": "colour scale: one per panel"}
    notes["shared"] = "colour scale: one for all panels"
    everything = torch.cat([torch.cat([fused[k][None], per_head[k]]).flatten() for k in fused])
    for scale in ("row", "panel", "shared"):
        figure = plot_rule_grid(tiny_images[0], fused, per_head, scale=scale, panel_size=1.0)
        assert len(figure.axes) == rows * columns + expected_bars[scale], scale
        assert notes[scale] in texts(figure)
        axes = np.array(figure.axes[: rows * columns]).reshape(rows, columns)
        assert [axis.get_title() for axis in axes[0]] == ["image", "fused", "head 0", "head 1", "head 2", "head 3"]
        for r, label in enumerate(fused):
            assert axes[r, 0].get_ylabel() == label
            assert len(axes[r, 0].images) == 1
            np.testing.assert_array_equal(axes[r, 0].images[0].get_array(), image)
            maps = [fused[label], *per_head[label]]
            for c, grid in enumerate(maps, start=1):
                np.testing.assert_allclose(drawn(axes[r, c]), upsampled(grid.double()), rtol=1e-6)
                if scale == "row":
                    row_values = torch.stack(maps)
                    expected = (row_values.min().item(), row_values.max().item())
                elif scale == "panel":
                    expected = (grid.min().item(), grid.max().item())
                else:
                    expected = (everything.min().item(), everything.max().item())
                assert axes[r, c].images[-1].get_clim() == pytest.approx(expected, rel=1e-6), (scale, r, c)
    # The rows really differ (rule (i) is twice rule (iv)), so "row" and "shared" are not the same figure.
    row_scaled = plot_rule_grid(tiny_images[0], fused, per_head, scale="row")
    assert row_scaled.axes[1].images[-1].get_clim() != row_scaled.axes[columns + 1].images[-1].get_clim()


def test_rule_grid_title_with_prediction_and_token_inputs(tiny_images, relevance):
    layout = relevance["layout"]
    fused, per_head = {"rule (iv)": relevance["tokens"]}, {"rule (iv)": relevance["heads"]}
    figure = plot_rule_grid(
        tiny_images[0], fused, per_head, layout=layout, title="sample - bundled", prediction=("star", 0.9712)
    )
    assert figure.get_suptitle() == "sample - bundled\npredicted: star (p = 0.97)"
    assert len(figure.axes) == 1 * 6 + 1
    grids = [patch_grid(relevance["tokens"], layout), *patch_grid(relevance["heads"], layout)]
    for axis, grid in zip(figure.axes[1:6], grids, strict=True):
        np.testing.assert_allclose(drawn(axis), upsampled(grid.double()), rtol=1e-6)
    alone = plot_rule_grid(tiny_images[0], {"rule (iv)": grids[0]}, prediction=("disc", 0.5))
    assert alone.get_suptitle() == "predicted: disc (p = 0.50)"
    assert len(alone.axes) == 2 + 1  # image, fused, one colour bar
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        plot_rule_grid(tiny_images[0], {"x": grids[0]}, prediction=("star", 97))
    with pytest.raises(TypeError, match=r"\(class name, probability\)"):
        plot_rule_grid(tiny_images[0], {"x": grids[0]}, prediction="star")
    with pytest.raises(ValueError, match=r"per_head has rows that fused lacks: \['y'\]"):
        plot_rule_grid(tiny_images[0], {"x": grids[0]}, {"y": torch.stack(grids[1:])})
    with pytest.raises(ValueError, match=r"token relevance.*layout="):
        plot_rule_grid(tiny_images[0], {"x": grids[0]}, {"x": relevance["heads"]})
    with pytest.raises(ValueError, match="scale must be one of"):
        plot_rule_grid(tiny_images[0], {"x": grids[0]}, scale="column")


def test_shared_scale_is_a_deprecated_alias(tiny_images, relevance):
    fused, per_head = rule_maps(relevance)
    shared = plot_rule_grid(tiny_images[0], fused, per_head, scale="shared")
    with pytest.warns(DeprecationWarning, match="scale='shared'"):
        alias = plot_rule_grid(tiny_images[0], fused, per_head, shared_scale=True)
    assert len(alias.axes) == len(shared.axes) == 2 * 6 + 1
    assert [a.images[-1].get_clim() for a in alias.axes[:12]] == [a.images[-1].get_clim() for a in shared.axes[:12]]
    with pytest.warns(DeprecationWarning):
        per_panel = plot_method_comparison(tiny_images[0], fused, shared_scale=False)
    assert "colour scale: one per panel" in texts(per_panel)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="Pass scale only"):
        plot_rule_grid(tiny_images[0], fused, per_head, scale="panel", shared_scale=True)


def test_method_comparison_scales_and_mixed_inputs(tiny_images, relevance):
    layout = relevance["layout"]
    grid = patch_grid(relevance["tokens"], layout)
    maps = {"rule (iv)": relevance["tokens"], "scaled": 10 * grid.numpy(), "pixels": relevance["pixels"]}
    expected = [upsampled(grid.double()), upsampled(10 * grid.double()), relevance["pixels"][0].double().sum(0)]
    for scale, bars in (("panel", 3), ("shared", 1), ("row", 1)):
        figure = plot_method_comparison(tiny_images[0], maps, layout=layout, scale=scale)
        assert len(figure.axes) == 4 + bars
        assert [axis.get_title() for axis in figure.axes[:4]] == ["image", *maps]
        np.testing.assert_array_equal(figure.axes[0].images[0].get_array(), image_for_display(tiny_images[0]))
        everything = np.concatenate([np.asarray(e).ravel() for e in expected])
        for axis, values in zip(figure.axes[1:4], expected, strict=True):
            values = np.asarray(values)
            np.testing.assert_allclose(drawn(axis), values, rtol=1e-6)
            limits = (values.min(), values.max()) if scale == "panel" else (everything.min(), everything.max())
            assert axis.images[-1].get_clim() == pytest.approx(limits, rel=1e-6)
        note = "colour scale: one per panel" if scale == "panel" else "colour scale: one for all panels"
        assert note in texts(figure)
    with pytest.raises(ValueError, match="maps is empty"):
        plot_method_comparison(tiny_images[0], {})
    with pytest.raises(ValueError, match=r"maps\['rule \(iv\)'\] of shape \(17,\) is token relevance"):
        plot_method_comparison(tiny_images[0], maps)


@pytest.fixture
def processed():
    """A known uint8 image, the ViT processor (mean = std = 0.5) and the pixel_values it makes."""
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor()  # 224 x 224: the image below is not resized
    # Values in [20, 200): min-max rescaling would stretch them, de-normalising must not.
    image = np.random.default_rng(0).integers(20, 200, size=(224, 224, 3), dtype=np.uint8)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    return image, processor, pixel_values


def test_normalisation_is_undone_for_captum_and_display(processed):
    image, processor, pixel_values = processed
    expected = image / 255.0
    original = to_captum_image(pixel_values[0], processor=processor)
    assert original.shape == (224, 224, 3) and original.dtype == np.float32
    np.testing.assert_allclose(original, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(to_captum_image((pixel_values,), mean=[0.5] * 3, std=(0.5, 0.5, 0.5)), original)
    np.testing.assert_allclose(image_for_display(pixel_values[0], processor=processor), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        image_for_display(pixel_values[0].permute(1, 2, 0).numpy(), mean=0.5, std=0.5), expected, atol=1e-6
    )
    # Min-max rescaling stays the fallback, and here it differs from the image.
    assert np.abs(image_for_display(pixel_values[0]) - expected).max() > 0.05
    # Out-of-range values are clipped to [0, 1].
    assert to_captum_image(torch.full((3, 2, 2), 5.0), mean=0.5, std=0.5).max() == 1.0

    # Captum's plots take an image in [0, 1] (as 0..255 integers inside): the grey background of the blend and
    # the masked image show the image itself where relevance is (a normalised input was clipped to near black).
    attribution = torch.zeros(3, 224, 224)
    attribution[:, 100:180, 40:200] = 1.0
    attribution = to_captum_image(attribution)
    _, axis = viz.visualize_image_attr(
        attribution, original, method="blended_heat_map", sign="positive", use_pyplot=False
    )
    np.testing.assert_allclose(np.asarray(axis.images[0].get_array()), image.mean(axis=2), atol=1.0)
    _, axis = viz.visualize_image_attr(attribution, original, method="masked_image", sign="positive", use_pyplot=False)
    masked = np.asarray(axis.images[0].get_array(), dtype=float)
    np.testing.assert_allclose(masked[100:180, 40:200], image[100:180, 40:200], atol=1.0)
    assert masked[100:180, 40:200].min() >= 19 and (masked[:100] == 0).all()


def test_normalisation_arguments_are_checked(processed):
    _, processor, pixel_values = processed
    with pytest.raises(ValueError, match="either processor or mean and std"):
        to_captum_image(pixel_values[0], processor=processor, mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match="Pass both mean and std"):
        image_for_display(pixel_values[0], mean=[0.5] * 3)
    with pytest.raises(ValueError, match="mean has 2 values but the image has 3 channels"):
        to_captum_image(pixel_values[0], mean=[0.5, 0.5], std=[0.5, 0.5])
    with pytest.raises(ValueError, match="std > 0"):
        image_for_display(pixel_values[0], mean=0.5, std=0.0)
    with pytest.raises(TypeError, match="must have image_mean and image_std"):
        to_captum_image(pixel_values[0], processor=object())
    with pytest.raises(ValueError, match=r"index a batch first, e.g. pixel_values\[0\]"):
        image_for_display(pixel_values)
    # The plots take the same arguments: the image column shows the de-normalised image.
    small = pixel_values[:, :, :32, :32]
    grid = torch.rand(4, 4)
    figure = plot_rule_grid(small[0], {"x": grid}, processor=processor)
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), image_for_display(small[0], processor=processor))
    figure = plot_overlay(small[0], grid, mean=0.5, std=0.5)
    np.testing.assert_allclose(figure.axes[0].images[0].get_array(), image_for_display(small[0], mean=0.5, std=0.5))
