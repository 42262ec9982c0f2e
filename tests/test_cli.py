"""The tokenlrp command line: explain, explain-dir (corrupt files, resume after a kill), torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import seeded, tiny_config
from PIL import Image
from transformers import ViTImageProcessor, ViTModel

from captum_tokenlrp.cli import main
from captum_tokenlrp.models import random_dino_model

ROOT = Path(__file__).resolve().parents[1]


def save_checkpoint(directory: Path, model, size: int) -> Path:
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    model = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), trained_norms=True)
    return save_checkpoint(tmp_path / "tiny-vit", model, 32)


def write_images(folder: Path, count: int, size: int = 48, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        sub = folder / ("nested" if index % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"image_{index:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_explain_writes_the_paper_figure_and_relevance(tmp_path, tiny_checkpoint):
    images = write_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    code = main(
        ["explain", *map(str, images), "--model", str(tiny_checkpoint), "--rules", "i", "iv", "--out", str(out)]
    )
    assert code == 0
    for image in images:
        figure = out / f"{image.stem}.png"
        assert figure.stat().st_size > 5000
        saved = np.load(out / f"{image.stem}.npz")
        assert saved["rule_iv_fused"].shape == (17,) and saved["rule_i_per_head"].shape == (4, 17)
        np.testing.assert_allclose(saved["rule_iv_fused"].sum(), 1.0, atol=1e-5)
        assert tuple(saved["grid"]) == (4, 4)


def test_unreachable_hub_gives_one_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["explain", "--model", "facebook/no-such-model-here", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--model bundled" in err and "local directory" in err and "Traceback" not in err


def run_dir(images: Path, out: Path, checkpoint: Path, *extra: str) -> None:
    args = ["explain-dir", str(images), "--model", str(checkpoint), "--out", str(out), "--quiet", *extra]
    assert main(args) == 0


def test_explain_dir_skips_corrupt_files_and_resumes(tmp_path, tiny_checkpoint, capsys):
    images = write_images(tmp_path / "in", 7)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    run_dir(tmp_path / "in", out, tiny_checkpoint, "--batch-size", "3")
    captured = capsys.readouterr()
    assert "7 explained, 0 already done (skipped), 1 unreadable, 8 images" in captured.out
    assert "broken.png" in captured.err
    for image in images:
        saved = np.load(out / image.relative_to(tmp_path / "in").with_suffix(".npz"))
        assert saved["relevance"].shape == (17,)
    assert not list(out.rglob(".tmp-*"))
    run_dir(tmp_path / "in", out, tiny_checkpoint, "--batch-size", "3", "--head-fusion", "none")
    assert "0 explained, 7 already done (skipped), 1 unreadable" in capsys.readouterr().out


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "captum_tokenlrp.cli", *args]


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.load(p)["relevance"] for p in sorted(folder.rglob("*.npz"))}


def test_killed_run_resumes_to_identical_outputs(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "dino", random_dino_model(num_hidden_layers=6), 224)
    write_images(tmp_path / "in", 40, size=224)
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--batch-size", "1", "--quiet"]
    reference = tmp_path / "uninterrupted"
    subprocess.run(cli_command(*args, "--out", str(reference)), env=environment, check=True, capture_output=True)
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(cli_command(*args, "--out", str(resumed)), env=environment, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(resumed.rglob("*.npz"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list(resumed.rglob("*.npz")))
    assert 3 <= written < 40, written  # killed mid-way
    done = subprocess.run(cli_command(*args, "--out", str(resumed)), env=environment, check=True, capture_output=True)
    assert f"{40 - written} explained, {written} already done" in done.stdout.decode()
    first, second = outputs(reference), outputs(resumed)
    assert first.keys() == second.keys() and len(first) == 40
    for name in first:
        assert np.array_equal(first[name], second[name]), name


def test_torchrun_two_processes_cover_every_image_once(tmp_path, tiny_checkpoint):
    write_images(tmp_path / "in", 9)
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "captum_tokenlrp.cli",
        "explain-dir",
        str(tmp_path / "in"),
        "--model",
        str(tiny_checkpoint),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    done = subprocess.run(command, env=environment, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "9 explained, 0 already done (skipped), 0 unreadable, 9 images" in done.stdout.decode()
    assert "(2 processes)" in done.stdout.decode()
    assert len(outputs(tmp_path / "out")) == 9


def test_shapes_writes_images_masks_and_labels_that_regenerate(tmp_path, capsys):
    from captum_tokenlrp.data.shapes import SHAPE_CLASSES, generate_shapes

    assert main(["shapes", str(tmp_path / "shapes"), "--count", "7", "--seed", "9", "--size", "48"]) == 0
    images, masks, labels = generate_shapes(7, 9, 48)
    written = sorted((tmp_path / "shapes" / "images").iterdir())
    assert [path.name for path in written] == [f"shape_{index:06d}.png" for index in range(7)]
    for index, path in enumerate(written):
        pixels = np.asarray(Image.open(path), dtype=np.float32) / 255
        assert np.abs(pixels - images[index]).max() <= 0.5 / 255 + 1e-6
        mask = np.asarray(Image.open(tmp_path / "shapes" / "masks" / path.name)) > 127
        assert np.array_equal(mask, masks[index])
    rows = (tmp_path / "shapes" / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,label,class" and len(rows) == 8
    assert rows[3] == f"shape_000002.png,{labels[2]},{SHAPE_CLASSES[labels[2]]}"
    assert main(["shapes", str(tmp_path / "none"), "--count", "0"]) == 2
    assert "--count" in capsys.readouterr().err
