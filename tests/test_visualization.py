"""Figures: which relevance inputs they accept (and refuse), colour scales and bars, titles, de-normalisation."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import visualization as viz

from captum_tokenlrp import TokenLayout, TokenRelevanceLRP
from captum_tokenlrp.visualization import (
    LINE_TOKENS,
    ColourScale,
    colour_scale,
    image_for_display,
    patch_grid,
    plot_method_comparison,
    plot_overlay,
    plot_rule_grid,
    plot_text_relevance,
    to_captum_image,
    token_labels,
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
        # clip=None: each scale spans its maps exactly (the robust default is tested below)
        figure = plot_rule_grid(tiny_images[0], fused, per_head, scale=scale, panel_size=1.0, clip=None)
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
        figure = plot_method_comparison(tiny_images[0], maps, layout=layout, scale=scale, clip=None)
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


# ------------------------------------------------------------------ robust scales, photo aspect, diagnostics
def sink_maps(rows=8, cols=8, seed=0):
    """Patch grids like a real model's with an attention sink: small values everywhere, 0.9 on one cell."""
    rng = np.random.default_rng(seed)
    fused = rng.uniform(0.0, 0.01, size=(rows, cols))
    heads = rng.uniform(0.0, 0.01, size=(3, rows, cols))
    fused[2, 5], heads[1, 2, 5] = 0.3, 0.9
    return {"rule (iv)": fused}, {"rule (iv)": heads}


def outlined(axis) -> list[tuple[float, float]]:
    """Lower-left corners of the cell outlines on a panel."""
    return [patch.get_xy() for patch in axis.patches]


def test_colour_scale_clips_a_few_outlying_cells_and_keeps_smooth_maps_whole():
    smooth = np.linspace(0.0, 1.0, 64).reshape(8, 8)
    assert colour_scale(smooth) == ColourScale(0.0, 1.0, 0.0, 1.0) and not colour_scale(smooth).clipped
    fused, heads = sink_maps()
    scale = colour_scale([fused["rule (iv)"], *heads["rule (iv)"]])
    assert scale.maximum == 0.9 and scale.clipped and scale.extend == "max"
    largest_rest = max(np.sort(m.ravel())[-2] for m in [fused["rule (iv)"], *heads["rule (iv)"]])
    assert scale.high == pytest.approx(2 * largest_rest) and scale.high < 0.05  # twice the 99th percentile
    assert colour_scale([fused["rule (iv)"]], clip=None).high == 0.3
    signed = np.concatenate([np.linspace(-1, 1, 99), [-40.0]])
    assert colour_scale(signed).extend == "min" and colour_scale(signed).low == pytest.approx(-2 * 1.0)
    with pytest.raises(ValueError, match=r"clip must be a percentile in \(0, 100\)"):
        colour_scale(smooth, clip=100)


def test_one_outlying_token_does_not_hide_the_rule_grid(tiny_images):
    fused, heads = sink_maps()
    figure = plot_rule_grid(tiny_images[0], fused, heads)
    axes = figure.axes[:5]
    high = axes[1].images[-1].get_clim()[1]
    assert high < 0.05  # before: 0.9, the sink's cell, and every other cell nearly black
    assert all(axis.images[-1].get_clim()[1] == high for axis in axes[1:])  # one scale per row, as before
    cell = 32 / 8
    assert outlined(axes[1]) == [(5 * cell - 0.5, 2 * cell - 0.5)]  # the clipped cells, outlined
    assert outlined(axes[3]) == [(5 * cell - 0.5, 2 * cell - 0.5)] and outlined(axes[2]) == []
    assert figure.axes[-1]._colorbar.extend == "max"  # the colour bar's arrow: values above its top
    assert any("cells above it are clipped (outlined in cyan)" in line for line in texts(figure))
    assert any("2 x the 99th percentile" in line for line in texts(figure))
    plain = plot_rule_grid(tiny_images[0], fused, heads, clip=None)
    assert plain.axes[1].images[-1].get_clim()[1] == 0.9 and outlined(plain.axes[1]) == []
    assert "colour scale: one for all panels" in texts(plain) and plain.axes[-1]._colorbar.extend == "neither"
    compared = plot_method_comparison(tiny_images[0], {"a": fused["rule (iv)"], "b": heads["rule (iv)"][1]})
    assert compared.axes[1].images[-1].get_clim()[1] < 0.05 and compared.axes[2].images[-1].get_clim()[1] < 0.05
    overlay = plot_overlay(tiny_images[0], heads["rule (iv)"][1])
    assert overlay.axes[0].images[-1].get_clim()[1] < 0.05 and len(outlined(overlay.axes[0])) == 1


def test_panels_keep_the_photo_aspect_and_say_what_the_model_saw():
    from PIL import Image
    from transformers import BitImageProcessor, ViTImageProcessor

    from captum_tokenlrp.images import processor_geometry

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, size=(48, 96, 3), dtype=np.uint8))
    warp = ViTImageProcessor(size={"height": 32, "width": 32})  # squashes the 2:1 photo to a square
    pixel_values = warp(images=photo, return_tensors="pt")["pixel_values"]
    grid = torch.rand(4, 4)
    geometry = processor_geometry(warp, photo)
    figure = plot_rule_grid(pixel_values[0], {"rule (iv)": grid}, geometry=geometry, processor=warp)
    for axis in figure.axes[:2]:
        assert axis.get_aspect() == pytest.approx(0.5)  # each input pixel is drawn twice as wide as high
    assert figure.get_size_inches()[0] > 2 * 2 * 1.8  # two panels, each twice as wide as high
    assert "image: the model's 32 x 32 input, showing all of the 96 x 48 px photo, drawn at the photo's aspect" in (
        texts(figure)
    )
    crop = BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    cropped_input = crop(images=photo, return_tensors="pt")["pixel_values"][0]
    cropped = plot_method_comparison(cropped_input, {"m": grid}, geometry=processor_geometry(crop, photo))
    assert cropped.axes[0].get_aspect() == pytest.approx(1.0)  # the crop keeps the photo's proportions
    assert any("the 43 x 43 px centre crop of the 96 x 48 px photo" in line for line in texts(cropped))
    unknown = plot_rule_grid(pixel_values[0], {"rule (iv)": grid})
    assert "image: the model's 32 x 32 input, as the processor made it (aspect as the model sees it)" in texts(unknown)
    with pytest.raises(TypeError, match="ImageGeometry"):
        plot_rule_grid(pixel_values[0], {"rule (iv)": grid}, geometry=(48, 96))
    with pytest.raises(ValueError, match="geometry is for a 32 x 32 model input"):
        plot_rule_grid(torch.rand(3, 64, 64), {"rule (iv)": grid}, geometry=geometry)


def test_the_paper_figure_marks_sinks_and_high_norm_tokens(tiny_images):
    from test_diagnostics import SINK_HEAD, build_sink, eager_tiny_model

    from captum_tokenlrp.diagnostics import diagnose

    model = build_sink(eager_tiny_model())
    lrp = TokenRelevanceLRP(model, rule="iv")
    layout = lrp.token_layout(tiny_images[:1])
    found = diagnose(model, tiny_images[:1])
    fused = {"rule (iv)": lrp.token_relevance(tiny_images[:1])[0]}
    heads = {"rule (iv)": lrp.token_relevance(tiny_images[:1], head_fusion=None)[0]}
    figure = plot_rule_grid(tiny_images[0], fused, heads, layout=layout, diagnostics=found)
    titles = [axis.get_title() for axis in figure.axes[:6]]
    assert titles[2 + SINK_HEAD] == f"head {SINK_HEAD} *" and titles[:2] == ["image", "fused"]
    ring = figure.axes[2 + SINK_HEAD].lines
    assert len(ring) == 1 and ring[0].get_marker() == "o"
    np.testing.assert_allclose(ring[0].get_xydata(), [[1.5 * PATCH - 0.5, 1.5 * PATCH - 0.5]])  # patch (1, 1)
    cross = figure.axes[0].lines
    assert len(cross) == 1 and cross[0].get_marker() == "x"
    lines = texts(figure)
    sink = f"layer 0 head {SINK_HEAD} -> patch (1, 1)"
    assert any(line.startswith("attention sinks") and sink in line for line in lines)
    assert any(line.startswith("high-norm tokens") and "patch (1, 1) (layer 0-2" in line for line in lines)
    with pytest.raises(TypeError, match=r"diagnostics from captum_tokenlrp\.diagnostics\.diagnose"):
        plot_rule_grid(tiny_images[0], fused, heads, layout=layout, diagnostics=found.sinks)


# ------------------------------------------------------------------ text heat-strips
def test_a_long_text_is_wrapped_into_lines_of_bounded_width():
    tokens = ["[CLS]", *[f"w{index}" for index in range(510)], "[SEP]"]
    relevance = np.random.default_rng(0).uniform(0, 0.01, 512)
    relevance[0] = 0.6  # [CLS] holds most of it, as in the nearly black figure
    fused = {"rule (i)": relevance, "rule (iv)": relevance}
    figure = plot_text_relevance(tokens, fused, {"rule (i)": np.ones((12, 512))})
    width, height = figure.get_size_inches() * 110
    assert width < 2200 and height < 3000  # before: 23841 x 1601 px
    lines = [axis for axis in figure.axes if axis.images]
    assert len(lines) == 13  # ceil(512 / 40)
    shown = [label.get_text() for axis in lines for label in axis.get_xticklabels()]
    assert shown == tokens
    assert all(len(axis.get_xticklabels()) <= LINE_TOKENS for axis in lines)
    assert [label.get_text() for label in lines[0].get_yticklabels()] == ["rule (i)", "rule (iv)"]
    assert lines[0].images[0].get_clim()[1] < 0.05  # [CLS] clipped, not the scale
    assert any("per-head rows left out" in line for line in texts(figure))
    with_heads = plot_text_relevance(tokens[:100], {"r": relevance[:100]}, {"r": np.ones((2, 100))}, heads=True)
    assert [label.get_text() for label in with_heads.axes[0].get_yticklabels()] == ["r", "head 0", "head 1"]


def test_sub_word_pieces_are_marked_and_byte_level_tokens_decoded():
    from tokenizers import pre_tokenizers

    labels, notes = token_labels(["[CLS]", "play", "##ing", "chess", "[SEP]"])
    assert labels == ["[CLS]", "play", "\u00b7ing", "chess", "[SEP]"]
    assert notes == ["\u00b7x: x continues the previous word (a sub-word piece)"]
    # GPT-2's byte-level strings, made by the tokenizers library itself (an independent encoder).
    pieces = [piece for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str("The cat 日本")]
    assert pieces[1].startswith("\u0120")  # "Ġcat"
    labels, _ = token_labels([*pieces, "ting", "\u010a"])
    assert labels == ["The", "cat", "日本", "\u00b7ting", "\\n"]
    labels, _ = token_labels(["<s>", "\u2581Hel", "lo", "\u2581world", "</s>"])
    assert labels == ["<s>", "Hel", "\u00b7lo", "world", "</s>"]
    labels, _ = token_labels(["שלום", "abc"])  # right to left: reversed into visual order
    assert labels == ["םולש", "abc"]


def test_missing_glyphs_give_one_warning_not_one_per_glyph(recwarn):
    import io

    tokens = ["[CLS]", "日本", "語", "は", "[SEP]"]
    figure = plot_text_relevance(tokens, {"r": np.linspace(0, 1, 5)})
    figure.savefig(io.BytesIO(), format="png")
    messages = [str(w.message) for w in recwarn.list]
    from matplotlib import font_manager

    has_cjk = any("cjk" in f.name.lower() for f in font_manager.fontManager.ttflist)
    if has_cjk:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith("No installed font draws 4 character(s)")
        labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
        assert labels == ["[CLS]", "\u25a1\u25a1", "\u25a1", "\u25a1", "[SEP]"]
    assert not any("Glyph" in message for message in messages)


def test_report_thumbnails_are_not_darkened_by_one_patch():
    from captum_tokenlrp.report import _thumbnail

    fused, _ = sink_maps()
    grid = fused["rule (iv)"]
    thumbnail = np.asarray(_thumbnail(grid, None, 64)).astype(float)
    typical = thumbnail[: 64 // 8, : 64 // 8].mean()  # cell (0, 0): one of the ordinary cells
    assert grid[0, 0] < 0.01 and typical > 40  # max-scaled it was within 4 % of inferno's black (about 5 of 255)


def test_photo_thumbnails_keep_the_photo_aspect_and_the_crop():
    from PIL import Image
    from transformers import BitImageProcessor, ViTImageProcessor

    from captum_tokenlrp.images import processor_geometry
    from captum_tokenlrp.visualization import photo_thumbnail

    photo = Image.new("RGB", (96, 48), (255, 255, 255))
    grid = np.zeros((4, 4))
    grid[:, 0] = 1.0  # the left column of patches
    warp = ViTImageProcessor(size={"height": 32, "width": 32})
    thumbnail = np.asarray(photo_thumbnail(grid, photo, processor_geometry(warp, photo), 64, clip=None))
    assert thumbnail.shape == (32, 64, 3)  # the photo's 2:1, not the grid's square
    bright, dark = thumbnail[:, :16].mean(), thumbnail[:, 16:].mean()
    assert bright > dark + 50  # the left quarter of the photo holds the left column
    crop = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cropped = np.asarray(photo_thumbnail(grid, photo, processor_geometry(crop, photo), 96, clip=None)).astype(float)
    # Resized to 64 x 32 and centre-cropped to 32 x 32: the model saw x in [16, 48) of the 64-wide resize, the
    # middle half of the photo (thumbnail columns 24-71); outside it the photo is grey and dimmed (0.6 x white).
    assert np.allclose(cropped[:, :23], 153, atol=1) and np.allclose(cropped[:, 73:], 153, atol=1)
    assert np.allclose(cropped[:, 37:71], 128, atol=1)  # zero cells of the crop: white blended with black
    assert cropped[:, 25:35].mean() > 128 + 50  # the crop's left column of patches: bright
    with pytest.raises(ValueError, match="geometry is for a 96 x 48 photo"):
        photo_thumbnail(grid, Image.new("RGB", (10, 10)), processor_geometry(warp, photo))
