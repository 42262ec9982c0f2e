"""Attention sinks and high-norm tokens: found where they are built in, not where they are not."""

from __future__ import annotations

import families
import numpy as np
import pytest
import torch
from conftest import seeded, tiny_config, with_attention

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.diagnostics import AttentionSink, Diagnostics, diagnose, token_name

SINK_HEAD, SINK_TOKEN = 2, 6  # token 6 = CLS + 5 patches: patch (1, 1) of the 4 x 4 grid


def eager_tiny_model():
    """The conftest's tiny model, with eager attention so that it can return its attention probabilities."""
    from transformers import ViTModel

    return seeded(lambda: ViTModel(with_attention(tiny_config(), "eager"), add_pooling_layer=False), trained_norms=True)


@pytest.fixture
def tiny_model():
    return eager_tiny_model()


def build_sink(model, *, layer=0, head=SINK_HEAD, token=SINK_TOKEN, push=400.0):
    """Make ``head`` of ``layer`` send every query's attention to ``token``, and give ``token`` a huge norm.

    Token ``token``'s position embedding gets ``push`` in feature 0, so its residual stream (and its
    hidden state in every layer) is far larger than the others'. The head's keys read feature 0 of the
    normalised tokens and its queries are a constant: the score of token j is proportional to x_j[0],
    largest by far for ``token``.
    """
    site = TokenRelevanceLRP(model).attention_sites[layer]
    block = site.head_dim
    rows = slice(head * block, (head + 1) * block)
    with torch.no_grad():
        model.embeddings.position_embeddings[0, token, 0] += push
        norm = next(m for m in model.modules() if isinstance(m, torch.nn.LayerNorm))  # the first block's pre-norm
        norm.weight[0], norm.bias[0] = 1.0, 0.0
        site.key.weight[rows] = 0.0
        site.key.weight[rows, 0] = 1.0
        site.key.bias[rows] = 0.0
        site.query.weight[rows] = 0.0
        site.query.bias[rows] = 3.0
    return model


def test_a_built_in_sink_and_high_norm_token_are_found_and_named(tiny_model, tiny_images):
    clean = diagnose(tiny_model, tiny_images[:1])
    # The plain model: no sink in layer 0 (this peaked test model has one weak one, 0.52, in layer 2), no outlier.
    assert [s for s in clean.sinks if s.layer == 0] == [] and clean.high_norm_tokens == []
    model = build_sink(tiny_model)
    found = diagnose(model, tiny_images[:1])
    first = [s for s in found.sinks if s.layer == 0]
    assert [(s.layer, s.head, s.token) for s in first] == [(0, SINK_HEAD, SINK_TOKEN)]
    # The share is the mean over queries of the attention on the token, recomputed here from the model.
    with torch.no_grad():
        outputs = model(tiny_images[:1], output_attentions=True, output_hidden_states=True)
    expected = float(outputs.attentions[0][0, SINK_HEAD, :, SINK_TOKEN].mean())
    assert expected > 0.95
    assert first[0].share == pytest.approx(expected, abs=1e-5)
    # The pushed token's hidden state is high-norm in every layer, and it is the only one.
    assert {t.token for t in found.high_norm_tokens} == {SINK_TOKEN}
    assert [t.layer for t in found.high_norm_tokens] == [0, 1, 2]
    for entry in found.high_norm_tokens:  # hidden_states[l + 1] is block l's output
        norms = outputs.hidden_states[entry.layer + 1][0, 1:].norm(dim=-1)
        assert entry.norm == pytest.approx(float(norms[SINK_TOKEN - 1]), rel=1e-5)
        assert entry.ratio == pytest.approx(entry.norm / float(norms.median()), rel=1e-5) and entry.ratio >= 2.0
    assert found.sink_cells(SINK_HEAD) == [(1, 1)] and found.sink_cells(0) == [] and found.high_norm_cells() == [(1, 1)]
    lines = found.summary()
    assert lines[0].startswith("attention sinks (a head's queries send >= 50 % to one token): ")
    assert f"layer 0 head {SINK_HEAD} -> patch (1, 1) (" in lines[0]
    assert "patch (1, 1) (layer 0-2, " in lines[1]


def test_the_model_is_left_as_found(tiny_model, tiny_images):
    model = build_sink(tiny_model)
    before = model(tiny_images).last_hidden_state
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    diagnose(model, tiny_images[:1])
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model(tiny_images).last_hidden_state, before)


def test_thresholds_are_configurable_and_checked(tiny_model, tiny_images):
    # The plain model's one weak sink (0.52 in layer 2) is a sink at the default 0.5, not at 0.6.
    assert [s.layer for s in diagnose(tiny_model, tiny_images[:1]).sinks] == [2]
    strict = diagnose(tiny_model, tiny_images[:1], sink_share=0.6)
    assert strict.sinks == [] and strict.sink_share == 0.6
    model = build_sink(tiny_model)
    assert diagnose(model, tiny_images[:1], norm_ratio=1e6).high_norm_tokens == []
    loose = diagnose(model, tiny_images[:1], sink_share=0.01)
    assert len(loose.sinks) == 3 * 4  # every head of every layer has some token above 1 %
    for bad, error in ((0.0, ValueError), (1.5, ValueError), ("half", TypeError)):
        with pytest.raises(error, match="sink_share"):
            diagnose(model, tiny_images[:1], sink_share=bad)
    with pytest.raises(ValueError, match="norm_ratio must lie above 1"):
        diagnose(model, tiny_images[:1], norm_ratio=1.0)
    with pytest.raises(ValueError, match=r"one image, got a batch of 2.*pixel_values\[i : i \+ 1\]"):
        diagnose(model, tiny_images[:2])


def test_arrays_for_the_npz_and_token_names(tiny_model, tiny_images):
    found = diagnose(build_sink(tiny_model), tiny_images[:1])
    arrays = found.as_arrays()
    sinks = arrays["diagnostics_sinks"]
    assert sinks.shape == (len(found.sinks), 4)
    np.testing.assert_allclose(sinks[0], list(found.sinks[0]))
    assert arrays["diagnostics_high_norm"].shape == (3, 4)
    np.testing.assert_array_equal(arrays["diagnostics_thresholds"], [0.5, 2.0])
    empty = Diagnostics([], [], found.layout).as_arrays()
    assert empty["diagnostics_sinks"].shape == (0, 4) and empty["diagnostics_high_norm"].shape == (0, 4)
    assert token_name(0, found.layout) == "cls" and token_name(16, found.layout) == "patch (3, 3)"
    cls_sink = Diagnostics([AttentionSink(1, 0, 0, 0.9)], [], found.layout)
    assert cls_sink.sink_cells(0) == [] and "-> cls (90 %)" in cls_sink.summary()[0]


def test_recording_finds_the_same_in_the_explanation_s_own_forward_pass(tiny_model, tiny_images):
    from captum_tokenlrp.diagnostics import recording

    model = build_sink(tiny_model)
    lrp = TokenRelevanceLRP(model, rule="iv")
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    with recording(model) as watched:
        lrp.token_relevance(tiny_images[:1])
    handle.remove()
    assert len(calls) == 1  # no forward pass of its own
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    seen, alone = watched.diagnostics(lrp.token_layout(tiny_images[:1])), diagnose(model, tiny_images[:1])
    assert [s[:3] for s in seen.sinks] == [s[:3] for s in alone.sinks] and seen.sinks
    for mine, theirs in zip(seen.sinks + seen.high_norm_tokens, alone.sinks + alone.high_norm_tokens, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5)
    with pytest.raises(RuntimeError, match="No forward pass ran inside recording"), recording(model) as idle:
        idle.diagnostics(seen.layout)


def test_explain_records_the_diagnostics_and_draws_the_photo_at_its_aspect(tmp_path):
    from PIL import Image

    from captum_tokenlrp.cli import load_model, main
    from captum_tokenlrp.images import load_image
    from captum_tokenlrp.models import bundled_sample_image

    sample = bundled_sample_image()
    wide = Image.new("RGB", (128, 64), "white")
    wide.paste(sample, (0, 0))
    wide.paste(sample.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (64, 0))
    wide.save(tmp_path / "wide.png")
    assert main(["explain", str(tmp_path / "wide.png"), "--model", "bundled", "--out", str(tmp_path / "out")]) == 0
    saved = np.load(tmp_path / "out" / "wide.png.npz")
    loaded = load_model("bundled", "cpu", "float32")
    pixel_values = loaded.processor(images=load_image(tmp_path / "wide.png"), return_tensors="pt")["pixel_values"]
    expected = diagnose(loaded.model, pixel_values).as_arrays()
    for key in ("diagnostics_sinks", "diagnostics_high_norm", "diagnostics_thresholds"):
        np.testing.assert_allclose(saved[key], expected[key], rtol=1e-5, atol=1e-7)
    assert saved["diagnostics_sinks"].shape[0] >= 1  # the bundled model has one (layer 4, head 1) on this photo
    with Image.open(tmp_path / "out" / "wide.png.png") as figure:
        width = figure.size[0]
    square = tmp_path / "square.png"
    sample.save(square)
    assert main(["explain", str(square), "--model", "bundled", "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "square.png.png") as figure:
        square_width = figure.size[0]
    assert width > 1.6 * square_width  # the 2:1 photo's panels are twice as wide, not squashed to squares


@pytest.mark.parametrize("name", families.NAMES)
def test_every_family_s_sink_shares_match_its_own_eager_attention(name):
    model, info = families.build(name)
    pixel_values = torch.randn(1, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0))
    found = diagnose(model, pixel_values, sink_share=1e-6)  # every head: its most attended token
    reference = families.eager_attention_and_values(model, pixel_values)
    received = {  # (layer, head) -> the mean attention each token receives from the head's queries
        (layer, head): probs[0, head].mean(dim=0)
        for layer, (probs, _) in enumerate(reference)
        for head in range(probs.shape[1])
    }
    assert [(s.layer, s.head) for s in found.sinks] == list(received)
    for sink in found.sinks:
        shares = received[(sink.layer, sink.head)]
        assert sink.share == pytest.approx(float(shares.max()), abs=1e-5)
        assert float(shares[sink.token]) == pytest.approx(float(shares.max()), abs=1e-5)  # a most-attended token
    assert found.layout.num_special_tokens == info.num_special_tokens and found.layout.grid == info.grid
