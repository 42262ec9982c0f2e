"""The one recorder (``record_layers``) on text models under each capture mode, and its use of transformers.

- Text relevance recorded with ``capture="exact"`` / ``"fast"`` / ``"recompute"`` matches the float64 reference
  built from each family's own eager attention (BERT, GPT-2, Llama with grouped-query attention and rotary
  embeddings; padded batches, left padding for the decoder), every rule, fused and per head; ``"fast"`` serves
  every layer where the modeling code calls the attention interface.
- The probabilities every mode hands over equal the model's own eager ``outputs.attentions``.
- The forward inside the call: bitwise the model's own under "exact" and "recompute", within float32 rounding
  under "fast" (real tokens).
- The unified attention-gradient pass gives the float64 ``dS/dA`` of an eager model's own attention.
- Only transformers' public interface is written: the configs' implementation name is the same during and after
  the call (transformers 4.x eager aside, in one isolated function), the attention and mask interfaces hold the
  same entries afterwards, also after an error and with a user's own override; the package's source names the
  private fields only inside that one function.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
import transformers
from text_models import (
    DECODERS,
    build_text_model,
    eager_attention_and_values,
    eager_copy,
    reference_text_relevance,
    token_ids,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import captum_tokenlrp
from captum_tokenlrp import TextTokenRelevanceLRP
from captum_tokenlrp._core import capture
from captum_tokenlrp._core.attention_gradients import attention_gradient_pass
from captum_tokenlrp._core.base import evaluation_mode
from captum_tokenlrp._core.capture import record_layers

TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5
MODES = ("exact", "fast", "recompute")
NAMES = ("bert", "gpt2", "llama")  # padding + bidirectional; fused projection + causal; GQA + rotary + causal


class RecordedLRP(TextTokenRelevanceLRP):
    """TextTokenRelevanceLRP whose forward pass records through ``record_layers(capture=...)``."""

    def __init__(self, model, capture: str, **options):
        super().__init__(model, **options)
        self.capture = capture

    def _record(self, prepared, sites, compute):
        kwargs = {**self._adapter.forward_kwargs(), **prepared.kwargs}
        recording = record_layers(
            sites,
            compute,
            capture=self.capture,
            token_mask=prepared.token_mask,
            needs_registry=self._adapter.needs_registry,
        )
        with evaluation_mode(self.model), torch.no_grad(), recording as kept:
            self.model(prepared.input_ids, **kwargs)
        assert all(value is not None for value in kept)
        return kept


def padded_batch(name: str) -> dict:
    """Three sentences of 8, 5 and 6 tokens, right-padded (left padding: see the test of each sentence alone;
    the float64 eager copy turns the fully masked rows of left padding into NaN, which then spreads)."""
    ids = token_ids(3, 8, seed=4)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def last_real(mask: torch.Tensor) -> torch.Tensor:
    return mask.shape[1] - 1 - mask.flip(1).long().argmax(dim=1)


def default_start(name: str, mask: torch.Tensor) -> torch.Tensor:
    start = torch.zeros(mask.shape)
    start[torch.arange(len(mask)), last_real(mask) if name in DECODERS else 0] = 1.0
    return start


def served_by_the_interface(name: str) -> bool:
    """BERT's modeling code on transformers 4.x picks an attention class and never calls the interface."""
    return not (TRANSFORMERS_4 and name == "bert")


class FastCounter:
    """Counts the layers whose attention "fast" computed here (their outputs completed)."""

    def __init__(self, monkeypatch):
        self.count = 0
        complete = capture._CapturedLayer.complete

        def counted(layer, *args):
            self.count += 1
            return complete(layer, *args)

        monkeypatch.setattr(capture._CapturedLayer, "complete", counted)


# ------------------------------------------------------------------ relevance and probabilities per mode
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_text_relevance_under_each_capture_matches_the_float64_reference(name, mode, monkeypatch):
    model = build_text_model(name)
    encoded = padded_batch(name)
    mask = encoded["attention_mask"]
    counter = FastCounter(monkeypatch)
    for rule in ("i", "ii", "iii", "iv"):
        lrp = RecordedLRP(model, mode, rule=rule)
        position_ids = lrp._prepare(encoded, None).kwargs.get("position_ids")
        layers = eager_attention_and_values(model, encoded["input_ids"], mask, position_ids)
        for head_fusion in ("mean", None):
            ours = lrp.token_relevance(encoded, head_fusion=head_fusion)
            expected = reference_text_relevance(
                layers, mask.bool(), default_start(name, mask), rule, head_fusion or "per_head"
            )
            torch.testing.assert_close(ours.double(), expected, atol=5e-6, rtol=1e-4)
            padding = ~mask.bool()[:, None, :] if head_fusion is None else ~mask.bool()
            assert float(ours.masked_select(padding.expand_as(ours)).abs().max()) == 0.0
    served = mode == "fast" and served_by_the_interface(name)
    assert counter.count == (8 * model.config.num_hidden_layers if served else 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_every_mode_hands_over_the_models_own_eager_attention(name, mode):
    model = build_text_model(name)
    encoded = padded_batch(name)
    mask = encoded["attention_mask"]
    lrp = RecordedLRP(model, mode)
    prepared = lrp._prepare(encoded, None)
    ours = lrp._record(prepared, lrp.attention_sites, lambda layer: layer.state().attention.clone())
    reference = eager_attention_and_values(model, encoded["input_ids"], mask, prepared.kwargs.get("position_ids"))
    queries = mask.bool()[:, None, :, None]
    keys = mask.bool()[:, None, None, :]
    for layer, (probs, (expected, _)) in enumerate(zip(ours, reference, strict=True)):
        torch.testing.assert_close(probs.double() * queries, expected * queries, atol=2e-6, rtol=1e-5, msg=f"{layer}")
        assert float((probs * queries * ~keys).abs().max()) == 0.0  # real rows never attend to padding


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_left_padded_batch_gives_each_sentence_its_own_relevance_under_each_capture(name, mode):
    model = build_text_model(name)
    lrp = RecordedLRP(model, mode, rule="iv")
    lengths = (8, 5, 6)
    sentences = [token_ids(1, length, seed=20 + length)[0] for length in lengths]
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sentence in enumerate(sentences):
        ids[row, max(lengths) - len(sentence) :] = sentence
        mask[row, max(lengths) - len(sentence) :] = 1
    for head_fusion in ("mean", None):
        batched = lrp.token_relevance({"input_ids": ids, "attention_mask": mask}, head_fusion=head_fusion)
        for row, sentence in enumerate(sentences):
            alone = lrp.token_relevance(sentence[None], head_fusion=head_fusion)[0]
            real = mask[row].bool()
            torch.testing.assert_close(batched[row][..., real], alone, atol=2e-6, rtol=1e-5)
            assert float(batched[row][..., ~real].abs().sum()) == 0.0


def model_output(model, name: str, encoded: dict, position_ids) -> torch.Tensor:
    if name in DECODERS:
        return model(**encoded, position_ids=position_ids, use_cache=False).logits
    return model(**encoded).last_hidden_state


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_the_forward_inside_the_call(name, mode, implementation):
    """ "exact" and "recompute" leave the outputs bitwise the model's own; "fast" within float32 rounding."""
    model = build_text_model(name, attn_implementation=implementation)
    encoded = padded_batch(name)
    mask = encoded["attention_mask"]
    lrp = TextTokenRelevanceLRP(model)
    position_ids = lrp._prepare(encoded, None).kwargs.get("position_ids")
    with torch.no_grad():
        own = model_output(model, name, encoded, position_ids)
        recording = record_layers(
            lrp.attention_sites,
            lambda layer: layer.state().attention.sum(),
            capture=mode,
            token_mask=mask.bool(),
            needs_registry=lrp._adapter.needs_registry,
        )
        with recording as kept:
            inside = model_output(model, name, encoded, position_ids)
    assert all(value is not None for value in kept)
    # Each real row of each head sums to 1 (padding query rows are not read by anything).
    real_rows = mask.sum() * model.config.num_attention_heads
    for value in kept:
        assert abs(float(value) - float(real_rows)) <= real_rows * 1e-5 + float(
            (~mask.bool()).sum() * model.config.num_attention_heads
        )
    if mode != "fast" or not served_by_the_interface(name):
        assert torch.equal(inside, own)
        return
    real = mask.bool()
    scale = float(own[real].abs().max())
    torch.testing.assert_close(inside[real], own[real], atol=2e-6 * scale, rtol=1e-5)


# ------------------------------------------------------------------ the one gradient pass against float64
@pytest.mark.parametrize("mode", ["exact", "recompute"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_the_gradient_pass_matches_the_float64_gradient_of_the_eager_attention(name, mode):
    model = build_text_model(name)
    encoded = padded_batch(name)
    mask = encoded["attention_mask"]
    lrp = TextTokenRelevanceLRP(model)
    position_ids = lrp._prepare(encoded, None).kwargs.get("position_ids")
    classes = torch.tensor([3, 7, 11])

    rows, last = torch.arange(3), last_real(mask)

    def scalar(network):
        logits = network(**encoded, position_ids=position_ids, use_cache=False).logits
        return logits[rows, last].gather(1, classes[:, None])[:, 0]

    with evaluation_mode(model):
        scalars, layers = attention_gradient_pass(
            lrp.attention_sites, lambda: scalar(model), token_mask=mask.bool(), needs_registry=True, capture=mode
        )
    double = eager_copy(model)
    outputs = double(**encoded, position_ids=position_ids, use_cache=False, output_attentions=True)
    logits = outputs.logits[rows, last].gather(1, classes[:, None])[:, 0]
    expected = torch.autograd.grad(logits.sum(), outputs.attentions)
    torch.testing.assert_close(scalars.double(), logits.detach(), atol=1e-5, rtol=1e-5)
    queries = mask.bool()[:, None, :, None]
    for index, (layer, gradient, attention) in enumerate(zip(layers, expected, outputs.attentions, strict=True)):
        assert layer.layer_index == index and torch.equal(layer.token_mask, mask.bool())
        scale = float(gradient.abs().max())
        torch.testing.assert_close(
            layer.gradient.double() * queries, gradient * queries, atol=1e-5 * scale, rtol=1e-4, msg=f"{index}"
        )
        torch.testing.assert_close(layer.attention.double() * queries, attention.detach() * queries, atol=2e-6, rtol=0)


def test_the_gradient_pass_refuses_the_fast_capture():
    model = build_text_model("gpt2")
    with pytest.raises(ValueError, match="fast"):
        attention_gradient_pass(TextTokenRelevanceLRP(model).attention_sites, lambda: None, capture="fast")


# ------------------------------------------------------------------ transformers' public interface only
def interfaces() -> tuple[dict, dict]:
    """Every entry of the attention and mask interfaces, name -> function (public mapping views)."""
    return dict(ALL_ATTENTION_FUNCTIONS.items()), dict(ALL_MASK_ATTENTION_FUNCTIONS.items())


def configs_of(model) -> list:
    return [module.config for module in model.modules() if hasattr(module, "config")]


class Failure(Exception):
    pass


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_configs_and_interfaces_are_as_found_during_and_after_the_call(name, mode, implementation):
    model = build_text_model(name, attn_implementation=implementation)
    lrp = TextTokenRelevanceLRP(model)
    ids = token_ids(2, 6)
    before = interfaces()
    names = [config._attn_implementation for config in configs_of(model)]
    during = []

    def compute(layer):
        during.append([config._attn_implementation for config in configs_of(model)])
        return 0

    def record(compute):
        return record_layers(
            lrp.attention_sites,
            compute,
            capture=mode,
            token_mask=torch.ones_like(ids, dtype=torch.bool),
            needs_registry=lrp._adapter.needs_registry,
        )

    with torch.no_grad(), record(compute):
        model(ids)
    # transformers 4.x calls its eager function without the interface: the one case whose name changes for the call.
    switched = TRANSFORMERS_4 and implementation == "eager" and served_by_the_interface(name)
    assert len(during) == model.config.num_hidden_layers
    assert all((entry != names) == switched for entry in during)
    assert [config._attn_implementation for config in configs_of(model)] == names
    assert interfaces() == before

    def failing(layer):
        raise Failure

    with pytest.raises(Failure), torch.no_grad(), record(failing):
        model(ids)
    assert [config._attn_implementation for config in configs_of(model)] == names
    assert interfaces() == before
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_a_users_own_override_nested_recordings_and_another_model_are_served_as_before():
    user_calls = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def users_sdpa(*args, **kwargs):
        user_calls.append(1)
        return sdpa(*args, **kwargs)

    before = interfaces()
    ALL_ATTENTION_FUNCTIONS["sdpa"] = users_sdpa  # the instance's own override, as the interface allows
    try:
        gpt2, llama, other = build_text_model("gpt2"), build_text_model("llama"), build_text_model("llama", seed=1)
        ids = token_ids(2, 6)
        real = torch.ones_like(ids, dtype=torch.bool)
        with torch.no_grad():
            other_own = other(ids, use_cache=False).logits
        assert len(user_calls) == other.config.num_hidden_layers
        user_calls.clear()
        sites = {key: TextTokenRelevanceLRP(model).attention_sites for key, model in (("g", gpt2), ("l", llama))}
        with torch.no_grad():
            with record_layers(
                sites["g"], lambda layer: "g", capture="fast", token_mask=real, needs_registry=True
            ) as g:
                with record_layers(
                    sites["l"], lambda layer: "l", capture="exact", token_mask=real, needs_registry=True
                ) as inner:
                    llama(ids, use_cache=False)
                    gpt2(ids, use_cache=False)
                    calls = len(user_calls)
                    other_inside = other(ids, use_cache=False).logits  # not recorded: the user's function runs
                    assert len(user_calls) == calls + other.config.num_hidden_layers
        assert g == ["g"] * 3 and inner == ["l"] * 3
        assert torch.equal(other_inside, other_own)
        # "exact" ran the model's own attention, the user's function, for each llama layer; "fast" none for GPT-2.
        assert calls == llama.config.num_hidden_layers
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is users_sdpa
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]
    assert interfaces() == before


def test_the_package_names_transformers_private_fields_only_in_the_one_isolated_function():
    root = pathlib.Path(captum_tokenlrp.__file__).parent
    allowed_file = root / "_core" / "attention_interface.py"
    tree = ast.parse(allowed_file.read_text())
    (function,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "_transformers4_eager_switch"
    ]
    allowed = range(function.lineno, function.end_lineno + 1)
    found = []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            private = (
                "_attn_implementation_internal" in line
                or "_global_mapping" in line
                or "._attn_implementation =" in line
            )
            if private and not (path == allowed_file and number in allowed):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
    source = "\n".join(ast.get_source_segment(allowed_file.read_text(), function).splitlines())
    assert "_global_mapping" in source and "._attn_implementation = " in source  # the check looks where it should
