"""The command line's surface: outputs never replace an input or a file tokenlrp did not write, resume by
content, one output per text, one .npz schema, clear one-line errors for wrong --model names, Ctrl-C, quiet loads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import transformers
from conftest import seeded, tiny_config
from PIL import Image
from test_cli import save_checkpoint, write_images
from test_text_cli import save_text_checkpoint
from test_text_views import tiny_bert, tiny_gpt2, word_tokenizer
from transformers import BertModel, ViTMAEConfig, ViTMAEForPreTraining, ViTModel

import captum_tokenlrp
import captum_tokenlrp.cli as cli
from captum_tokenlrp.cli import _explain as explain_module
from captum_tokenlrp.cli import _explain_dir as explain_dir_module
from captum_tokenlrp.cli import _text as text_module
from captum_tokenlrp.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: Where the package under test is imported from: child processes import the same one.
PACKAGE_ROOT = Path(captum_tokenlrp.__file__).resolve().parents[1]
#: transformers 5 reports loads in one table; 4.x in free-text warnings.
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False), trained_norms=True)
    return save_checkpoint(tmp_path / "tiny-vit", model, 32)


@pytest.fixture
def gpt2(tmp_path) -> Path:
    return save_text_checkpoint(tmp_path / "tiny-gpt2", tiny_gpt2(), word_tokenizer(pad=False))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its md5."""
    return {str(p.relative_to(folder)): md5(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def picture(path: Path, seed: int = 0) -> Path:
    """A random 32 x 32 RGB picture at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ------------------------------------------------------------------ item 1: never over an input or a stranger's file
def test_explain_into_the_folder_of_its_input_keeps_the_input(tmp_path, checkpoint, capsys):
    folder = tmp_path / "ow"
    photo = picture(folder / "pic.png")
    before = md5(photo)
    assert main(["explain", str(photo), "--model", str(checkpoint), "--out", str(folder), "--rules", "iv"]) == 0
    assert md5(photo) == before
    assert sorted(p.name for p in folder.iterdir()) == ["pic.png", "pic.png.npz", "pic.png.png"]
    assert f"Wrote {folder / 'pic.png.png'}" in capsys.readouterr().out
    # a rerun replaces its own outputs, and still not the input
    assert main(["explain", str(photo), "--model", str(checkpoint), "--out", str(folder), "--rules", "i"]) == 0
    assert md5(photo) == before and "relevance_i" in np.load(folder / "pic.png.npz").files


def test_explain_refuses_an_output_name_that_is_an_input(tmp_path, checkpoint, capsys):
    first = picture(tmp_path / "in" / "a.png")
    second = tmp_path / "in" / "a.png.png"  # the output name of a.png, given as an input itself
    second.write_bytes(first.read_bytes())
    before = files(tmp_path / "in")
    argv = ["explain", str(first), str(second), "--model", str(checkpoint), "--out", str(tmp_path / "in")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is one of the inputs" in err and one_line(err)
    assert files(tmp_path / "in") == before


def _lines(tmp_path: Path) -> Path:
    path = tmp_path / "lines.txt"
    path.write_text("the cat sat\na dog ran\n", encoding="utf-8")
    return path


def _explain(t: Path, c: Path, g: Path) -> list[str]:
    return ["explain", str(picture(t / "in" / "image_000.png")), "--model", str(c)]


def _explain_dir(t: Path, c: Path, g: Path) -> list[str]:
    return ["explain-dir", str(picture(t / "in" / "image_001.png").parent), "--model", str(c)]


def _explain_text(t: Path, c: Path, g: Path) -> list[str]:
    return ["explain-text", "the cat sat", "--model", str(g)]


def _explain_text_dir(t: Path, c: Path, g: Path) -> list[str]:
    return ["explain-text-dir", str(_lines(t)), "--model", str(g)]


def _shapes(t: Path, c: Path, g: Path) -> list[str]:
    return ["shapes", str(t / "out"), "--count", "3"]


@pytest.mark.parametrize(
    ("command", "extra", "foreign"),
    [
        (_explain, [], "image_000.png.png"),
        (_explain, [], "image_000.png.npz"),
        (_explain_dir, [], "image_001.png.npz"),
        (_explain_dir, ["--overwrite"], "manifest.json"),
        (_explain_text, [], "the cat sat.png"),  # the output name explain-text gives that text
        (_explain_text_dir, [], "line_000002.npz"),
        (_explain_text_dir, ["--overwrite"], "summary.json"),
        (_explain_text_dir, [], "manifest.json"),
        (_shapes, [], "labels.csv"),
        (_shapes, [], "images/shape_000002.png"),
    ],
    ids=[
        "explain-figure",
        "explain-npz",
        "explain-dir",
        "explain-dir-manifest",
        "explain-text",
        "explain-text-dir",
        "text-dir-summary",
        "text-dir-manifest",
        "shapes-labels",
        "shapes-image",
    ],
)
def test_no_command_replaces_a_file_it_did_not_write(tmp_path, checkpoint, gpt2, capsys, command, extra, foreign):
    out = tmp_path / "out"
    if foreign == "the cat sat.png":
        foreign = cli.text_output_stem("the cat sat") + ".png"
    mine = out / foreign
    mine.parent.mkdir(parents=True)
    if mine.suffix == ".png":
        Image.new("RGB", (8, 8), "red").save(mine)  # the user's own picture
    elif mine.suffix == ".npz":
        np.savez(mine, relevance=np.zeros(17))  # another tool's arrays (no manifest of this package)
    else:
        mine.write_text('{"package": "something else"}\n' if mine.suffix == ".json" else "a,b\n1,2\n")
    argv = [*command(tmp_path, checkpoint, gpt2), *extra]
    argv = [*argv, "--out", str(out)] if argv[0] != "shapes" else argv
    before = files(out)
    assert main([*argv, "--quiet"] if "dir" in argv[0] else argv) == 2
    err = capsys.readouterr().err
    assert f"{mine} exists and was not written by tokenlrp" in err and one_line(err)
    assert files(out) == before  # nothing written, nothing replaced


def test_explain_dir_into_its_input_folder_and_a_report_inside_it(tmp_path, checkpoint, capsys):
    folder = tmp_path / "photos"
    write_images(folder, 3, size=32)
    inputs = files(folder)
    run = ["explain-dir", str(folder), "--model", str(checkpoint), "--quiet"]
    assert main([*run, "--out", str(folder)]) == 0
    assert all(files(folder)[name] == digest for name, digest in inputs.items())
    assert main([*run, "--out", str(folder)]) == 0
    assert "0 explained, 3 already done (skipped), 0 unreadable, 3 images" in capsys.readouterr().out
    # --out inside the input folder: a report's thumbnails there are no inputs of the next run
    assert main([*run, "--out", str(folder / "relevance")]) == 0
    assert main(["report", str(folder / "relevance")]) == 0
    assert list((folder / "relevance").rglob("*.png"))
    capsys.readouterr()
    assert main([*run, "--out", str(folder / "relevance")]) == 0
    assert "0 explained, 3 already done (skipped), 0 unreadable, 3 images" in capsys.readouterr().out


# ------------------------------------------------------------------ item 5 (CLI side): nothing partial
def test_a_failure_on_any_image_leaves_no_output(tmp_path, checkpoint, monkeypatch, capsys):
    images = write_images(tmp_path / "in", 2, size=32)
    drawn = explain_module.plot_rule_grid
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("cannot draw this one")
        return drawn(*args, **kwargs)

    monkeypatch.setattr(explain_module, "plot_rule_grid", second_fails)
    out = tmp_path / "out"
    assert main(["explain", *map(str, images), "--model", str(checkpoint), "--out", str(out)]) == 2
    assert "cannot draw this one" in capsys.readouterr().err
    assert not out.exists() or not list(out.rglob("*"))


def test_a_prompt_that_fails_leaves_no_figure_without_its_npz(tmp_path, checkpoint, monkeypatch):
    class Failing:  # what a 100-word prompt gave on a CLIP model: an error 14 frames deep
        def token_relevance(self, *args, **kwargs):
            raise RuntimeError("Sequence length must be less than max_position_embeddings")

    monkeypatch.setattr(explain_module, "prompt_explainer", lambda loaded, prompts: Failing() if prompts else None)
    image = write_images(tmp_path / "in", 1, size=32)[0]
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="max_position_embeddings"):
        main(["explain", str(image), "--model", str(checkpoint), "--out", str(out), "--prompts", "a long prompt"])
    assert not out.exists() or not list(out.rglob("*"))


# ------------------------------------------------------------------ item 3: resume by content
def test_explain_dir_redoes_an_image_replaced_under_the_same_name(tmp_path, checkpoint, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    images = write_images(folder, 3, size=32)
    run = ["explain-dir", str(folder), "--model", str(checkpoint), "--out", str(out), "--quiet"]
    assert main(run) == 0
    target = out / images[1].relative_to(folder).with_suffix(".png.npz")
    before = np.load(target)["relevance"]
    assert str(np.load(target)["input_sha256"]) == hashlib.sha256(images[1].read_bytes()).hexdigest()
    capsys.readouterr()
    picture(images[1], seed=9)  # another picture, same name
    assert main(run) == 0
    printed = capsys.readouterr().out
    assert "1 explained, 2 already done (skipped)" in printed and "1 of them redone: the image changed" in printed
    after = np.load(target)
    assert not np.array_equal(after["relevance"], before)
    assert str(after["input_sha256"]) == hashlib.sha256(images[1].read_bytes()).hexdigest()
    fresh = tmp_path / "fresh"
    assert main([*run[:-3], "--out", str(fresh), "--quiet"]) == 0
    # Within float32 rounding, not bitwise: the redo explains this image alone, the fresh run in a batch of
    # three, and the batch changes the rounding of the batched products (the fused kernel's row tiles too).
    np.testing.assert_allclose(
        after["relevance"], np.load(fresh / target.relative_to(out))["relevance"], rtol=1e-5, atol=1e-7
    )


def test_explain_text_dir_says_how_many_lines_were_redone(tmp_path, gpt2, capsys):
    source, out = _lines(tmp_path), tmp_path / "out"
    run = ["explain-text-dir", str(source), "--model", str(gpt2), "--out", str(out), "--quiet"]
    assert main(run) == 0
    source.write_text("the cat sat\na bird flew\n", encoding="utf-8")
    capsys.readouterr()
    assert main(run) == 0
    assert "1 explained, 1 already done (skipped)" in (printed := capsys.readouterr().out)
    assert "1 of them redone: the line changed" in printed
    assert json.loads((out / "summary.json").read_text())["redone"] == 1


# ------------------------------------------------------------------ item 4: explain-text names outputs per text
def test_explain_text_keeps_one_output_per_text(tmp_path, gpt2, capsys):
    out = tmp_path / "out"
    texts = ["the cat sat on the mat", "a dog ran", "the dog sat under the tree"]
    for text in texts:
        assert main(["explain-text", text, "--model", str(gpt2), "--out", str(out), "--rules", "iv"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 6 and all(re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{12}\.(png|npz)", name) for name in names)
    for text in texts:
        assert str(np.load(out / f"{cli.text_output_stem(text)}.npz")["text"]) == text
    assert (out / f"the-cat-sat-on-the-mat-{hashlib.sha256(texts[0].encode()).hexdigest()[:12]}.png").is_file()
    # the same text again replaces its own outputs
    assert main(["explain-text", texts[1], "--model", str(gpt2), "--out", str(out), "--rules", "i"]) == 0
    assert len(list(out.iterdir())) == 6 and "relevance_i" in np.load(out / f"{cli.text_output_stem(texts[1])}.npz")
    assert cli.text_output_stem("日本語").startswith("text-")  # no latin words: still a name of its own


# ------------------------------------------------------------------ item 11: wrong --model names fail at once
@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to read a configuration from the Hub (or anywhere) fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"from_pretrained{args} was called")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain-text", "a cat", "--model", "bundled"], "--model bundled is the image model"),
        (["explain-text-dir", "LINES", "--model", "bundled"], "--model bundled is the image model"),
        (["explain-text", "a cat", "--model", "dinov2-small"], "--model dinov2-small is the image model"),
        (["explain", "--model", "minilm"], "--model minilm is the text model"),
        (["explain-dir", "IMAGES", "--model", "minilm"], "--model minilm is the text model"),
        (["explain", "--model", "ckpt/nonexistent"], "Model directory ckpt/nonexistent does not exist"),
        (["explain-text", "a cat", "--model", "ckpt/nonexistent"], "Model directory ckpt/nonexistent does not exist"),
        (["explain", "--model", "./x"], "Model directory ./x does not exist"),
        (["explain-text", "a cat", "--model", "./x"], "Model directory ./x does not exist"),
        (["explain-text", "a cat", "--model", "/no/such/folder"], "Model directory /no/such/folder does not exist"),
    ],
)
def test_a_wrong_model_name_fails_at_once_in_one_line(tmp_path, monkeypatch, capsys, no_hub, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()  # a local folder: ckpt/nonexistent is a mistyped path, not a hub id
    write_images(tmp_path / "IMAGES", 1, size=32)
    (tmp_path / "LINES").write_text("a cat\n", encoding="utf-8")
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and one_line(err), err


def test_each_kind_of_checkpoint_points_to_its_command(tmp_path, capsys):
    bert = save_text_checkpoint(tmp_path / "bert", tiny_bert(BertModel), word_tokenizer(bert=True))
    vit = save_checkpoint(tmp_path / "vit", seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False)), 32)
    capsys.readouterr()
    assert main(["explain", "--model", str(bert), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"It is a text model (bert): explain texts with tokenlrp explain-text TEXT --model {bert}" in err
    assert one_line(err)
    assert main(["explain-text", "a cat", "--model", str(vit), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"It is an image model (vit): explain images with tokenlrp explain IMAGE --model {vit}" in err
    assert one_line(err)


# ------------------------------------------------------------------ item 13: Ctrl-C
def _interrupt_on_call(monkeypatch, module, name: str, call: int) -> None:
    real, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


def test_ctrl_c_in_explain_dir_says_how_far_it_got_and_a_rerun_resumes(tmp_path, checkpoint, monkeypatch, capsys):
    write_images(tmp_path / "in", 3, size=32)
    run = ["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "out"),
           "--quiet", "--batch-size", "1"]
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, explain_dir_module, "relevance_by_rule", 2)
        assert main(run) == 130
    err = capsys.readouterr().err
    assert "tokenlrp explain-dir: interrupted, 1 done in this run (1 of 3 images in all); rerun the same command " \
           "to resume." in err
    assert one_line(err)
    assert main(run) == 0
    assert "2 explained, 1 already done (skipped)" in capsys.readouterr().out


def test_ctrl_c_in_explain_text_dir(tmp_path, gpt2, monkeypatch, capsys):
    source = tmp_path / "lines.txt"
    source.write_text("the cat sat\na dog ran\nthe dog sat under the tree\n", encoding="utf-8")
    run = ["explain-text-dir", str(source), "--model", str(gpt2), "--out", str(tmp_path / "out"), "--quiet",
           "--batch-size", "1"]
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, text_module, "_explain_text_batch", 3)
        assert main(run) == 130
    err = capsys.readouterr().err
    assert "interrupted, 2 done in this run (2 of 3 lines in all); rerun the same command to resume." in err
    assert one_line(err)
    assert main(run) == 0
    assert "1 explained, 2 already done (skipped)" in capsys.readouterr().out


_BLOCK_ON_SECOND_BATCH = """
import signal, sys, pathlib
# SIGINT reaches the main thread only: threads started later (torch's intra-op pool) inherit the mask, so the
# signal cannot land in one of them, where CPython notes it but the main thread, blocked in read(), never wakes.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
# Python's own Ctrl-C handler, whatever the parent left: a child inherits an ignored SIGINT (some library in the
# test process sets SIG_IGN), and Python then installs no KeyboardInterrupt handler at start-up.
signal.signal(signal.SIGINT, signal.default_int_handler)
import captum_tokenlrp.cli as cli
from captum_tokenlrp.cli import _explain_dir
ready, real, calls = pathlib.Path(sys.argv[1]), _explain_dir.relevance_by_rule, []
def blocking(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # this thread only
        ready.write_text("waiting")
        sys.stdin.read()  # blocks until the parent's SIGINT
    return real(*args, **kwargs)
_explain_dir.relevance_by_rule = blocking
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_sigint_to_explain_dir_exits_130_without_a_traceback(tmp_path, checkpoint):
    write_images(tmp_path / "in", 3, size=32)
    ready = tmp_path / "ready"
    argv = ["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "out"),
            "--quiet", "--batch-size", "1"]
    process = subprocess.Popen(
        [sys.executable, "-c", _BLOCK_ON_SECOND_BATCH, str(ready), *argv],
        env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300  # the child waits for the signal: no race, only a bound on a hang
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted, 1 done in this run" in err.decode() and "Traceback" not in err.decode()


# ------------------------------------------------------------------ item 20: quiet loads, rules a set, one schema
@pytest.fixture
def mae_checkpoint(tmp_path) -> Path:
    config = ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=64, mask_ratio=0.0,
    )
    return save_checkpoint(tmp_path / "mae", seeded(lambda: ViTMAEForPreTraining(config)), 32)


def cli_stderr(*argv: str) -> str:
    """stderr of the command in a process of its own (transformers' log handler writes to the real stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "captum_tokenlrp.cli", *argv],
        env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)),
        capture_output=True,
        check=True,
    )
    return done.stderr.decode()


def test_loading_is_quiet_unless_verbose(tmp_path, mae_checkpoint):
    run = ["explain", "--model", str(mae_checkpoint), "--out", str(tmp_path / "out"), "--rules", "iv"]
    assert cli_stderr(*run) == ""
    err = cli_stderr(*run, "--verbose")
    if TRANSFORMERS_5:  # a load report of 24 UNEXPECTED rows (the decoder) and the "Loading weights" bar
        assert err.count("UNEXPECTED |") == 24 and "Loading weights" in err
    else:  # 4.x ignores the decoder's keys by itself and has no bar; its notes (the slow processor) still show
        assert "use_fast" in err


def test_quiet_loading_is_scoped(tmp_path, mae_checkpoint):
    from transformers.utils import logging as hf_logging

    handlers = logging.getLogger("transformers").handlers
    filters = [list(handler.filters) for handler in handlers]
    assert main(["explain", "--model", str(mae_checkpoint), "--out", str(tmp_path / "out"), "--rules", "iv"]) == 0
    assert hf_logging.is_progress_bar_enabled()
    assert [list(handler.filters) for handler in handlers] == filters


def test_weights_missing_from_a_checkpoint_are_still_said_in_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    model = seeded(lambda: ViTModel(tiny_config(), add_pooling_layer=False))
    checkpoint = save_checkpoint(tmp_path / "partial", model, 32)
    weights = load_file(checkpoint / "model.safetensors")
    del weights["layernorm.weight"]
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    err = cli_stderr("explain", "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--rules", "iv")
    assert "left at their random initial values; rerun with --verbose for the list" in err
    assert len(err.strip().splitlines()) == 1
    verbose = cli_stderr(
        "explain", "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--rules", "iv", "--verbose"
    )
    if TRANSFORMERS_5:
        assert "layernorm.weight | MISSING" in verbose
    else:
        assert "newly initialized: ['layernorm.weight']" in verbose


def test_rules_are_a_set_for_resuming(tmp_path, checkpoint, capsys):
    write_images(tmp_path / "in", 2, size=32)
    run = ["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*run, "--rules", "i", "iv"]) == 0
    capsys.readouterr()
    assert main([*run, "--rules", "iv", "i"]) == 0
    assert "0 explained, 2 already done (skipped)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["rules"] == ["i", "iv"]


def test_every_image_command_writes_one_schema(tmp_path, checkpoint):
    image = picture(tmp_path / "in" / "image_000.png")
    common = ["--model", str(checkpoint), "--rules", "i", "iv", "--head-fusion", "max"]
    assert main(["explain", str(image), "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["explain-dir", str(tmp_path / "in"), "--out", str(tmp_path / "many"), "--quiet", *common]) == 0
    one, many = np.load(tmp_path / "one" / "image_000.png.npz"), np.load(tmp_path / "many" / "image_000.png.npz")
    assert set(many.files) <= set(one.files)
    diagnostics = {"diagnostics_sinks", "diagnostics_high_norm", "diagnostics_thresholds"}  # explain's figure marks
    assert set(one.files) - set(many.files) == {"relevance_i_per_head", "relevance_iv_per_head", *diagnostics}
    for key in ("relevance_i", "relevance_iv", "grid", "special_tokens", "patch_size", "input_sha256"):
        np.testing.assert_array_equal(one[key], many[key], err_msg=key)
    assert one["relevance_iv"].shape == (17,) and one["relevance_iv_per_head"].shape == (4, 17)
    assert str(one["input"]) == "image_000.png" and str(many["input"]) == "image_000.png"


def test_both_text_commands_write_one_schema(tmp_path, gpt2):
    text = "the cat sat on the mat"
    (tmp_path / "lines.txt").write_text(text + "\n", encoding="utf-8")
    common = ["--model", str(gpt2), "--rules", "iv"]
    assert main(["explain-text", text, "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["explain-text-dir", str(tmp_path / "lines.txt"), "--out", str(tmp_path / "many"), "--quiet",
                 *common]) == 0
    one = np.load(tmp_path / "one" / f"{cli.text_output_stem(text)}.npz")
    many = np.load(tmp_path / "many" / "line_000001.npz")
    assert set(one.files) - set(many.files) == {"relevance_iv_per_head"}
    assert set(many.files) - set(one.files) == {"line"}
    for key in ("relevance", "relevance_iv", "tokens", "input_ids", "text"):
        np.testing.assert_allclose(one[key], many[key], atol=1e-6) if key.startswith("relevance") else (
            np.testing.assert_array_equal(one[key], many[key])
        )



def test_the_readme_table_names_every_key_the_commands_write(tmp_path, checkpoint, gpt2):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Command line") :]
    section = section[: section.index("\n## ", 5)]
    documented = set(re.findall(r"^\| `([a-z0-9_<>]+)`", section, flags=re.MULTILINE))
    image = picture(tmp_path / "in" / "image_000.png")
    assert main(["explain", str(image), "--model", str(checkpoint), "--out", str(tmp_path / "a"), "--rules", "iv"]) == 0
    assert main(["explain-text", "a dog ran", "--model", str(gpt2), "--out", str(tmp_path / "b"), "--rules", "iv"]) == 0
    (tmp_path / "l.txt").write_text("a dog ran\n", encoding="utf-8")
    assert main(["explain-text-dir", str(tmp_path / "l.txt"), "--model", str(gpt2), "--out", str(tmp_path / "c"),
                 "--quiet"]) == 0
    written = set()
    for path in tmp_path.glob("[abc]/*.npz"):
        written |= {re.sub(r"_(i|iv)(?=$|_)", "_<rule>", key) for key in np.load(path).files}
    assert written - {"relevance_<rule>", "relevance_<rule>_per_head"} <= documented
    assert {"relevance_<rule>", "relevance_<rule>_per_head", "relevance", "manifest", "input_sha256"} <= documented
    for key in ("predicted_class", "class_name", "probability", "prompts", "prompt_gae"):
        assert key in documented


def test_json_files_end_with_a_newline(tmp_path, checkpoint, gpt2):
    write_images(tmp_path / "in", 1, size=32)
    assert main(["explain-dir", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    (tmp_path / "l.txt").write_text("a dog ran\n", encoding="utf-8")
    assert main(["explain-text-dir", str(tmp_path / "l.txt"), "--model", str(gpt2), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    for path in (tmp_path / "a" / "manifest.json", tmp_path / "b" / "manifest.json", tmp_path / "b" / "summary.json"):
        assert path.read_text(encoding="utf-8").endswith("}\n"), path


def test_ctrl_c_in_explain_leaves_no_output_and_exits_130(tmp_path, checkpoint, monkeypatch, capsys):
    images = [picture(tmp_path / "in" / f"{index}.png", seed=index) for index in range(2)]
    out = tmp_path / "out"
    _interrupt_on_call(monkeypatch, explain_module, "relevance_by_rule", 2)
    assert main(["explain", *map(str, images), "--model", str(checkpoint), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err == "tokenlrp explain: interrupted.\n"
    assert not out.exists() or not list(out.rglob("*"))
