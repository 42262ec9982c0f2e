"""The tokenlrp command line: explain, explain-dir (corrupt files, resume after a kill), torchrun."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, seeded, tiny_config
from helpers import free_port
from PIL import Image
from transformers import Dinov2Config, Dinov2Model, ViTForImageClassification, ViTImageProcessor, ViTModel

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.cli import atomic_save_npz, build_parser, main
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
        figure = out / f"{image.name}.png"
        assert figure.stat().st_size > 5000
        saved = np.load(out / f"{image.name}.npz")
        assert saved["relevance_iv"].shape == (17,) and saved["relevance_i_per_head"].shape == (4, 17)
        np.testing.assert_allclose(saved["relevance_iv"].sum(), 1.0, atol=1e-5)
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
        saved = np.load(out / image.relative_to(tmp_path / "in").with_suffix(".png.npz"))
        assert saved["relevance"].shape == (17,)
    assert not list(out.rglob(".tmp-*"))
    run_dir(tmp_path / "in", out, tiny_checkpoint, "--batch-size", "2")
    assert "0 explained, 7 already done (skipped), 1 unreadable" in capsys.readouterr().out


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "captum_tokenlrp.cli", *args]


def written_outputs(folder: Path) -> list[Path]:
    """Finished outputs: a kill can leave a temporary ``.tmp-*.npz``, which is not one."""
    return sorted(p for p in folder.rglob("*.npz") if not p.name.startswith(".tmp-"))


def outputs(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.load(p)["relevance"] for p in written_outputs(folder)}


#: Runs ``tokenlrp`` and kills the process (SIGKILL, which nothing can catch or clean up after) at a known point:
#: while the 4th output is being written, its temporary file complete and not yet renamed into place. A kill from
#: outside after watching the folder would land anywhere (or after the run ended, on a fast machine); this one
#: always leaves 3 finished outputs and one temporary, the worst a kill can leave.
_KILL_WHILE_WRITING_THE_FOURTH_OUTPUT = """
import os, signal, sys
import captum_tokenlrp.cli as cli
real_replace, finished = os.replace, []
def replace(source, target, *args, **kwargs):
    if str(target).endswith(".npz"):
        if len(finished) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        finished.append(target)
    return real_replace(source, target, *args, **kwargs)
os.replace = replace
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow  # three runs over 40 images of 224 px through a 6-layer DINO, in subprocesses
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_run_resumes_to_identical_outputs(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "dino", random_dino_model(num_hidden_layers=6), 224)
    write_images(tmp_path / "in", 40, size=224)
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--batch-size", "1", "--quiet"]
    reference = tmp_path / "uninterrupted"
    subprocess.run(cli_command(*args, "--out", str(reference)), env=environment, check=True, capture_output=True)
    resumed = tmp_path / "resumed"
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_WHILE_WRITING_THE_FOURTH_OUTPUT, *args, "--out", str(resumed)],
        env=environment,
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    written = len(written_outputs(resumed))
    assert written == 3  # killed mid-way, at the point the child chose
    assert len(list(resumed.rglob(".tmp-*.npz"))) == 1  # the 4th output, never renamed into place
    done = subprocess.run(cli_command(*args, "--out", str(resumed)), env=environment, check=True, capture_output=True)
    assert f"{40 - written} explained, {written} already done" in done.stdout.decode()
    first, second = outputs(reference), outputs(resumed)
    assert first.keys() == second.keys() and len(first) == 40
    for name in first:
        assert np.array_equal(first[name], second[name]), name


@pytest.mark.slow  # two processes started by torchrun, each loading torch and the model
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
        str(free_port()),  # a port no other run (another test session, a second CI job) is using
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


# ------------------------------------------------------------------ surface correctness (0.2)
def test_files_sharing_a_stem_keep_their_own_outputs(tmp_path, tiny_checkpoint, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "cat.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "cat.jpg", quality=95)
    out = tmp_path / "out"
    run_dir(folder, out, tiny_checkpoint)
    assert "2 explained" in capsys.readouterr().out
    png, jpg = np.load(out / "cat.png.npz")["relevance"], np.load(out / "cat.jpg.npz")["relevance"]
    assert not np.array_equal(png, jpg)
    run_dir(folder, out, tiny_checkpoint)
    assert "0 explained, 2 already done" in capsys.readouterr().out


def test_a_rerun_with_other_settings_is_refused_and_overwrite_redoes_it(tmp_path, tiny_checkpoint, capsys):
    write_images(tmp_path / "in", 3, size=32)
    out = tmp_path / "out"
    run_dir(tmp_path / "in", out, tiny_checkpoint, "--rule", "iv")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rules"] == ["iv"] and manifest["head_fusion"] == "mean" and len(manifest["weights_sha256"]) == 64
    first = outputs(out)
    saved = np.load(next(out.rglob("*.npz")))
    assert json.loads(str(saved["manifest"])) == manifest
    capsys.readouterr()
    args = ["explain-dir", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "--out", str(out), "--quiet"]
    assert main([*args, "--rule", "i"]) == 2
    assert "rules: ['iv'] there, ['i'] now" in capsys.readouterr().err
    assert all(np.array_equal(first[name], value) for name, value in outputs(out).items())  # nothing was touched
    other = tmp_path / "other-model"
    save_checkpoint(other, seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), seed=5), 32)
    assert main(["explain-dir", str(tmp_path / "in"), "--model", str(other), "--out", str(out), "--quiet"]) == 2
    assert "weights_sha256" in capsys.readouterr().err
    assert main([*args, "--rule", "i", "--overwrite"]) == 0
    assert "3 explained, 0 already done" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["rules"] == ["i"]
    assert all(not np.array_equal(first[name], value) for name, value in outputs(out).items())


def test_outputs_without_a_matching_manifest_are_not_counted_as_done(tmp_path, tiny_checkpoint, capsys):
    images = write_images(tmp_path / "in", 2, size=32)
    out = tmp_path / "out"
    stale = out / images[1].relative_to(tmp_path / "in").with_suffix(".png.npz")
    stale.parent.mkdir(parents=True)
    np.savez(stale, relevance=np.zeros(17))  # another tool's file (no manifest of this package)
    args = ["explain-dir", str(tmp_path / "in"), "--model", str(tiny_checkpoint), "--out", str(out), "--quiet"]
    assert main(args) == 2  # never replaced: refused before anything is written
    assert f"{stale} exists and was not written by tokenlrp" in capsys.readouterr().err
    assert np.load(stale)["relevance"].sum() == 0 and not (out / "manifest.json").exists()
    stale.unlink()
    run_dir(tmp_path / "in", out, tiny_checkpoint)
    assert "2 explained, 0 already done" in capsys.readouterr().out
    # an output of this package with another manifest is not done either, and is replaced
    saved = dict(np.load(stale))
    atomic_save_npz(stale, **{**saved, "manifest": np.array(json.dumps({"package": "captum-tokenlrp", "rules": []}))})
    run_dir(tmp_path / "in", out, tiny_checkpoint)
    assert "1 explained, 1 already done" in capsys.readouterr().out
    assert np.load(stale)["relevance"].sum() == pytest.approx(1.0, abs=1e-5)


def test_outputs_are_readable_as_an_ordinary_write_makes_them(tmp_path, tiny_checkpoint):
    write_images(tmp_path / "in", 1, size=32)
    previous = os.umask(0o022)
    try:
        run_dir(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
        assert main(["explain", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "fig"), "--rules", "i"]) == 0
    finally:
        os.umask(previous)
    written = [
        *tmp_path.joinpath("out").rglob("*.npz"),
        tmp_path / "out" / "manifest.json",
        *tmp_path.joinpath("fig").iterdir(),
    ]
    assert len(written) == 4
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_rule_and_rules_are_accepted_by_both_commands_and_every_option_has_help(tmp_path, tiny_checkpoint):
    images = write_images(tmp_path / "in", 1, size=32)
    assert (
        main(["explain", str(images[0]), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "a"), "--rule", "ii"])
        == 0
    )
    assert set(np.load(tmp_path / "a" / "image_000.png.npz").files) >= {"relevance_ii", "relevance_ii_per_head"}
    run_dir(tmp_path / "in", tmp_path / "b", tiny_checkpoint, "--rules", "i", "iv")
    saved = np.load(next((tmp_path / "b").rglob("*.npz")))
    assert {"relevance_i", "relevance_iv"} <= set(saved.files) and "relevance" not in saved.files
    parser = build_parser()
    subcommands = next(action for action in parser._actions if action.dest == "command").choices
    for name, sub in subcommands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"tokenlrp {name}: {action.option_strings or action.dest} has no help"


def test_explain_runs_one_forward_for_every_rule(tmp_path, tiny_checkpoint, monkeypatch):
    import captum_tokenlrp.cli as cli
    from captum_tokenlrp.cli import _explain

    loaded = cli.load_model(str(tiny_checkpoint), "cpu", "float32")
    calls = []
    loaded.model.register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(_explain, "load_model", lambda *args: loaded)
    images = write_images(tmp_path / "in", 1, size=32)
    assert main(["explain", str(images[0]), "--model", "x", "--out", str(tmp_path / "out")]) == 0
    assert len(calls) == 1
    saved = np.load(tmp_path / "out" / "image_000.png.npz")
    from captum_tokenlrp.images import load_image

    pixel_values = cli.preprocess(loaded.processor, [load_image(images[0])])
    for rule in ("i", "ii", "iii", "iv"):
        lrp = TokenRelevanceLRP(loaded.model, rule=rule)
        np.testing.assert_array_equal(saved[f"relevance_{rule}"], lrp.token_relevance(pixel_values)[0].numpy())
        np.testing.assert_array_equal(
            saved[f"relevance_{rule}_per_head"], lrp.token_relevance(pixel_values, head_fusion=None)[0].numpy()
        )


def test_explain_titles_a_classifier_figure_with_its_prediction(tmp_path, monkeypatch):
    import captum_tokenlrp.cli as cli
    from captum_tokenlrp.cli import _explain

    model = seeded(lambda: ViTForImageClassification(tiny_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})))
    checkpoint = save_checkpoint(tmp_path / "clf", model, 32)
    seen = {}
    drawn = _explain.plot_rule_grid

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return drawn(*args, **kwargs)

    monkeypatch.setattr(_explain, "plot_rule_grid", spy)
    images = write_images(tmp_path / "in", 1, size=32)
    assert (
        main(["explain", str(images[0]), "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--rules", "i"])
        == 0
    )
    pixel_values = cli.preprocess(ViTImageProcessor.from_pretrained(checkpoint), [Image.open(images[0]).convert("RGB")])
    with torch.no_grad():
        probabilities = model(pixel_values).logits.softmax(-1)[0]
    name, probability = seen["prediction"]
    assert name == "abc"[int(probabilities.argmax())] and probability == pytest.approx(float(probabilities.max()))
    assert seen["scale"] == "row" and seen["processor"] is not None


def test_a_dinov2_checkpoint_is_explained_as_dinov2(tmp_path):
    config = Dinov2Config(**{key: value for key, value in TINY.items() if key != "qkv_bias"})
    model = seeded(lambda: Dinov2Model(config), trained_norms=True)
    checkpoint = save_checkpoint(tmp_path / "dinov2", model, 32)
    images = write_images(tmp_path / "in", 1, size=32)
    assert (
        main(["explain", str(images[0]), "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--rules", "iv"])
        == 0
    )
    pixel_values = ViTImageProcessor.from_pretrained(checkpoint)(images=Image.open(images[0]), return_tensors="pt")
    expected = TokenRelevanceLRP(model).token_relevance(pixel_values["pixel_values"])[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "image_000.png.npz")["relevance_iv"], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "message"),
    [("/no/such/dir", "Model directory /no/such/dir does not exist"), ("./not-here/ckpt", "does not exist")],
)
def test_a_missing_model_directory_is_named(model, message, tmp_path, capsys):
    assert main(["explain", "--model", model, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "repo id" not in err.lower() and "Traceback" not in err


def test_interpolate_pos_encoding_flag(tmp_path, tiny_checkpoint, capsys):
    checkpoint = tmp_path / "wide"
    ViTModel.from_pretrained(tiny_checkpoint).save_pretrained(checkpoint)
    ViTImageProcessor(size={"height": 48, "width": 48}).save_pretrained(checkpoint)  # not the model's 32 px
    images = write_images(tmp_path / "in", 1, size=48)
    args = ["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "interpolate_pos_encoding" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--interpolate-pos-encoding"]) == 0
    saved = np.load(next((tmp_path / "b").rglob("*.npz")))
    assert tuple(saved["grid"]) == (6, 6)
    model = ViTModel.from_pretrained(checkpoint)
    pixel_values = ViTImageProcessor.from_pretrained(checkpoint)(images=Image.open(images[0]), return_tensors="pt")
    expected = TokenRelevanceLRP(model).token_relevance(
        pixel_values["pixel_values"], additional_forward_args={"interpolate_pos_encoding": True}
    )
    np.testing.assert_allclose(saved["relevance"], expected[0].numpy(), atol=1e-6)


def test_a_16_bit_image_is_explained_like_its_8_bit_twin(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(7)
    eight = rng.integers(0, 256, (32, 32), dtype=np.uint16)
    (tmp_path / "in16").mkdir()
    (tmp_path / "in8").mkdir()
    Image.fromarray(eight * 257).save(tmp_path / "in16" / "x.png")  # 16-bit grey, I;16
    Image.fromarray(eight.astype(np.uint8)).save(tmp_path / "in8" / "x.png")
    run_dir(tmp_path / "in16", tmp_path / "out16", tiny_checkpoint)
    run_dir(tmp_path / "in8", tmp_path / "out8", tiny_checkpoint)
    np.testing.assert_array_equal(
        np.load(tmp_path / "out16" / "x.png.npz")["relevance"], np.load(tmp_path / "out8" / "x.png.npz")["relevance"]
    )


def test_explain_class_sensitive_maps_follow_the_target_class(tmp_path, capsys):
    from captum_tokenlrp.cli import preprocess

    model = seeded(
        lambda: ViTForImageClassification(tiny_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})),
        trained_norms=True,
    )
    checkpoint = save_checkpoint(tmp_path / "clf", model, 32)
    image = write_images(tmp_path / "in", 1, size=32)[0]
    pixel_values = preprocess(ViTImageProcessor.from_pretrained(checkpoint), [Image.open(image).convert("RGB")])
    saved = {}
    for target in ("a", "2"):
        out = tmp_path / f"out-{target}"
        arguments = ["explain", str(image), "--model", str(checkpoint), "--out", str(out), "--rules", "i", "iv"]
        assert main([*arguments, "--class-sensitive", "attention", "--target-class", target]) == 0
        saved[target] = np.load(out / f"{image.name}.npz")
        manifest = json.loads(str(saved[target]["manifest"]))
        assert manifest["class_sensitive"] == "attention" and manifest["target_class"] == target
    for target, index in (("a", 0), ("2", 2)):
        expected = TokenRelevanceLRP(model, rule="iv", class_sensitive="attention").token_relevance(
            pixel_values, target=index
        )
        np.testing.assert_allclose(saved[target]["relevance_iv"], expected[0].numpy(), atol=1e-6)
        assert saved[target]["relevance_i_per_head"].shape == (4, 17)
    assert np.abs(saved["a"]["relevance_iv"] - saved["2"]["relevance_iv"]).max() > 1e-4
    # The "heads" modes fuse the heads themselves: a fused map only.
    out = tmp_path / "out-heads"
    arguments = ["explain", str(image), "--model", str(checkpoint), "--out", str(out), "--rules", "ii"]
    assert main([*arguments, "--class-sensitive", "attention+heads"]) == 0
    assert "relevance_ii_per_head" not in np.load(out / f"{image.name}.npz")
    capsys.readouterr()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target-class", "1"], "--target-class needs --class-sensitive"),
        (["--class-sensitive", "attention", "--target-class", "z"], "is not a class of the model"),
        (["--class-sensitive", "attention", "--target-class", "7"], "out of range"),
        (["--class-sensitive", "heads", "--head-fusion", "none"], "use --head-fusion mean"),
        (["--class-sensitive", "attention", "--target-token", "3"], "does not take --target-token"),
    ],
)
def test_explain_class_sensitive_errors(tmp_path, capsys, extra, message):
    model = seeded(lambda: ViTForImageClassification(tiny_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})))
    checkpoint = save_checkpoint(tmp_path / "clf", model, 32)
    image = write_images(tmp_path / "in", 1, size=32)[0]
    assert main(["explain", str(image), "--model", str(checkpoint), "--out", str(tmp_path / "o"), *extra]) != 0
    assert message in capsys.readouterr().err


def test_explain_class_sensitive_needs_a_classifier(tmp_path, tiny_checkpoint, capsys):
    image = write_images(tmp_path / "in", 1, size=32)[0]
    arguments = ["explain", str(image), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert main([*arguments, "--class-sensitive", "attention"]) != 0
    assert "no classification head" in capsys.readouterr().err
