"""The README's Python snippets run (the Hub is replaced by a local random-init DINO model)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from captum_tokenlrp.models import random_dino_model

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


class OfflineProcessor:
    """Stands in for DINO's image processor: resize to 224 and normalise."""

    def __call__(self, images, return_tensors="pt"):
        pixels = torch.from_numpy(np.asarray(images.resize((224, 224)), dtype=np.float32))
        pixels = pixels.permute(2, 0, 1) / 255.0
        return {"pixel_values": ((pixels - 0.45) / 0.225)[None]}


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setattr(transformers.ViTModel, "from_pretrained", classmethod(lambda cls, *a, **k: random_dino_model()))
    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", lambda *a, **k: OfflineProcessor())
    monkeypatch.setattr(Image, "open", lambda *a, **k: Image.new("RGB", (300, 260), (200, 120, 40)))


def test_readme_has_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, offline_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = BLOCKS[index]
    # Later snippets use `model` and `pixel_values` "as above"; the quickstart defines its own.
    namespace: dict = {
        "model": random_dino_model(num_hidden_layers=4),
        "pixel_values": torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
    }
    if not hasattr(namespace["model"], "layers"):  # transformers 4.x: the README's commented line
        code = code.replace("model.layers[", "model.encoder.layer[")
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
    if "fused" in namespace:
        assert namespace["fused"].shape == (1, 197)
        assert namespace["heads"].shape == (1, 6, 197)
        assert namespace["pixels"].shape == (1, 3, 224, 224)
        assert namespace["patch_map"].shape == (14, 14)
        assert abs(float(namespace["delta"])) < 1e-5
    if "methods" in namespace:
        assert set(namespace["maps"]) == {"rule (iv)", "raw attention", "rollout", "GAE", "IG", "GradCAM"}
        assert all(grid.shape == (14, 14) for grid in namespace["maps"].values())
        assert (tmp_path / "methods.png").stat().st_size > 10_000
        assert namespace["ig"].shape == namespace["smooth"].shape == (1, 3, 224, 224)
    if "labels" in namespace and "curves" not in namespace:  # the bundled model
        assert namespace["relevance"].shape == (8, 65)
        torch.testing.assert_close(namespace["relevance"].sum(1), torch.ones(8))
    if "curves" in namespace:  # evaluation on the bundled model
        assert namespace["grid"].shape == (8, 8, 8)
        assert all(values.shape == (8,) for values in namespace["scores"].values())
        assert namespace["curves"].morf.shape == (8, 11)
