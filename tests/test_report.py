"""``tokenlrp report``: the offline HTML report of an explain-dir run (data, thumbnails, links, a real browser)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from conftest import seeded, tiny_config
from helpers import chrome_driver
from PIL import Image
from test_cli import save_checkpoint, write_images
from transformers import ViTModel

from captum_tokenlrp.cli import atomic_save_npz, main
from captum_tokenlrp.report import PAGE_SIZE, write_report

COUNT = 1000
RULES = ["i", "iv"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A real explain-dir run over 1 000 tiny images (two rules), and its report."""
    root = tmp_path_factory.mktemp("report")
    model = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), trained_norms=True)
    checkpoint = save_checkpoint(root / "tiny-vit", model, 32)
    images = root / "images"
    write_images(images, COUNT, size=32)
    out = root / "relevance"
    args = ["explain-dir", str(images), "--model", str(checkpoint), "--out", str(out), "--quiet"]
    assert main([*args, "--rules", *RULES, "--batch-size", "250"]) == 0
    started = time.perf_counter()
    index = write_report(out, images)
    print(f"write_report: {COUNT} images, {len(RULES)} rules in {time.perf_counter() - started:.1f} s")
    return {"images": images, "out": out, "index": index, "checkpoint": checkpoint}


def load_data(index: Path) -> dict:
    return json.loads((index.parent / "data.json").read_text(encoding="utf-8"))


def expected_concentration(relevance: np.ndarray, special_tokens: int) -> float:
    """Independent of the module: share of |relevance| in the top 10 % of the patch tokens."""
    if relevance.ndim == 2:
        relevance = relevance.mean(axis=0)
    patches = np.abs(relevance[special_tokens:].astype(np.float64))
    top = sorted(patches, reverse=True)[: math.ceil(len(patches) / 10)]
    return sum(top) / patches.sum()


def test_data_lists_every_image_with_its_concentration(run):
    data = load_data(run["index"])
    npz_files = sorted(run["out"].rglob("*.npz"))
    assert len(npz_files) == COUNT
    assert sorted(item["name"] for item in data["images"]) == sorted(
        p.relative_to(run["out"]).as_posix()[: -len(".npz")] for p in npz_files
    )
    assert data["skipped"] == [] and data["rules"] == RULES and data["page_size"] == PAGE_SIZE
    by_name = {item["name"]: item for item in data["images"]}
    scores = []
    for path in npz_files:
        item = by_name[path.relative_to(run["out"]).as_posix()[: -len(".npz")]]
        with np.load(path) as saved:
            for rule in RULES:
                expected = expected_concentration(saved[f"relevance_{rule}"], len(saved["special_tokens"]))
                assert item["concentration"][rule] == pytest.approx(expected, abs=1e-6)
                scores.append(expected)
        assert item["has_image"] and item["class"] is None
    assert 0.1 <= min(scores) < max(scores) <= 1.0


def test_thumbnails_and_relative_links_point_to_existing_files(run):
    report = run["index"].parent
    data = load_data(run["index"])
    for item in data["images"]:
        for rule in RULES:
            thumb = report / item["thumbs"][rule]
            assert thumb.is_file()
        assert not item["npz"].startswith(("/", "file:", "http")) and not os.path.isabs(item["npz"])
        assert (report / unquote(item["npz"])).resolve() == (run["out"] / f"{item['name']}.npz").resolve()
    with Image.open(report / data["images"][0]["thumbs"]["iv"]) as thumb:
        assert thumb.size == (128, 128) and thumb.mode == "RGB"


def test_html_shows_the_manifest_and_needs_no_network(run):
    page = run["index"].read_text(encoding="utf-8")
    manifest = json.loads((run["out"] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"] in page and manifest["head_fusion"] in page and manifest["version"] in page
    assert "i, iv" in page  # the rules row
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert '<script src="data.js"></script>' in page and "loading" in page
    assert (run["index"].parent / "data.js").read_text(encoding="utf-8").startswith("window.REPORT_DATA = ")


def test_a_folder_without_manifest_is_a_clear_cli_error(tmp_path, capsys):
    (tmp_path / "a.png.npz").write_bytes(b"")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no manifest.json" in err and "explain-dir" in err and "Traceback" not in err
    assert not (tmp_path / "report").exists()


def small_run(tmp_path: Path, checkpoint: Path, count: int = 4) -> tuple[Path, Path]:
    images = tmp_path / "images"
    write_images(images, count, size=32)
    out = tmp_path / "relevance"
    assert main(["explain-dir", str(images), "--model", str(checkpoint), "--out", str(out), "--quiet"]) == 0
    return images, out


def test_other_manifests_are_skipped_and_a_rerun_replaces_the_report(tmp_path, run, capsys):
    images, out = small_run(tmp_path, run["checkpoint"])
    with np.load(out / "image_001.png.npz") as saved:
        arrays = dict(saved)
    other = json.loads(str(arrays["manifest"]))
    other["rules"] = ["ii"]
    arrays["manifest"] = np.array(json.dumps(other))
    atomic_save_npz(out / "stale" / "other.png.npz", **arrays)
    (out / "broken.png.npz").write_bytes(b"not a zip")
    assert main(["report", str(out), "--images", str(images), "--thumbnail-size", "64"]) == 0
    assert "index.html" in capsys.readouterr().out
    data = load_data(out / "report" / "index.html")
    assert len(data["images"]) == 4
    assert {item["name"] for item in data["skipped"]} == {"stale/other.png.npz", "broken.png.npz"}
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "2 file(s) skipped" in page and "stale/other.png.npz" in page
    (out / "report" / "leftover.txt").write_text("from an earlier report")
    shutil.rmtree(images)  # the photos are gone: the maps are drawn alone
    write_report(out, None, thumbnail_size=64)
    assert not (out / "report" / "leftover.txt").exists()
    data = load_data(out / "report" / "index.html")
    assert not any(item["has_image"] for item in data["images"])
    with Image.open(out / "report" / data["images"][0]["thumbs"]["iv"]) as thumb:
        assert thumb.size == (64, 64)
    assert not list(out.glob(".tmp-report-*"))


def test_a_foreign_report_folder_is_not_deleted(tmp_path, run, capsys):
    _, out = small_run(tmp_path, run["checkpoint"], count=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["report", str(out), "--out", str(mine)]) == 2
    assert "not written by 'tokenlrp report'" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_class_recorded_in_the_npz_files_is_offered_as_a_filter(tmp_path, run):
    _, out = small_run(tmp_path, run["checkpoint"])
    for number, path in enumerate(sorted(out.rglob("*.npz"))):
        with np.load(path) as saved:
            arrays = dict(saved)
        atomic_save_npz(path, **arrays, predicted_class=np.array("cat" if number % 2 else "dog"))
    data = load_data(write_report(out))
    assert sorted(item["class"] for item in data["images"]) == ["cat", "cat", "dog", "dog"]


# ------------------------------------------------------------------ a real browser
def test_the_report_pages_sorts_and_filters_in_headless_chromium(run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chrome_driver()
    try:
        started = time.perf_counter()
        driver.get(run["index"].resolve().as_uri())
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cards .card")) == PAGE_SIZE)
        loaded = time.perf_counter() - started
        print(f"report of {COUNT} images: first page rendered {loaded:.2f} s after the page was opened")
        assert "1 / 10" in driver.find_element(By.ID, "page-info").text

        def names() -> list[str]:
            return [card.get_attribute("data-name") for card in driver.find_elements(By.CSS_SELECTOR, "#cards .card")]

        first = names()
        assert first == sorted(first)
        cards = driver.find_elements(By.CSS_SELECTOR, "#cards .card")
        assert all(card.find_element(By.TAG_NAME, "img").get_attribute("loading") == "lazy" for card in cards)
        driver.find_element(By.ID, "next").click()
        second = names()
        assert len(second) == PAGE_SIZE and not set(first) & set(second) and second[0] > first[-1]
        assert "2 / 10" in driver.find_element(By.ID, "page-info").text

        data = load_data(run["index"])
        Select(driver.find_element(By.ID, "sort")).select_by_value("conc-desc")
        top = driver.find_element(By.CSS_SELECTOR, "#cards .card")
        best = max(item["concentration"]["i"] for item in data["images"])
        assert float(top.get_attribute("data-concentration")) == pytest.approx(best)
        assert "1 / 10" in driver.find_element(By.ID, "page-info").text
        Select(driver.find_element(By.ID, "rule")).select_by_value("iv")
        top = driver.find_element(By.CSS_SELECTOR, "#cards .card")
        assert float(top.get_attribute("data-concentration")) == pytest.approx(
            max(item["concentration"]["iv"] for item in data["images"])
        )

        driver.find_element(By.ID, "filter").send_keys("nested/image_00")
        filtered = names()
        expected = sorted(item["name"] for item in data["images"] if "nested/image_00" in item["name"])
        assert sorted(filtered) == expected and 0 < len(filtered) < PAGE_SIZE
        assert "hidden" in driver.find_element(By.ID, "class-control").get_attribute("class")
        assert driver.find_element(By.ID, "next").get_attribute("disabled") is not None
        filter_box = driver.find_element(By.ID, "filter")
        filter_box.clear()
        filter_box.send_keys("no-such-name")
        assert names() == []
        assert 'No image name contains "no-such-name"' in driver.find_element(By.ID, "cards").text

        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()


def test_a_classifier_run_records_predictions_and_the_report_filters_by_class(tmp_path):
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    labels = {0: "disc", 1: "star", 2: "ring"}
    model = seeded(lambda: ViTForImageClassification(tiny_config(num_labels=3, id2label=labels)), trained_norms=True)
    checkpoint = save_checkpoint(tmp_path / "clf", model, 32)
    images = write_images(tmp_path / "in", 6, size=32)
    out = tmp_path / "out"
    assert main(["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(out), "--quiet"]) == 0
    processor = ViTImageProcessor.from_pretrained(checkpoint)
    names = set()
    for image in images:
        saved = np.load(out / image.relative_to(tmp_path / "in").with_suffix(".png.npz"))
        with torch.no_grad():
            logits = model(
                processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
            ).logits
        probabilities = logits[0].softmax(-1)
        assert int(saved["predicted_class"]) == int(probabilities.argmax())
        assert str(saved["class_name"]) == labels[int(probabilities.argmax())]
        assert float(saved["probability"]) == pytest.approx(float(probabilities.max()), abs=1e-5)
        names.add(str(saved["class_name"]))
    data = load_data(write_report(out, tmp_path / "in"))
    assert {item["class"] for item in data["images"]} == names


# ------------------------------------------------------------------ what the report says about its inputs
def test_an_images_folder_that_matches_nothing_is_an_error_and_a_partial_one_a_warning(tmp_path, run, capsys):
    images, out = small_run(tmp_path, run["checkpoint"])
    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere / "other", 2, size=32)
    assert main(["report", str(out), "--images", str(elsewhere)]) == 2
    err = capsys.readouterr().err
    assert "none of the run's 4 images" in err and "image_001.png" in err and "Traceback" not in err
    assert not (out / "report").exists()

    (images / "image_001.png").unlink()
    assert main(["report", str(out), "--images", str(images)]) == 0
    err = capsys.readouterr().err
    assert "1 of the run's 4 images are not under" in err and "image_001.png" in err
    data = load_data(out / "report" / "index.html")
    assert data["images_not_found"] == ["image_001.png"]
    assert [item["name"] for item in data["images"] if not item["has_image"]] == ["image_001.png"]
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="images-not-found"' in page and "image_001.png" in page

    write_report(out, None)  # no --images at all: said on the page, no warning needed on stderr
    assert "No --images folder" in (out / "report" / "index.html").read_text(encoding="utf-8")


def test_inputs_of_the_run_without_a_map_are_listed_with_the_reason(tmp_path, run):
    images = tmp_path / "images"
    write_images(images, 3, size=32)
    (images / "broken.png").write_text("not an image")
    out = tmp_path / "relevance"
    assert main(["explain-dir", str(images), "--model", str(run["checkpoint"]), "--out", str(out), "--quiet"]) == 0
    Image.new("RGB", (32, 32)).save(images / "later.png")  # added after the run: readable, not explained yet
    data = load_data(write_report(out, images))
    assert len(data["images"]) == 3
    listed = {item["name"]: item["reason"] for item in data["inputs_without_map"]}
    assert set(listed) == {"broken.png", "later.png"}
    assert listed["broken.png"].startswith("unreadable (") and "later.png" not in listed["broken.png"]
    assert listed["later.png"].startswith("not explained")
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "2 input(s) without a map" in page and "broken.png" in page


def test_the_manifest_shows_json_values_folded_under_a_summary(run):
    page = run["index"].read_text(encoding="utf-8")
    manifest = json.loads((run["out"] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["target_token"] is None and manifest["interpolate_pos_encoding"] is False
    start, end = page.index('<details id="manifest-details">'), page.index("</details>")
    folded = page[start:end]
    assert "<summary>" in folded and manifest["model"] in folded.split("</summary>")[0]
    assert "<td>null</td>" in folded and "<td>false</td>" in folded
    assert "None" not in folded and "False" not in folded


def test_large_runs_print_progress_to_stderr(tmp_path, run, capsys, monkeypatch):
    from captum_tokenlrp import report

    _, out = small_run(tmp_path, run["checkpoint"], count=4)
    capsys.readouterr()
    write_report(out, None)
    assert "tokenlrp report:" not in capsys.readouterr().err  # small runs: quiet
    monkeypatch.setattr(report, "PROGRESS_MIN_IMAGES", 2)
    write_report(out, None)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tokenlrp report:")]
    assert lines == [f"tokenlrp report: {done}/4 images" for done in (1, 2, 3, 4)]


def test_one_outlying_patch_does_not_set_a_thumbnails_colour_scale(run):
    """A sink-like patch holding 100 x the others: the other patches keep their colours (with the maximum as the
    top they were all near black), the outlier is drawn in the top colour and outlined in cyan, and the page
    states the scale."""
    from matplotlib import colormaps

    from captum_tokenlrp.report import _thumbnail
    from captum_tokenlrp.visualization import colour_scale

    cyan = (0, 255, 255)
    patches = np.random.default_rng(0).uniform(1.0, 2.0, (8, 8))
    patches[2, 5] = 200.0
    scale = colour_scale([patches])
    assert scale.clipped and scale.high < 4.0  # the robust top: 2 x the 99th percentile, not the outlier
    thumb = np.asarray(_thumbnail(patches, None, 128))
    assert thumb.shape == (128, 128, 3)

    def colour(value):
        return tuple((np.array(colormaps["inferno"](min(value / scale.high, 1.0))[:3]) * 255).astype(np.uint8))

    # Every other patch at the centre of its 16 x 16 cell: coloured on the robust scale, not by the outlier.
    for row, col in np.ndindex(8, 8):
        if (row, col) != (2, 5):
            assert tuple(thumb[16 * row + 8, 16 * col + 8]) == colour(patches[row, col])
    brightest_other = np.sort(patches.ravel())[-2]
    assert colour(brightest_other)[0] > 180  # bright, where value / max (0.01) would be near black
    assert tuple(thumb[2 * 16 + 8, 5 * 16 + 8]) == colour(patches.max())  # the outlier: the top colour
    border = [thumb[32, 80:96], thumb[47, 80:96], thumb[32:48, 80], thumb[32:48, 95]]
    assert all((edge == cyan).all() for edge in border)
    assert (thumb == cyan).all(axis=-1).sum() == 4 * 15  # only that patch is outlined
    # Without an outlier nothing is clipped or outlined, and the top is the maximum.
    smooth = np.asarray(_thumbnail(np.linspace(1, 2, 64).reshape(8, 8), None, 128))
    assert not (smooth == cyan).all(axis=-1).any()
    assert tuple(smooth[7 * 16 + 8, 7 * 16 + 8]) == colour_top()
    page = run["index"].read_text(encoding="utf-8")
    assert "Colour scale: one per thumbnail, from 0 to the map's largest |relevance|, but at most 2 x its" in page
    assert "99th-percentile patch" in page and "outlined in cyan" in page


def colour_top():
    from matplotlib import colormaps

    return tuple((np.array(colormaps["inferno"](1.0)[:3]) * 255).astype(np.uint8))
