"""Speed and memory of token relevance against the model's own forward pass and the baselines.

    python benchmarks/bench_speed.py            # full run, writes benchmarks/SPEED.md
    python benchmarks/bench_speed.py --quick    # a few seconds: keeps the script from rotting (CI)

Models are seeded random-init ViTs with the exact DINO architectures (timing does not depend
on the weights). Every case is timed in interleaved rounds (forward, method, forward, ...)
and the median is reported, so slow drifts of a shared machine hit all methods alike; ratios
are to the forward pass measured in the same rounds. Peak memory is the process's resident
high-water mark during one call (Linux ``VmHWM``, reset before each call).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import ViTForImageClassification

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import (
    AttentionRollout,
    GenericAttentionExplainability,
    RawAttention,
    TokenGradCAM,
    TokenIntegratedGradients,
)
from captum_tokenlrp.models import dino_config, random_dino_model

HERE = Path(__file__).resolve().parent
#: The attention capture of the token-relevance rows (the default): each layer's attention computed once, in float32.
CAPTURE = "fast"
#: The class-sensitive variant timed against GAE on a classifier of the same architecture (issue 16):
#: the best variant of benchmarks/RESULTS.md.
CLASS_VARIANT = ("i", "attention")


# ------------------------------------------------------------------ memory
def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(call: Callable[[], object]) -> float | None:
    """Peak resident MB of the process during ``call`` (None where it cannot be read)."""
    if not _reset_peak():
        call()
        return None
    call()
    return _status_mb("VmHWM")


# ------------------------------------------------------------------ timing
@dataclass
class Result:
    name: str
    seconds: float
    ratio: float
    peak_mb: float | None
    working_mb: float | None
    extra_mb: float | None
    runs: int


def time_interleaved(cases: dict[str, Callable[[], object]], rounds: int, slow: set[str]) -> dict[str, list[float]]:
    """Median-ready timings: each round runs the forward, then every case (slow ones once in total)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, call in cases.items():
        if name not in slow:
            call()  # warm-up
    for round_index in range(rounds):
        for name, call in cases.items():
            if name in slow and round_index > 0:
                continue
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def build_cases(name: str, batch: int, size: int, layers: int | None, with_ig: bool, only: tuple[str, ...] = ()):
    """(cases, names of slow cases): every method on one seeded model and batch (or the cases ``only``)."""
    cases, slow = _all_cases(name, batch, size, layers, with_ig)
    if only:
        cases = {case: cases[case] for case in only}
    return cases, slow


def _all_cases(name: str, batch: int, size: int, layers: int | None, with_ig: bool):
    overrides = {} if layers is None else {"num_hidden_layers": layers}
    model = random_dino_model(name, seed=0, **overrides)
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    extra = {"interpolate_pos_encoding": True} if size != model.config.image_size else None
    forward_kwargs = extra or {}

    def forward() -> None:
        with torch.no_grad():
            model(pixels, **forward_kwargs)

    cases: dict[str, Callable[[], object]] = {"forward": forward}
    for rule in ("i", "ii", "iii", "iv"):
        lrp = TokenRelevanceLRP(model, rule=rule, attention_capture=CAPTURE)
        cases[f"rule ({rule}), fused mean"] = lambda lrp=lrp: lrp.token_relevance(pixels, additional_forward_args=extra)
        cases[f"rule ({rule}), per head"] = lambda lrp=lrp: lrp.token_relevance(
            pixels, additional_forward_args=extra, head_fusion=None
        )
    lrp_iv = TokenRelevanceLRP(model, rule="iv", attention_capture=CAPTURE)
    exact = TokenRelevanceLRP(model, rule="iv", attention_capture="exact")  # sdpa runs, the attention is recomputed
    cases["rule (iv), fused mean, exact capture"] = lambda: exact.token_relevance(pixels, additional_forward_args=extra)
    # What `tokenlrp explain` computes per image: fused and per-head maps, for one rule or all four
    # (one forward pass either way); "separately" is 0.1's way, one call per rule and head mode.
    both = ("mean", None)
    cases["explain: rule (iv), fused + per head"] = lambda: lrp_iv.token_relevance_by_rule(
        pixels, ["iv"], additional_forward_args=extra, head_fusions=both
    )
    cases["explain: rules (i)-(iv), fused + per head"] = lambda: lrp_iv.token_relevance_by_rule(
        pixels, ["i", "ii", "iii", "iv"], additional_forward_args=extra, head_fusions=both
    )

    def separately() -> None:
        for rule in ("i", "ii", "iii", "iv"):
            for mode in both:
                TokenRelevanceLRP(model, rule=rule, attention_capture=CAPTURE).token_relevance(
                    pixels, additional_forward_args=extra, head_fusion=mode
                )

    cases["explain: rules (i)-(iv), 8 calls (0.1)"] = separately
    cases["rule (iv), all tokens (N x N)"] = lambda: lrp_iv.all_token_relevance(pixels, additional_forward_args=extra)
    cases["rule (iv), attribute (pixels)"] = lambda: lrp_iv.attribute(pixels, additional_forward_args=extra)
    cases["raw attention"] = lambda: RawAttention(model).token_relevance(pixels, additional_forward_args=extra)
    cases["rollout"] = lambda: AttentionRollout(model).token_relevance(pixels, additional_forward_args=extra)
    cases["GAE"] = lambda: GenericAttentionExplainability(model).token_relevance(pixels, additional_forward_args=extra)
    cases["GradCAM"] = lambda: TokenGradCAM(model).token_relevance(pixels, additional_forward_args=extra)
    # Class-sensitive maps need a classifier: the same architecture with a 1000-class head (its cost is
    # negligible next to the blocks), against GAE on that classifier and its own forward.
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        classifier = ViTForImageClassification(dino_config(name, num_labels=1000, **overrides)).eval()
    finally:
        torch.random.set_rng_state(state)
    rule, mode = CLASS_VARIANT
    class_lrp = TokenRelevanceLRP(classifier, rule=rule, class_sensitive=mode)
    cases[f"classifier: rule ({rule}), class {mode}"] = lambda: class_lrp.token_relevance(
        pixels, additional_forward_args=extra
    )
    cases["classifier: GAE"] = lambda: GenericAttentionExplainability(classifier).token_relevance(
        pixels, additional_forward_args=extra
    )
    slow: set[str] = set()
    if with_ig:
        ig = TokenIntegratedGradients(model, n_steps=50, internal_batch_size=50)
        cases["IG-50"] = lambda: ig.token_relevance(pixels, additional_forward_args=extra)
        slow.add("IG-50")
    return cases, slow


def measure_memory_here(
    name: str, batch: int, size: int, layers: int | None, only: tuple[str, ...] = ()
) -> dict[str, tuple[float, float]]:
    """In this process (started with MALLOC_MMAP_THRESHOLD_ set): case -> (peak RSS, RSS before)."""
    cases, _ = build_cases(name, batch, size, layers, with_ig=False, only=only)
    cases["forward"]()  # first-call allocations (thread pools, kernels) are not the method's
    measured = {}
    for case, call in cases.items():
        before = _status_mb("VmRSS")
        peak = peak_memory_mb(call)
        if peak is not None and before is not None:
            measured[case] = (peak, before)
    return measured


def measure_memory(
    name: str, batch: int, size: int, layers: int | None, only: tuple[str, ...] = ()
) -> dict[str, tuple[float, float]]:
    """Peak memory per case, in a fresh process whose freed tensors go back to the system at once.

    glibc keeps freed blocks for reuse, so in a long-lived process the resident set never falls
    and a later peak hides under an earlier one; a low mmap threshold makes every tensor an
    mmap that is unmapped when freed, so resident memory follows live tensors.
    """
    command = [sys.executable, __file__, "--memory-probe", name, str(batch), str(size), str(layers or 0)]
    command += ["--memory-cases", json.dumps(list(only))]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
    return {case: tuple(values) for case, values in json.loads(done.stdout.splitlines()[-1]).items()}


def run_config(name: str, batch: int, size: int, rounds: int, with_ig: bool, layers: int | None) -> list[Result]:
    cases, slow = build_cases(name, batch, size, layers, with_ig)
    times = time_interleaved(cases, rounds, slow)
    memory = measure_memory(name, batch, size, layers)
    forward_time = statistics.median(times["forward"])
    forward_peak = memory.get("forward", (None, None))[0]
    results = []
    for case in cases:
        peak, before = memory.get(case, (None, None))
        seconds = statistics.median(times[case])
        working = None if peak is None else peak - before
        extra_mb = None if peak is None or forward_peak is None else peak - forward_peak
        results.append(Result(case, seconds, seconds / forward_time, peak, working, extra_mb, len(times[case])))
    return results


LONG_CASES = ("forward", "rule (iv), fused mean", "rule (iv), per head")


def run_long_sequence(plan: list[tuple[str, int]], rounds: int) -> list[tuple]:
    """(architecture, image size) at batch 1: time and memory, rule (iv) fused mean and per head."""
    rows = []
    for name, size in plan:
        cases, _ = build_cases(name, 1, size, None, with_ig=False, only=LONG_CASES)
        times = time_interleaved(cases, rounds, set())
        memory = measure_memory(name, 1, size, None, only=LONG_CASES)
        forward_time = statistics.median(times["forward"])
        for case in LONG_CASES:
            peak, before = memory[case]
            median = statistics.median(times[case])
            extra = peak - memory["forward"][0]
            rows.append(
                (name, size, 1 + (size // 8) ** 2, case, median, median / forward_time, peak, peak - before, extra)
            )
    return rows


def run_explain_dir(num_images: int, batch: int, rounds: int) -> dict[str, float]:
    """Images/s of ``tokenlrp explain-dir`` (DINO ViT-S/16 architecture, rule (iv)) and of the model's plain
    forward over the same DataLoader (same dataset class, processor, batch size and workers), interleaved.

    Both rates are over the loop only: explain-dir reports its own (model loading excluded), and the forward
    loop is timed the same way (decode, preprocess, stack, forward).
    """
    import contextlib
    import io
    import re
    import tempfile

    import numpy as np
    from PIL import Image
    from transformers import ViTImageProcessor

    from captum_tokenlrp._loading import load_model  # what the CLI loads with: model and processor
    from captum_tokenlrp.cli import main as cli_main
    from captum_tokenlrp.cli._explain_dir import ImageFolder, _collate

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, image_dir = root / "model", root / "images"
        random_dino_model("facebook/dino-vits16", seed=0).save_pretrained(model_dir)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(model_dir)
        image_dir.mkdir()
        generator = np.random.default_rng(0)
        for index in range(num_images):
            pixels = generator.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / f"{index:04d}.png")
        loaded = load_model(str(model_dir), "cpu", "float32")
        paths = sorted(image_dir.glob("*.png"))

        def forward_rate() -> float:
            loader = torch.utils.data.DataLoader(
                ImageFolder(paths, loaded.processor), batch_size=batch, num_workers=0, collate_fn=_collate
            )
            started = time.perf_counter()
            with torch.no_grad():
                for items in loader:
                    loaded.model(torch.stack([pixels for _, pixels, _ in items]))
            return len(paths) / (time.perf_counter() - started)

        def explain_rate() -> float:
            arguments = ["explain-dir", str(image_dir), "--model", str(model_dir), "--out", str(root / "out")]
            arguments += ["--batch-size", str(batch), "--quiet", "--overwrite"]
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                cli_main(arguments)
            return float(re.search(r"([0-9.]+) images/s", printed.getvalue()).group(1))

        forward_rate(), explain_rate()  # warm-up
        forward_rates, explain_rates = [], []
        for _ in range(rounds):
            forward_rates.append(forward_rate())
            explain_rates.append(explain_rate())
    return {
        "forward": statistics.median(forward_rates),
        "explain-dir": statistics.median(explain_rates),
        "images": num_images,
        "batch": batch,
        "rounds": rounds,
    }


def format_explain_dir(rates: dict[str, float]) -> str:
    return "\n".join(
        [
            f"### `explain-dir` throughput: DINO ViT-S/16 architecture, batch {rates['batch']}, rule (iv)",
            "",
            f"{rates['images']} random 256 px PNGs, DataLoader with 0 workers; median of {rates['rounds']} interleaved "
            "rounds of the whole folder (explain-dir writes one .npz per image).",
            "",
            "| loop | images/s | x plain forward |",
            "|---|---:|---:|",
            f"| plain forward over the DataLoader | {rates['forward']:.2f} | 1.00 |",
            f"| `tokenlrp explain-dir` | {rates['explain-dir']:.2f} | {rates['explain-dir'] / rates['forward']:.2f} |",
            "",
        ]
    )


def format_targets(configs: dict[str, list[Result]], long_rows: list[tuple], rates: dict[str, float] | None) -> str:
    """The issue's table: every row next to its target, from this run's measurements."""

    def ratio(config: str, cases: list[str]) -> tuple[str, float] | None:
        results = {r.name: r for r in configs.get(config, [])}
        values = [results[case].ratio for case in cases if case in results]
        if not values:
            return None
        return f"{min(values):.2f}–{max(values):.2f}×", max(values)

    s16, s8 = "dino-vits16 architecture, batch 8, 224 px", "dino-vits8 architecture, batch 8, 224 px"
    fused = [f"rule ({rule}), fused mean" for rule in ("i", "ii", "iii", "iv")]
    per_head = [f"rule ({rule}), per head" for rule in ("i", "ii", "iii", "iv")]
    rows: list[tuple[str, str, str, str, bool | None]] = []

    def add(case: str, before: str, target: str, measured: tuple[str, float] | None, bound: float, at_most=True):
        if measured is None:
            rows.append((case, before, "not run", target, None))
            return
        text, value = measured
        rows.append((case, before, text, target, value <= bound if at_most else value >= bound))

    add("DINO ViT-S/16, batch 8, fused rules (i)/(ii)", "1.12–1.13×", "≤ 1.04×", ratio(s16, fused[:2]), 1.04)
    add("same, fused rules (iii)/(iv)", "1.19–1.20×", "≤ 1.08×", ratio(s16, fused[2:]), 1.08)
    add("same, per head (any rule)", "1.12–1.20×", "≤ 1.10×", ratio(s16, per_head), 1.10)
    add("DINO ViT-S/8 (785 tokens), batch 8, fused (i)/(ii)", "1.28×", "≤ 1.10×", ratio(s8, fused[:2]), 1.10)
    add("same, fused (iii)/(iv)", "1.56–1.58×", "≤ 1.25×", ratio(s8, fused[2:]), 1.25)
    results8 = {r.name: r for r in configs.get(s8, [])}
    extras = [results8[case].extra_mb for case in fused if case in results8 and results8[case].extra_mb is not None]
    floor_mb = 12 * 8 * 785**2 * 4 / 1e6
    if extras:
        worst = max(extras)
        text = f"+{worst:,.0f} MB = {worst / floor_mb:.2f}× the floor ({floor_mb:,.0f} MB)"
        add(
            "ViT-S/8 batch 8 fused: extra memory over the forward's peak",
            "+454 MB (+78 %)",
            "≤ 1.25× the floor",
            (text, worst / floor_mb),
            1.25,
        )
    results16 = {r.name: r for r in configs.get(s16, [])}
    one, four = "explain: rule (iv), fused + per head", "explain: rules (i)-(iv), fused + per head"
    if one in results16 and four in results16:
        share = results16[four].seconds / results16[one].seconds
        add(
            "`tokenlrp explain` with four rules (one forward)",
            "one to two forwards per rule",
            "one forward, ≤ 1.3× one rule",
            (f"one forward, {share:.2f}× one rule", share),
            1.3,
        )
    if rates is not None:
        share = rates["explain-dir"] / rates["forward"]
        add(
            "`explain-dir` throughput, DINO ViT-S/16 architecture, batch 32",
            "not measured",
            "≥ 0.85× the plain forward",
            (f"{share:.2f}×", share),
            0.85,
            at_most=False,
        )
    for name, size, tokens, case, seconds, _ratio, peak, _working, _extra in long_rows:
        if name.endswith("vitb8") and case != "forward":
            add(
                f"ViT-B/8 at {size} px ({tokens} tokens), batch 1, {case}: peak RSS, time",
                "not measured",
                "≤ 16 GB",
                (f"{peak / 1000:.1f} GB, {seconds:.1f} s", peak / 1000),
                16.0,
            )
    class_case = f"classifier: rule ({CLASS_VARIANT[0]}), class {CLASS_VARIANT[1]}"
    for title in (s16, s8):
        if class_case in {r.name: r for r in configs.get(title, [])}:
            found = {r.name: r for r in configs[title]}
            share = found[class_case].seconds / found["classifier: GAE"].seconds
            add(
                f"issue 16: {class_case.removeprefix('classifier: ')} vs GAE ({title.split(' architecture')[0]}, b8)",
                "new",
                "≤ GAE's cost",
                (f"{found[class_case].ratio:.2f}× forward = {share:.2f}× GAE", share),
                1.0,
            )
    lines = [
        "## Targets (issues 15 and 16)",
        "",
        "| case | before (0.2 SPEED.md) | measured now | target | met |",
        "|---|---|---|---|---|",
    ]
    for case, before, measured, target, met in rows:
        lines.append(
            f"| {case} | {before} | {measured} | {target} | {'n/a' if met is None else 'yes' if met else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ report
#: Vector extensions worth recording: they set how fast the matrix products and the fused kernel's loops run.
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "sve",
    "sve2",
)


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and its vector extensions, from /proc/cpuinfo (x86 "flags", Arm "Features")."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown CPU", [flag for flag in VECTOR_FLAGS if flag in flags]


def fused_cpu_kernel() -> str:
    """Whether the built-in rules run the fused CPU kernel here (building it on first use)."""
    from captum_tokenlrp._core import fused

    return "on" if fused.backend("cpu") == "cpu" else "off (see the log line above)"


def machine() -> str:
    cpu, flags = cpu_model_and_flags()
    return (
        f"{cpu} (vector extensions: {', '.join(flags) or 'none found'}); {os.cpu_count()} logical CPUs, "
        f"torch threads {torch.get_num_threads()}; fused CPU kernel {fused_cpu_kernel()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def format_config(title: str, results: list[Result]) -> str:
    forward_peak = next(r.peak_mb for r in results if r.name == "forward")
    lines = [
        f"### {title}",
        "",
        "| method | median time (s) | x forward | peak RSS (MB) | working memory (MB) "
        "| extra over forward peak (MB, %) | runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        share = "" if r.extra_mb is None or not forward_peak else f" ({100 * r.extra_mb / forward_peak:+.1f} %)"
        extra = "n/a" if r.extra_mb is None else f"{r.extra_mb:+,.0f}{share}"
        lines.append(
            f"| {r.name} | {r.seconds:.3f} | {r.ratio:.2f} | {_mb(r.peak_mb)} | {_mb(r.working_mb)} "
            f"| {extra} | {r.runs} |"
        )
    by_name = {r.name: r for r in results}
    fused = by_name["rule (iv), fused mean"].seconds
    notes = [f"GAE / rule (iv) fused: **{by_name['GAE'].seconds / fused:.1f}x**"]
    if "IG-50" in by_name:
        notes.append(f"IG-50 / rule (iv) fused: **{by_name['IG-50'].seconds / fused:.0f}x**")
    lines += ["", "Speed-up of token relevance: " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def format_long(rows) -> str:
    lines = [
        "### Long sequences: DINO ViT-S/8 and ViT-B/8 architectures, batch 1, rule (iv)",
        "",
        "| model | image | tokens N | method | median time (s) | x forward | peak RSS (MB) | working memory (MB) "
        "| extra over forward peak (MB) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, size, tokens, case, seconds, ratio, peak, working, extra in rows:
        lines.append(
            f"| {name.split('/')[-1]} | {size} px | {tokens} | {case} | {seconds:.2f} | {ratio:.2f} | {_mb(peak)} "
            f"| {_mb(working)} | {extra:+,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run for CI (2 layers, batch 1)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default: benchmarks/SPEED.md)")
    parser.add_argument(
        "--only",
        default=None,
        metavar="NAME:BATCH",
        help="run one configuration of the full plan, e.g. dino-vits16:1 (with --out, to a file of its own)",
    )
    parser.add_argument("--memory-probe", nargs=4, metavar=("NAME", "BATCH", "SIZE", "LAYERS"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-cases", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        name, batch, size, layers = args.memory_probe
        only = tuple(json.loads(args.memory_cases))
        print(json.dumps(measure_memory_here(name, int(batch), int(size), int(layers) or None, only)))
        return 0
    started = time.perf_counter()
    sections = []
    configs: dict[str, list[Result]] = {}
    long_rows: list[tuple] = []
    rates = None
    explain_dir_plan: tuple[int, int] | None = None  # (images, batch)
    if args.quick:
        rounds = args.rounds or 2
        plan = [("facebook/dino-vits16", 1, 224, True, 2)]
        long_plan: list[tuple[str, int]] = []
    else:
        rounds = args.rounds or 7
        plan = [
            ("facebook/dino-vits16", 8, 224, True, None),
            ("facebook/dino-vits16", 1, 224, True, None),
            ("facebook/dino-vits8", 8, 224, False, None),
            ("facebook/dino-vits8", 1, 224, False, None),
            ("facebook/dino-vitb16", 8, 224, False, None),
            ("facebook/dino-vitb16", 1, 224, False, None),
        ]
        long_plan = [("facebook/dino-vits8", 224), ("facebook/dino-vits8", 480), ("facebook/dino-vitb8", 480)]
        explain_dir_plan = (128, 32)
        if args.only:
            wanted_name, _, wanted_batch = args.only.partition(":")
            plan = [p for p in plan if p[0].endswith(wanted_name) and str(p[1]) == wanted_batch]
            if not plan:
                parser.error(f"--only {args.only}: no such configuration in the plan")
            long_plan = []
            explain_dir_plan = None
    for name, batch, size, with_ig, layers in plan:
        depth = "" if layers is None else f", {layers} layers"
        title = f"{name.split('/')[-1]} architecture, batch {batch}, {size} px{depth}"
        print(f"... {title}", file=sys.stderr, flush=True)
        configs[title] = run_config(name, batch, size, rounds, with_ig, layers)
        sections.append(format_config(title, configs[title]))
    if explain_dir_plan:
        print("... explain-dir throughput", file=sys.stderr, flush=True)
        rates = run_explain_dir(*explain_dir_plan, rounds=3)
        sections.append(format_explain_dir(rates))
    if long_plan:
        print("... long sequences", file=sys.stderr, flush=True)
        long_rows = run_long_sequence(long_plan, 3)
        sections.append(format_long(long_rows))
    command = "python benchmarks/bench_speed.py" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}" + (f" --out {args.out}" if args.out else "")
    if args.rounds is not None:
        command += f" --rounds {args.rounds}"
    report = "\n".join(
        [
            "# Speed and memory",
            "",
            f"Generated by `{command}` in {time.perf_counter() - started:.0f} s. Do not edit by hand.",
            "",
            f"Machine: {machine()}.",
            "",
            "Median wall time over interleaved rounds; `x forward` is the ratio to the model's own forward "
            "pass (no grad) in the same rounds. Peak RSS is the process's resident high-water mark during "
            "one call, measured in a separate process where freed tensors return to the system at once; "
            "'working memory' is that peak minus the resident memory just before the call (model, inputs and "
            "libraries excluded), 'extra' is the peak minus the forward's own peak. IG-50 runs once (50 steps, "
            "internal batch 50; its memory is not measured). Token-relevance rows use "
            f'`attention_capture="{CAPTURE}"`, the default (each layer\'s attention computed once, in float32; '
            "the model's outputs within float32 rounding of its own sdpa kernel) unless the row says otherwise; "
            '"exact capture" keeps the model\'s sdpa bitwise and recomputes the probabilities.',
            "",
            *([] if args.quick or args.only else [format_targets(configs, long_rows, rates)]),
            *sections,
        ]
    )
    out = args.out or (HERE / "SPEED.md" if not args.quick else None)
    if out is not None:
        out.write_text(report, encoding="utf-8")
        print(f"Wrote {out}", file=sys.stderr)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
