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

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import (
    AttentionRollout,
    GenericAttentionExplainability,
    RawAttention,
    TokenGradCAM,
    TokenIntegratedGradients,
)
from captum_tokenlrp.models import random_dino_model

HERE = Path(__file__).resolve().parent


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


def build_cases(name: str, batch: int, size: int, layers: int | None, with_ig: bool):
    """(cases, names of slow cases): every method on one seeded model and batch."""
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
        lrp = TokenRelevanceLRP(model, rule=rule)
        cases[f"rule ({rule}), fused mean"] = lambda lrp=lrp: lrp.token_relevance(pixels, additional_forward_args=extra)
        cases[f"rule ({rule}), per head"] = lambda lrp=lrp: lrp.token_relevance(
            pixels, additional_forward_args=extra, head_fusion=None
        )
    lrp_iv = TokenRelevanceLRP(model, rule="iv")
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
                TokenRelevanceLRP(model, rule=rule).token_relevance(
                    pixels, additional_forward_args=extra, head_fusion=mode
                )

    cases["explain: rules (i)-(iv), 8 calls (0.1)"] = separately
    cases["rule (iv), all tokens (N x N)"] = lambda: lrp_iv.all_token_relevance(pixels, additional_forward_args=extra)
    cases["rule (iv), attribute (pixels)"] = lambda: lrp_iv.attribute(pixels, additional_forward_args=extra)
    cases["raw attention"] = lambda: RawAttention(model).token_relevance(pixels, additional_forward_args=extra)
    cases["rollout"] = lambda: AttentionRollout(model).token_relevance(pixels, additional_forward_args=extra)
    cases["GAE"] = lambda: GenericAttentionExplainability(model).token_relevance(pixels, additional_forward_args=extra)
    cases["GradCAM"] = lambda: TokenGradCAM(model).token_relevance(pixels, additional_forward_args=extra)
    slow: set[str] = set()
    if with_ig:
        ig = TokenIntegratedGradients(model, n_steps=50, internal_batch_size=50)
        cases["IG-50"] = lambda: ig.token_relevance(pixels, additional_forward_args=extra)
        slow.add("IG-50")
    return cases, slow


def measure_memory_here(name: str, batch: int, size: int, layers: int | None) -> dict[str, tuple[float, float]]:
    """In this process (started with MALLOC_MMAP_THRESHOLD_ set): case -> (peak RSS, RSS before)."""
    cases, _ = build_cases(name, batch, size, layers, with_ig=False)
    cases["forward"]()  # first-call allocations (thread pools, kernels) are not the method's
    measured = {}
    for case, call in cases.items():
        before = _status_mb("VmRSS")
        peak = peak_memory_mb(call)
        if peak is not None and before is not None:
            measured[case] = (peak, before)
    return measured


def measure_memory(name: str, batch: int, size: int, layers: int | None) -> dict[str, tuple[float, float]]:
    """Peak memory per case, in a fresh process whose freed tensors go back to the system at once.

    glibc keeps freed blocks for reuse, so in a long-lived process the resident set never falls
    and a later peak hides under an earlier one; a low mmap threshold makes every tensor an
    mmap that is unmapped when freed, so resident memory follows live tensors.
    """
    command = [sys.executable, __file__, "--memory-probe", name, str(batch), str(size), str(layers or 0)]
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


def run_long_sequence(sizes: list[int], rounds: int) -> list[tuple]:
    """ViT-S/8 at growing image sizes, batch 1: time and memory, fused mean and per head."""
    rows = []
    for size in sizes:
        cases, _ = build_cases("facebook/dino-vits8", 1, size, None, with_ig=False)
        cases = {case: cases[case] for case in LONG_CASES}
        times = time_interleaved(cases, rounds, set())
        memory = measure_memory("facebook/dino-vits8", 1, size, None)
        forward_time = statistics.median(times["forward"])
        for case in LONG_CASES:
            peak, before = memory[case]
            median = statistics.median(times[case])
            extra = peak - memory["forward"][0]
            rows.append((size, 1 + (size // 8) ** 2, case, median, median / forward_time, peak - before, extra))
    return rows


# ------------------------------------------------------------------ report
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; "
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
        "### Long sequences: DINO ViT-S/8 architecture, batch 1, rule (iv)",
        "",
        "| image | tokens N | method | median time (s) | x forward | working memory (MB) "
        "| extra over forward peak (MB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for size, tokens, case, seconds, ratio, working, extra in rows:
        lines.append(
            f"| {size} px | {tokens} | {case} | {seconds:.2f} | {ratio:.2f} | {_mb(working)} | {extra:+,.0f} |"
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
    args = parser.parse_args(argv)
    if args.memory_probe:
        name, batch, size, layers = args.memory_probe
        print(json.dumps(measure_memory_here(name, int(batch), int(size), int(layers) or None)))
        return 0
    started = time.perf_counter()
    sections = []
    if args.quick:
        rounds = args.rounds or 2
        plan = [("facebook/dino-vits16", 1, 224, True, 2)]
        long_sizes: list[int] = []
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
        long_sizes = [224, 320, 480]
        if args.only:
            wanted_name, _, wanted_batch = args.only.partition(":")
            plan = [p for p in plan if p[0].endswith(wanted_name) and str(p[1]) == wanted_batch]
            if not plan:
                parser.error(f"--only {args.only}: no such configuration in the plan")
            long_sizes = []
    for name, batch, size, with_ig, layers in plan:
        depth = "" if layers is None else f", {layers} layers"
        title = f"{name.split('/')[-1]} architecture, batch {batch}, {size} px{depth}"
        print(f"... {title}", file=sys.stderr, flush=True)
        sections.append(format_config(title, run_config(name, batch, size, rounds, with_ig, layers)))
    if long_sizes:
        print("... long sequences", file=sys.stderr, flush=True)
        sections.append(format_long(run_long_sequence(long_sizes, max(3, rounds // 2))))
    command = "python benchmarks/bench_speed.py" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}" + (f" --out {args.out}" if args.out else "")
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
            "internal batch 50; its memory is not measured).",
            "",
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
