"""The real loading path (save_pretrained / from_pretrained) and the paper-style figures."""

from __future__ import annotations

import torch
from transformers import ViTForImageClassification, ViTModel

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.models import dino_config, load_vit, random_dino_model
from captum_tokenlrp.visualization import patch_grid, plot_rule_grid


def test_dino_checkpoint_round_trip(tmp_path, dino_images):
    model = random_dino_model("dino-vits16", seed=3)
    model.save_pretrained(tmp_path / "dino-vits16")
    loaded = load_vit(str(tmp_path / "dino-vits16"))
    assert isinstance(loaded, ViTModel) and not isinstance(loaded, ViTForImageClassification)
    assert loaded.config.hidden_size == 384 and loaded.config.num_attention_heads == 6
    direct = ViTModel.from_pretrained(tmp_path / "dino-vits16", add_pooling_layer=False)
    expected = TokenRelevanceLRP(model, rule="iv").token_relevance(dino_images)
    torch.testing.assert_close(TokenRelevanceLRP(loaded, rule="iv").token_relevance(dino_images), expected)
    torch.testing.assert_close(TokenRelevanceLRP(direct, rule="iv").token_relevance(dino_images), expected)


def test_classifier_checkpoint_loads_as_classifier(tmp_path):
    config = dino_config("dino-vits8", num_hidden_layers=1, image_size=32, num_labels=3)
    ViTForImageClassification(config).save_pretrained(tmp_path / "clf")
    model = load_vit(str(tmp_path / "clf"))
    assert isinstance(model, ViTForImageClassification)
    relevance = TokenRelevanceLRP(model).token_relevance(torch.randn(2, 3, 32, 32), target=2)
    assert relevance.shape == (2, 1 + 16)


def test_dino_architectures():
    for name, (hidden, heads, patch) in {
        "dino-vits16": (384, 6, 16),
        "dino-vits8": (384, 6, 8),
        "dino-vitb16": (768, 12, 16),
        "dino-vitb8": (768, 12, 8),
    }.items():
        config = dino_config(name)
        assert (config.hidden_size, config.num_attention_heads, config.patch_size) == (hidden, heads, patch)
        assert config.num_hidden_layers == 12 and config.qkv_bias and config.image_size == 224


def figure_is_not_blank(path):
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.std() > 0.05
    return pixels


def test_paper_figure_has_one_row_per_rule_and_one_column_per_head(tmp_path, tiny_model, tiny_images):
    fused, per_head = {}, {}
    for rule in ("i", "iv"):
        lrp = TokenRelevanceLRP(tiny_model, rule=rule)
        layout = lrp.token_layout(tiny_images)
        fused[rule] = patch_grid(lrp.token_relevance(tiny_images)[0], layout)
        per_head[rule] = patch_grid(lrp.token_relevance(tiny_images, head_fusion=None)[0], layout)
    assert fused["i"].shape == (4, 4) and per_head["iv"].shape == (4, 4, 4)
    figure = plot_rule_grid(tiny_images[0], fused, per_head, scale="shared", panel_size=1.0)
    assert len(figure.axes) == 2 * (1 + 5) + 1  # image, fused, 4 heads per row; one colour bar
    figure.savefig(tmp_path / "grid.png", dpi=100)
    pixels = figure_is_not_blank(tmp_path / "grid.png")
    assert pixels.shape[:2] == (236, 660)  # 2 x 1 in panels + 0.36 in notes (two lines); 6 x 1 in + 0.6 in colour bar
