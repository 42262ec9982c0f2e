"""The bundled model: loads offline, is as accurate as its record says, and drives the CLI's default run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTForImageClassification

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import AttentionRollout, RandomRelevance, TokenGradCAM
from captum_tokenlrp.cli import main
from captum_tokenlrp.data.shapes import SHAPE_CLASSES, generate_shapes, normalize
from captum_tokenlrp.evaluation import (
    localisation_scores,
    parameter_randomization_test,
    patch_relevance_grid,
    perturbation_curves,
    relevance_mass,
)
from captum_tokenlrp.models import BUNDLED_MODEL_DIR, BUNDLED_SAMPLE_SOURCE, bundled_sample_image, load_bundled_model

#: Stream seed of the test's images: not training (0), the training run's check (1), the sample (2)
#: or the benchmark (3).
TEST_SEED = 4


@pytest.fixture(scope="module")
def bundled():
    return load_bundled_model()


def test_loads_offline_with_the_required_architecture(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_bundled_model()
    config = model.config
    assert type(model).__name__ == "ViTForImageClassification"
    assert config.num_attention_heads == 6 and config.num_hidden_layers >= 6 and config.patch_size == 8
    assert [config.id2label[index] for index in range(len(SHAPE_CLASSES))] == list(SHAPE_CLASSES)
    weights = BUNDLED_MODEL_DIR / "model.safetensors"
    total = sum(path.stat().st_size for path in BUNDLED_MODEL_DIR.iterdir())
    assert weights.exists() and total <= 20 * 2**20
    assert not model.training


def test_held_out_accuracy_on_fresh_images_reaches_the_target_and_the_record(bundled):
    # 500 images from a stream neither training nor the record used: at least the 95 %,
    # and within 3 binomial standard errors of the accuracy the training record reports.
    record = json.loads((BUNDLED_MODEL_DIR / "training.json").read_text())
    images, _, labels = generate_shapes(500, TEST_SEED, bundled.config.image_size)
    with torch.no_grad():
        predicted = torch.cat([bundled(normalize(images[s : s + 250])).logits.argmax(1) for s in (0, 250)])
    accuracy = (predicted.numpy() == labels).mean()
    recorded = record["held_out_accuracy"]
    standard_error = (recorded * (1 - recorded) / 500) ** 0.5
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f} on 500 images of stream {TEST_SEED}"
    assert abs(accuracy - recorded) <= 3 * standard_error, f"{accuracy:.3f} vs recorded {recorded:.3f}"


def test_training_record_is_complete():
    record = json.loads((BUNDLED_MODEL_DIR / "training.json").read_text())
    assert record["command"].startswith("python scripts/train_bundled.py")
    assert record["held_out_accuracy"] >= 0.95 and record["held_out_images"] >= 500
    assert record["train_seconds"] <= 40 * 60
    assert record["train_stream_seed"] != record["held_out_stream_seed"]


def _training_script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "train_bundled.py"
    spec = importlib.util.spec_from_file_location("train_bundled", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_script_writes_a_loadable_model_and_an_honest_record(tmp_path, monkeypatch):
    # A few steps of the real script, small: the record counts each generated batch once
    # although it serves ``echo`` steps, and the output loads as a plain HF classifier.
    train = _training_script()
    generated_starts = []

    def counting_generate_shapes(count, seed, size, start=0, clutter=1.0):
        generated_starts.append((seed, start))
        return generate_shapes(count, seed, size, start=start, clutter=clutter)

    monkeypatch.setattr(train, "generate_shapes", counting_generate_shapes)
    out = tmp_path / "model"
    argv = ["--steps", "5", "--batch", "6", "--echo", "2", "--hidden-size", "24", "--held-out", "12", "--out", str(out)]
    assert train.main(argv) == 0
    training_starts = [start for seed, start in generated_starts if seed == 0]
    assert training_starts == [0, 6, 12]  # 5 steps, each batch of 6 serving 2 steps, never repeated after
    record = json.loads((out / "training.json").read_text())
    assert (record["steps"], record["echo"]) == (5, 2)
    assert (record["train_images_seen"], record["train_views"]) == (3 * 6, 5 * 6)
    assert (record["train_stream_seed"], record["held_out_stream_seed"]) == (0, 1)
    assert 0.0 <= record["held_out_accuracy"] <= 1.0 and record["held_out_images"] == 12
    model = ViTForImageClassification.from_pretrained(out)
    assert (model.config.num_attention_heads, model.config.patch_size, model.config.intermediate_size) == (6, 8, 48)
    with pytest.raises(SystemExit):
        train.main(["--held-out-seed", "0", "--out", str(out)])


def test_sample_is_a_regenerable_image_the_model_classifies_and_explains_on_the_object(bundled):
    seed, index = BUNDLED_SAMPLE_SOURCE
    image, mask, label = generate_shapes(1, seed, bundled.config.image_size, start=index)
    sample = np.asarray(bundled_sample_image(), dtype=np.float32) / 255
    assert np.abs(sample - image[0]).max() <= 0.5 / 255 + 1e-6  # the PNG is the generated image, rounded
    processor_config = json.loads((BUNDLED_MODEL_DIR / "preprocessor_config.json").read_text())
    mean, std = np.array(processor_config["image_mean"]), np.array(processor_config["image_std"])
    pixels = torch.from_numpy(((sample - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        probabilities = bundled(pixels).logits.softmax(-1)[0]
    assert probabilities.argmax().item() == label[0] and probabilities.max() > 0.5
    method = TokenRelevanceLRP(bundled)
    grid = patch_relevance_grid(method.token_relevance(pixels), method.token_layout(pixels))
    object_area = relevance_mass(torch.ones_like(grid), torch.from_numpy(mask)).item()
    assert relevance_mass(grid, torch.from_numpy(mask)).item() > object_area


def test_cli_explain_defaults_to_the_bundled_sample(bundled, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", "--model", "bundled", "--out", str(out)]) == 0
    assert "sample.png.png" in capsys.readouterr().out
    with Image.open(out / "sample.png.png") as figure:
        pixels = np.asarray(figure.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # a figure, not a blank canvas
    saved = np.load(out / "sample.png.npz")
    for rule in ("i", "ii", "iii", "iv"):
        assert saved[f"relevance_{rule}"].shape == (65,)
        assert saved[f"relevance_{rule}_per_head"].shape == (6, 65)
        np.testing.assert_allclose(saved[f"relevance_{rule}"].sum(), 1.0, atol=1e-5)
    relevance = TokenRelevanceLRP(bundled).token_relevance(
        normalize(np.asarray(bundled_sample_image(), dtype=np.float32)[None] / 255)
    )
    np.testing.assert_allclose(saved["relevance_iv"], relevance[0].numpy(), atol=1e-4)


# ------------------------------------------------------------------ the evaluation metrics on the bundled model
@pytest.fixture(scope="module")
def held_out(bundled):
    images, masks, _ = generate_shapes(48, TEST_SEED, bundled.config.image_size, start=500)
    return normalize(images), torch.from_numpy(masks)


def test_token_relevance_puts_more_than_chance_on_the_object(bundled, held_out):
    pixel_values, masks = held_out
    method = TokenRelevanceLRP(bundled, rule="iv")
    grid = patch_relevance_grid(method.token_relevance(pixel_values), method.token_layout(pixel_values))
    scores = localisation_scores(grid, masks)
    uniform = localisation_scores(torch.ones_like(grid), masks)  # chance: the object's share of patches
    assert scores["mass"].mean() > uniform["mass"].mean()
    assert scores["pointing"].mean() > uniform["pointing"].mean()


def test_deletion_curves_separate_a_faithful_map_from_a_random_one(bundled, held_out):
    pixel_values, _ = held_out
    layout = TokenRelevanceLRP(bundled).token_layout(pixel_values)
    gradcam = patch_relevance_grid(TokenGradCAM(bundled).token_relevance(pixel_values), layout)
    random = patch_relevance_grid(RandomRelevance(bundled).token_relevance(pixel_values), layout)
    faithful, control = (
        perturbation_curves(bundled, pixel_values, gradcam),
        perturbation_curves(bundled, pixel_values, random),
    )
    # Removing what GradCAM ranks first hurts more than removing what it ranks last ...
    assert faithful.auc_morf.mean() < faithful.auc_lerf.mean()
    # ... and more than the random order does.
    assert faithful.area_between.mean() > control.area_between.mean()
    torch.testing.assert_close(faithful.morf[:, 0], control.morf[:, 0])  # same unperturbed start


def test_randomisation_separates_model_dependent_maps_from_a_model_free_one(bundled, held_out):
    pixel_values, _ = held_out
    layout = TokenRelevanceLRP(bundled).token_layout(pixel_values)

    def rollout(model, x):
        return patch_relevance_grid(AttentionRollout(model).token_relevance(x), layout)

    def random(model, x):
        return patch_relevance_grid(RandomRelevance(model).token_relevance(x), layout)

    assert parameter_randomization_test(bundled, rollout, pixel_values[:8]).mean()["embeddings"] < 0.5
    assert (parameter_randomization_test(bundled, random, pixel_values[:8]).spearman == 1).all()
