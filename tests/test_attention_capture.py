"""Attention captured during the forward pass (``attention_capture="exact"`` / ``"fast"``), not recomputed.

- ``"fast"`` computes each recorded layer's attention once, in float32, and forms the layer's output from it:
  the model's outputs stay its own within float32 rounding (eager and sdpa, fp32; bf16/fp16 within the half
  precision rounding of the model's own eager attention), every layer goes through the capture on the families
  that call transformers' attention registry, and the relevance matches the float64 references as tightly as
  the default path does (1e-5 of the map's maximum).
- ``"exact"`` leaves the model's outputs bitwise its own; an eager float32 model hands over its probabilities.
- The model is left as found (config ``_attn_implementation``, the attention registry, hooks, parameters,
  training flags), also after an exception in the middle of the forward pass.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import seeded, tiny_config, with_attention
from families import NAMES, build, forward_kwargs
from helpers import FAMILIES, Boom, exploding_weight
from helpers import build as build_vit_family
from reference import reference_relevance
from test_families import BOUND, IMAGES, reference_inputs, reference_maps, relative_error
from test_families import assert_same as assert_family_same
from test_families import snapshot as family_snapshot
from transformers import ViTModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from captum_tokenlrp import TokenRelevanceLRP, TokenRule
from captum_tokenlrp._core import capture
from captum_tokenlrp.rules import UnitActivation

TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5
#: Families whose attention never calls the registry on this transformers release (their layers are recomputed).
RECOMPUTED = {"BeitModel", "BeitForImageClassification", "BeitModel-shared-bias"} if TRANSFORMERS_4 else set()


class CaptureCounter:
    """Counts the layers served by the capture (``"fast"``: outputs completed; ``"exact"``: probabilities kept)."""

    def __init__(self, monkeypatch):
        self.fast = 0
        self.exact = 0
        complete, init = capture._CapturedLayer.complete, capture._CapturedLayer.__init__

        def counted_complete(layer, *args):
            self.fast += 1
            return complete(layer, *args)

        def counted_init(layer, *args, **kwargs):
            init(layer, *args, **kwargs)
            self.exact += kwargs.get("probabilities") is not None

        monkeypatch.setattr(capture._CapturedLayer, "complete", counted_complete)
        monkeypatch.setattr(capture._CapturedLayer, "__init__", counted_init)


def registry_names() -> set[str]:
    return set(ALL_ATTENTION_FUNCTIONS.keys())


# ------------------------------------------------------------------ relevance against the float64 references
@pytest.mark.parametrize("name", NAMES)
def test_fast_capture_matches_float64_reference_on_every_family(name, monkeypatch):
    model, _info = build(name)
    layers, start = reference_inputs(name)
    counter = CaptureCounter(monkeypatch)
    for rule in ("i", "iv"):
        lrp = TokenRelevanceLRP(model, rule=rule, attention_capture="fast")
        for mode in ("mean", None):
            ours = lrp.token_relevance(IMAGES, head_fusion=mode)
            error = relative_error(ours, reference_maps(layers, start, rule, mode))
            assert error <= BOUND, f"rule ({rule}), head_fusion={mode}: relative error {error:.2e}"
    expected = 0 if name in RECOMPUTED else 4 * len(layers)
    assert counter.fast == expected


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fast_capture_on_vit_families_matches_the_exact_path(name, monkeypatch):
    model, _specials = build_vit_family(name)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    counter = CaptureCounter(monkeypatch)
    for rule in ("ii", "iii"):
        exact = TokenRelevanceLRP(model, rule=rule, attention_capture="exact")
        fast = TokenRelevanceLRP(model, rule=rule)  # the default
        assert fast.attention_capture == "fast"
        torch.testing.assert_close(
            fast.token_relevance(images, head_fusion=None),
            exact.token_relevance(images, head_fusion=None),
            atol=1e-6,
            rtol=1e-5,
        )
    assert counter.fast == 2 * model.config.num_hidden_layers


@pytest.mark.parametrize("rule", ["i", "ii", "iii", "iv"])
@pytest.mark.parametrize("mode", ["mean", None, "last_layer_per_head"])
@pytest.mark.parametrize(
    "budget",
    # Heads in groups of 3 of 4: the capture forms the output of a layer from two head groups. Then fused
    # layers in blocks of two inputs and one head: the batch of 3 is split into inputs [0, 2) and [2, 3).
    [3 * 17 * 17 * 3, 2 * 17 * 17],
    ids=["head-groups", "input-blocks"],
)
def test_fast_capture_matches_the_vit_reference(rule, mode, budget, tiny_model, tiny_images):
    lrp = TokenRelevanceLRP(tiny_model, rule=rule, max_chunk_elements=budget, attention_capture="fast")
    ours = lrp.token_relevance(tiny_images, head_fusion=mode)
    reference = reference_relevance(tiny_model, tiny_images, rule, mode)
    torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=1e-4)


def test_all_modes_give_the_same_relevance(tiny_model, tiny_images):
    maps = {
        how: TokenRelevanceLRP(tiny_model, rule="iv", attention_capture=how).token_relevance(
            tiny_images, head_fusion=None
        )
        for how in ("exact", "fast", "recompute")
    }
    torch.testing.assert_close(maps["fast"], maps["recompute"], atol=1e-6, rtol=1e-5)
    assert torch.equal(maps["exact"], maps["recompute"])  # sdpa model: "exact" recomputes


def test_several_rules_from_one_captured_forward(tiny_model, tiny_images, monkeypatch):
    counter = CaptureCounter(monkeypatch)
    lrp = TokenRelevanceLRP(tiny_model, attention_capture="fast")
    result = lrp.token_relevance_by_rule(tiny_images, ["i", "iv"], head_fusions=("mean", None))
    assert counter.fast == 3  # one forward, three layers
    for rule in ("i", "iv"):
        for mode in ("mean", None):
            reference = reference_relevance(tiny_model, tiny_images, rule, mode)
            torch.testing.assert_close(result[rule][mode].double(), reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["ii", "iv"])
@pytest.mark.parametrize("mode", ["mean", "max"])
def test_one_rule_and_one_mode_by_rule_matches_the_reference(rule, mode, tiny_model, tiny_images):
    # What explain-dir asks for: one rule, one fused mode (the single-rule path, in blocks of one input).
    lrp = TokenRelevanceLRP(tiny_model, attention_capture="fast", max_chunk_elements=17 * 17)
    result = lrp.token_relevance_by_rule(tiny_images, [rule], head_fusions=(mode,))
    assert list(result) == [rule] and list(result[rule]) == [mode]
    reference = reference_relevance(tiny_model, tiny_images, rule, mode)
    torch.testing.assert_close(result[rule][mode].double(), reference, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ the model's own outputs
def outputs_during_call(model, images, **options):
    """``last_hidden_state`` of the forward pass run inside ``token_relevance``."""
    seen = []
    handle = model.register_forward_hook(lambda module, args, output: seen.append(output.last_hidden_state.clone()))
    try:
        TokenRelevanceLRP(model, rule="iv", **options).token_relevance(images)
    finally:
        handle.remove()
    (output,) = seen
    return output


#: (dtype, atol, rtol): float32 rounding, and the rounding of the half types the model's own eager attention has.
PRECISIONS = [(torch.float32, 2e-5, 1e-5), (torch.bfloat16, 0.0, 0.0), (torch.float16, 0.0, 0.0)]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(("dtype", "atol", "rtol"), PRECISIONS, ids=["fp32", "bf16", "fp16"])
def test_fast_capture_keeps_the_models_outputs(implementation, dtype, atol, rtol, tiny_images):
    model = seeded(lambda: ViTModel(with_attention(tiny_config(), implementation), add_pooling_layer=False))
    model = model.to(dtype)
    images = tiny_images.to(dtype)
    with torch.no_grad():
        own = model(images).last_hidden_state
    during = outputs_during_call(model, images, attention_capture="fast")
    if dtype == torch.float32:
        torch.testing.assert_close(during, own, atol=atol, rtol=rtol)
        return
    # Half precision: the capture's scores are float32 where the model's are rounded to its dtype first, so the
    # two differ by the model's own rounding. Bound it by the gap between the model's eager and sdpa outputs
    # (two valid implementations of the same layer), with a floor of one unit in the last place at the largest value.
    other = seeded(lambda: ViTModel(with_attention(tiny_config(), "eager"), add_pooling_layer=False)).to(dtype)
    other_sdpa = seeded(lambda: ViTModel(with_attention(tiny_config(), "sdpa"), add_pooling_layer=False)).to(dtype)
    with torch.no_grad():
        gap = (other(images).last_hidden_state.float() - other_sdpa(images).last_hidden_state.float()).abs().max()
    ulp = float(torch.finfo(dtype).eps) * float(own.float().abs().max())
    error = float((during.float() - own.float()).abs().max())
    assert error <= 2 * max(float(gap), ulp), f"{dtype}: |fast - own| = {error:.3g}, eager-sdpa gap {float(gap):.3g}"


def test_fast_capture_in_blocks_of_inputs_keeps_the_models_outputs(tiny_images):
    # Fused layers in blocks of one input and one head: each block writes its slice of the layer's output.
    model = seeded(lambda: ViTModel(with_attention(tiny_config(), "sdpa"), add_pooling_layer=False))
    with torch.no_grad():
        own = model(tiny_images).last_hidden_state
    during = outputs_during_call(model, tiny_images, attention_capture="fast", max_chunk_elements=17 * 17)
    torch.testing.assert_close(during, own, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_exact_capture_keeps_the_outputs_bitwise(implementation, tiny_images, monkeypatch):
    model = seeded(lambda: ViTModel(with_attention(tiny_config(), implementation), add_pooling_layer=False))
    with torch.no_grad():
        own = model(tiny_images).last_hidden_state
    counter = CaptureCounter(monkeypatch)
    assert torch.equal(outputs_during_call(model, tiny_images, attention_capture="exact"), own)
    # An eager float32 model hands over the probabilities it computed; sdpa computes none to hand over.
    assert counter.exact == (3 if implementation == "eager" else 0)
    assert counter.fast == 0


def test_exact_capture_of_an_eager_model_matches_the_reference(tiny_images):
    model = seeded(
        lambda: ViTModel(with_attention(tiny_config(), "eager"), add_pooling_layer=False), trained_norms=True
    )
    for mode in ("mean", None):
        ours = TokenRelevanceLRP(model, rule="iv").token_relevance(tiny_images, head_fusion=mode)
        torch.testing.assert_close(
            ours.double(), reference_relevance(model, tiny_images, "iv", mode), atol=1e-5, rtol=1e-4
        )


# ------------------------------------------------------------------ the model is left as found
@pytest.mark.parametrize("how", ["exact", "fast"])
@pytest.mark.parametrize("name", ["CLIPModel", "SiglipVisionModel", "BeitModel-shared-bias", "ViTMAEModel"])
def test_model_left_as_found_after_exception_mid_forward(name, how):
    model, _info = build(name)
    model.train()
    names = registry_names()
    before = family_snapshot(model)
    lrp = TokenRelevanceLRP(model, rule=TokenRule(UnitActivation(), exploding_weight), attention_capture=how)
    with pytest.raises(Boom):
        lrp.token_relevance(IMAGES, additional_forward_args=None)
    assert_family_same(before, family_snapshot(model))
    assert registry_names() == names
    assert model.training


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_config_and_registry_restored_after_calls_and_errors(implementation, tiny_images):
    model = seeded(lambda: ViTModel(with_attention(tiny_config(), implementation), add_pooling_layer=False))
    names = registry_names()
    lrp = TokenRelevanceLRP(model, attention_capture="fast")
    lrp.token_relevance(tiny_images)
    assert model.config._attn_implementation == implementation and registry_names() == names
    bad = TokenRelevanceLRP(model, rule=TokenRule(UnitActivation(), exploding_weight), attention_capture="fast")
    with pytest.raises(Boom):
        bad.token_relevance(tiny_images)
    assert model.config._attn_implementation == implementation and registry_names() == names
    with torch.no_grad():  # and the model still runs on its own implementation
        model(tiny_images)


def test_unknown_capture_mode_is_refused(tiny_model):
    with pytest.raises(ValueError, match="attention_capture must be one of"):
        TokenRelevanceLRP(tiny_model, attention_capture="sometimes")


def test_image_text_model_forward_with_text_is_unchanged_by_fast_capture():
    model, _info = build("CLIPModel")
    kwargs = forward_kwargs(model, IMAGES)
    with torch.no_grad():
        before = model(pixel_values=IMAGES, **kwargs).image_embeds.clone()
    TokenRelevanceLRP(model, attention_capture="fast").token_relevance(IMAGES)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=IMAGES, **kwargs).image_embeds, before)


# ------------------------------------------------------------------ GPU: no host-device synchronisation per layer
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["mean", None])
@pytest.mark.parametrize("rule", ["ii", "iv"])  # (iv): value distances without a per-layer count on the host
def test_fast_capture_on_cuda_matches_cpu_and_waits_for_no_layer(rule, mode, tiny_images):
    import copy
    import warnings

    layers = 6
    model = seeded(lambda: ViTModel(tiny_config(num_hidden_layers=layers), add_pooling_layer=False))
    on_cpu = TokenRelevanceLRP(model, rule=rule).token_relevance(tiny_images, head_fusion=mode)
    lrp = TokenRelevanceLRP(copy.deepcopy(model).cuda(), rule=rule, attention_capture="fast")
    images = tiny_images.cuda()
    lrp.token_relevance(images, head_fusion=mode)  # warm-up: first-call allocations
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            on_gpu = lrp.token_relevance(images, head_fusion=mode)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(item.message) for item in caught)
    assert syncs < layers, f"{syncs} host-device synchronisations for {layers} layers"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-6, rtol=1e-5)
