"""Loading checkpoints by their own config: every supported family and class, clear errors otherwise."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import seeded, tiny_config
from helpers import FAMILIES, build
from transformers import Dinov2Config, Dinov2Model, SwinConfig, SwinModel, ViTForMaskedImageModeling, ViTModel

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.models import load_model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_reloads_into_its_own_class(name, tmp_path):
    model, _ = build(name)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = TokenRelevanceLRP(model).token_relevance(images)
    torch.testing.assert_close(TokenRelevanceLRP(loaded).token_relevance(images), expected, rtol=0, atol=0)


def test_a_dinov2_checkpoint_is_not_explained_as_a_vit(tmp_path):
    """0.1 loaded every checkpoint as a ViT: a DINOv2's relevance was another model's."""
    config = Dinov2Config(**{**tiny_config().to_dict(), "model_type": "dinov2"})
    config.architectures = ["Dinov2Model"]
    model = seeded(lambda: Dinov2Model(config), trained_norms=True)
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert isinstance(loaded, Dinov2Model)
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(
        TokenRelevanceLRP(loaded).token_relevance(images), TokenRelevanceLRP(model).token_relevance(images)
    )


def test_a_224_px_dinov2_checkpoint_loads(tmp_path):
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=14, image_size=224
    )
    Dinov2Model(config).save_pretrained(tmp_path)
    assert isinstance(load_model(tmp_path), Dinov2Model)


def test_a_base_vit_loads_without_the_pooler_it_does_not_need(tmp_path, caplog, capfd):
    seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False)).save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO):
        loaded = load_model(tmp_path)
    assert isinstance(loaded, ViTModel) and loaded.pooler is None
    reported = caplog.text + "".join(capfd.readouterr())
    assert "pooler" not in reported.lower() and "missing" not in reported.lower()


def test_another_head_of_a_supported_family_loads_its_encoder(tmp_path):
    model = seeded(lambda: ViTForMaskedImageModeling(tiny_config(encoder_stride=8)))
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, ViTModel)
    torch.testing.assert_close(
        loaded.embeddings.patch_embeddings.projection.weight, model.vit.embeddings.patch_embeddings.projection.weight
    )


def test_unsupported_family_gets_one_line_naming_the_supported_ones(tmp_path):
    SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2])).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError) as raised:
        load_model(tmp_path)
    message = str(raised.value)
    assert "is a swin checkpoint (SwinConfig), which this package cannot explain" in message
    assert "\n" not in message
    for model_type in ("vit", "deit", "dinov2", "dinov2_with_registers", "beit", "vit_mae", "clip", "siglip"):
        assert f" {model_type}," in message or f" {model_type} (" in message, model_type


@pytest.mark.parametrize(
    ("name", "build_name"),
    [("clip", "CLIPModel"), ("clip_vision_model", "CLIPVisionModelWithProjection"), ("beit", "BeitModel")],
)
def test_new_families_reload_into_their_own_class(name, build_name, tmp_path):
    from families import build as build_family

    model, _ = build_family(build_name)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model)
    assert loaded.config.model_type == model.config.model_type == name


@pytest.mark.parametrize("path", ["/no/such/dir", "./missing-checkpoint", "a/b/c"])
def test_a_missing_directory_is_named_as_such(path):
    with pytest.raises(FileNotFoundError, match=r"Model directory .* does not exist"):
        load_model(path)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_model(tmp_path)
