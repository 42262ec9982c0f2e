"""Text families at real widths: reference error of every rule, fused and per head, and cost vs a forward.

    python benchmarks/bench_text_families.py            # writes benchmarks/TEXT-FAMILIES.md (~3 min)
    python benchmarks/bench_text_families.py --quick    # tiny configs, seconds (CI); writes nothing

Each model has the architecture of a public checkpoint with random weights (transformers' own init,
seeded), depth cut where noted so that the float64 reference fits this machine: BERT base, RoBERTa base,
DistilBERT base, GPT-2 small, TinyLlama-1.1B (4 of 22 layers; 32 heads sharing 4 key/value heads),
Qwen2-0.5B (4 of 24 layers; 14 heads, 2 key/value heads), Gemma-2B (2 of 18 layers, vocabulary cut to
32 000; 8 heads, 1 key/value head), Mistral-7B (2 of 32 layers, vocabulary 32 000; 32 heads, 8 key/value
heads); and the real all-MiniLM-L6-v2 weights (the ``[text]`` extra). Batch 2 of 48 tokens, the second
row right-padded to 30, the models in sdpa. (Left padding is checked against each sentence alone in
``tests/test_text_reference.py``: the float64 eager forward of transformers turns a left-padded row's
fully masked padding rows into NaN, which reaches its real tokens, so it cannot serve as the reference.)

(a) Reference error: ``max |ours - reference| / max |reference|`` over rules (i)-(iv), fused by mean and
per head, against the float64 reference of ``tests/test_text_reference.py``: the attention probabilities
of an eager float64 copy's own forward (``output_attentions=True``) and its value projections, per
sentence on its real tokens (``tests/text_models.py``), started where the output is read.

(b) Cost: wall time of ``token_relevance`` (rule (iv), fused) over the model's own forward pass (no
grad), medians of interleaved rounds, and FLOPs of both (``torch.utils.flop_counter``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_speed import machine  # noqa: E402
from text_models import DECODERS, eager_attention_and_values, reference_text_relevance  # noqa: E402

from captum_tokenlrp import TextTokenRelevanceLRP  # noqa: E402
from captum_tokenlrp._adapters.text import first_real_token, last_real_token  # noqa: E402

RULES = ("i", "ii", "iii", "iv")

#: name -> (checkpoint shape, family for the start, config class, config kwargs, model class)
MODELS = {
    "BERT base": ("bert-base-uncased", "bert", "BertConfig", {}, "BertModel"),
    "RoBERTa base": ("roberta-base", "roberta", "RobertaConfig",
                     dict(vocab_size=50265, max_position_embeddings=514, pad_token_id=1), "RobertaModel"),
    "DistilBERT base": ("distilbert-base-uncased", "distilbert", "DistilBertConfig", {}, "DistilBertModel"),
    "GPT-2 small": ("gpt2", "gpt2", "GPT2Config", {}, "GPT2LMHeadModel"),
    "TinyLlama 1.1B (4/22 layers)": (
        "TinyLlama-1.1B", "llama", "LlamaConfig",
        dict(hidden_size=2048, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=4,
             intermediate_size=5632, vocab_size=32000), "LlamaForCausalLM"),
    "Qwen2 0.5B (4/24 layers)": (
        "Qwen2-0.5B", "qwen2", "Qwen2Config",
        dict(hidden_size=896, num_hidden_layers=4, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True), "Qwen2ForCausalLM"),
    "Gemma 2B (2/18 layers)": (
        "gemma-2b", "gemma", "GemmaConfig",
        dict(hidden_size=2048, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
             intermediate_size=16384, vocab_size=32000), "GemmaForCausalLM"),
    "Mistral 7B (2/32 layers)": (
        "Mistral-7B-v0.1", "mistral", "MistralConfig",
        dict(hidden_size=4096, num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8,
             intermediate_size=14336, vocab_size=32000), "MistralForCausalLM"),
}
QUICK = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def build(name: str, quick: bool):
    _, family, config_name, kwargs, class_name = MODELS[name]
    if quick:
        kwargs = {key: value for key, value in kwargs.items() if key in ("pad_token_id", "num_key_value_heads")}
        kwargs = {**kwargs, **_quick_kwargs(config_name)}
        if "num_key_value_heads" in kwargs:
            kwargs["num_key_value_heads"] = 2
        if config_name == "GemmaConfig":
            kwargs["head_dim"] = 8
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, class_name)._from_config(config, attn_implementation="sdpa")
    return model.eval(), family


def _quick_kwargs(config_name: str) -> dict:
    if config_name == "DistilBertConfig":
        return dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=120)
    if config_name == "GPT2Config":
        return dict(n_embd=32, n_layer=2, n_head=4, vocab_size=120)
    return {**QUICK, "vocab_size": 120}


def inputs(family: str, vocab: int, length: int, short: int) -> dict:
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(3, min(vocab, 30000), (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, short:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def start_of(family: str, mask: torch.Tensor) -> torch.Tensor:
    position = last_real_token(mask.bool()) if family in DECODERS else first_real_token(mask.bool())
    return torch.zeros(mask.shape).scatter_(1, position[:, None], 1.0)


def reference_error(model, family: str, encoded: dict, start: torch.Tensor) -> dict[str, float]:
    lrp = TextTokenRelevanceLRP(model)
    prepared = lrp._prepare(encoded, None)
    layers = eager_attention_and_values(
        model, encoded["input_ids"], encoded["attention_mask"], prepared.kwargs.get("position_ids")
    )
    ours = lrp.token_relevance_by_rule(encoded, RULES, initial_relevance=start, head_fusions=("mean", None))
    errors = {}
    for mode, label in (("mean", "fused"), (None, "per head")):
        worst = 0.0
        for rule in RULES:
            expected = reference_text_relevance(layers, encoded["attention_mask"].bool(), start, rule,
                                                mode or "per_head")
            if not bool(torch.isfinite(expected).all()):
                raise RuntimeError(f"the float64 reference of rule {rule} is not finite")
            worst = max(worst, float((ours[rule][mode].double() - expected).abs().max() / expected.abs().max()))
        errors[label] = worst
    return errors


def cost(model, encoded: dict, rounds: int) -> dict[str, float]:
    lrp = TextTokenRelevanceLRP(model, rule="iv")
    forward_kwargs = {**lrp._adapter.forward_kwargs(), **lrp._prepare(encoded, None).kwargs}

    def forward():
        with torch.no_grad():
            model(encoded["input_ids"], **forward_kwargs)

    def explain():
        lrp.token_relevance(encoded)

    forward(), explain()  # warm-up
    ratios = []
    for _ in range(rounds):
        began = time.perf_counter()
        forward()
        middle = time.perf_counter()
        explain()
        ratios.append((time.perf_counter() - middle) / (middle - began))
    flops = []
    for call in (forward, explain):
        with FlopCounterMode(display=False) as counter:
            call()
        flops.append(counter.get_total_flops())
    return {"time": statistics.median(ratios), "flops": flops[1] / flops[0]}


def minilm():
    try:
        from captum_tokenlrp.text import load_minilm
    except ImportError:
        return None
    try:
        model, tokenizer = load_minilm()
    except ImportError:
        return None
    sentences = ["The old lighthouse keeper never missed a single night, even in the worst storms of winter.",
                 "Why do cats sleep so much?"]
    return model.eval(), dict(tokenizer(sentences, padding=True, return_tensors="pt"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configs, no file written")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "TEXT-FAMILIES.md")
    args = parser.parse_args(argv)
    length, short = (10, 6) if args.quick else (48, 30)
    rows = []
    for name in MODELS:
        model, family = build(name, args.quick)
        encoded = inputs(family, model.config.vocab_size, length, short)
        errors = reference_error(model, family, encoded, start_of(family, encoded["attention_mask"]))
        costs = cost(model, encoded, 1 if args.quick else args.rounds)
        rows.append((name, MODELS[name][0], errors, costs))
        print(f"{name}: {errors} {costs}", flush=True)
        del model
    real = minilm()
    if real is not None:
        model, encoded = real
        mask = encoded["attention_mask"]
        errors = reference_error(model, "bert", encoded, mask.float() / mask.sum(1, keepdim=True))
        costs = cost(model, encoded, 1 if args.quick else args.rounds)
        rows.append(("all-MiniLM-L6-v2 (real weights, mean start)", "sentence-transformers/all-MiniLM-L6-v2",
                     errors, costs))
        print(f"MiniLM: {errors} {costs}", flush=True)
    if args.quick:
        return 0
    lines = [
        "# Text families: reference error and cost",
        "",
        f"Written by `python benchmarks/bench_text_families.py` ({machine()}). Times are ratios to the forward "
        "measured in the same round; on this shared 2-core machine they swing (FLOPs do not).",
        "",
        "Random weights (transformers' init, seeded) in the shape of each checkpoint, depth cut where "
        "noted; batch 2 of 48 tokens, the second row right-padded to 30; sdpa. "
        "Error: `max |ours - reference| / max |reference|`, the worst over rules (i)-(iv), against a float64 "
        "reference from the eager model's own attention probabilities and value projections. Cost: "
        f"`token_relevance` (rule (iv), fused) over the forward pass, median of {args.rounds} interleaved "
        "rounds, and FLOPs.",
        "",
        "| model | shape of | error, fused | error, per head | time / forward | FLOPs / forward |",
        "|---|---|---|---|---|---|",
    ]
    for name, checkpoint, errors, costs in rows:
        lines.append(
            f"| {name} | `{checkpoint}` | {errors['fused']:.1e} | {errors['per head']:.1e} | "
            f"{costs['time']:.2f}x | {costs['flops']:.2f}x |"
        )
    lines += [
        "",
        "The cost over the forward pass is the rules' work on `(batch, heads, N, N)` matrices and, where the "
        "model runs sdpa, the eager attention probabilities computed once more in float32; it shrinks relative "
        "to the forward as the model widens (the MLPs and projections grow with the width, the rules do not).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
