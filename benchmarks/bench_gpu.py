"""Speed and memory of token relevance on a CUDA GPU, against the model's own forward pass.

    python benchmarks/bench_gpu.py                 # writes benchmarks/SPEED-gpu.md (needs CUDA)
    python benchmarks/bench_gpu.py --out FILE      # elsewhere

DINO ViT-S/16 and ViT-B/16 architectures (seeded random init), batch 64, 224 px, float32 and bfloat16.
Each case runs in interleaved rounds (forward, case, forward, ...) between ``torch.cuda.synchronize()``
calls; the median wall time is reported with its ratio to the forward of the same rounds. Peak memory is
``torch.cuda.max_memory_allocated`` during one call, minus what was allocated before it. The host-device
synchronisations of one call are counted with ``torch.cuda.set_sync_debug_mode("warn")``: a number that
does not grow with the layers means that no layer waits for the device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.models import random_dino_model

HERE = Path(__file__).resolve().parent
ARCHITECTURES = ("facebook/dino-vits16", "facebook/dino-vitb16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cases_for(model: torch.nn.Module, pixels: torch.Tensor) -> dict[str, Callable[[], object]]:
    cases: dict[str, Callable[[], object]] = {"forward": lambda: model(pixels)}
    for rule in ("i", "ii", "iii", "iv"):
        fast = TokenRelevanceLRP(model, rule=rule, attention_capture="fast")
        cases[f"rule ({rule}), fused mean"] = lambda fast=fast: fast.token_relevance(pixels)
        cases[f"rule ({rule}), per head"] = lambda fast=fast: fast.token_relevance(pixels, head_fusion=None)
    exact = TokenRelevanceLRP(model, rule="iv", attention_capture="exact")
    cases["rule (iv), fused mean, exact capture"] = lambda: exact.token_relevance(pixels)
    every = TokenRelevanceLRP(model, attention_capture="fast")
    cases["explain: rules (i)-(iv), fused + per head"] = lambda: every.token_relevance_by_rule(
        pixels, ["i", "ii", "iii", "iv"], head_fusions=("mean", None)
    )
    return cases


def timed(call: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        call()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_mb(call: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 1e6


def synchronisations(call: Callable[[], object]) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.no_grad():
                call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(item.message) for item in caught)


def run(name: str, dtype: torch.dtype, batch: int, rounds: int) -> list[tuple]:
    model = random_dino_model(name, seed=0).to("cuda", dtype)
    pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to("cuda", dtype)
    cases = cases_for(model, pixels)
    for call in cases.values():  # warm-up: kernels, allocator, autotuning
        timed(call)
    times: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(rounds):
        for case, call in cases.items():
            times[case].append(timed(call))
    forward = statistics.median(times["forward"])
    forward_peak = peak_mb(cases["forward"])
    rows = []
    for case, call in cases.items():
        seconds = statistics.median(times[case])
        peak = peak_mb(call)
        rows.append((case, seconds, seconds / forward, peak, peak - forward_peak, synchronisations(call)))
    # A check that the capture's maps equal the recomputed ones on this device and dtype.
    fast = TokenRelevanceLRP(model, rule="iv", attention_capture="fast").token_relevance(pixels)
    exact = TokenRelevanceLRP(model, rule="iv", attention_capture="recompute").token_relevance(pixels)
    difference = float((fast - exact).abs().max())
    return rows, difference


def triton_line() -> str:
    """Which Triton the fused kernels of the built-in rules would use here (CUDA builds of torch bring one)."""
    from captum_tokenlrp._core import fused

    if fused.backend("cuda") != "triton":
        return "fused kernels off (triton not importable)"
    import triton

    return f"fused kernels: triton {triton.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "SPEED-gpu.md")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark runs on a GPU (the CPU one is bench_speed.py)")
    started = time.perf_counter()
    sections = []
    for name in ARCHITECTURES:
        for dtype_name, dtype in DTYPES.items():
            title = f"{name.split('/')[-1]} architecture, batch {args.batch}, 224 px, {dtype_name}"
            print(f"... {title}", file=sys.stderr, flush=True)
            rows, difference = run(name, dtype, args.batch, args.rounds)
            lines = [
                f"### {title}",
                "",
                "| method | median time (ms) | x forward | peak memory over before (MB) | extra over forward (MB) "
                "| host-device syncs per call |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for case, seconds, ratio, peak, extra, syncs in rows:
                lines.append(f"| {case} | {1e3 * seconds:.2f} | {ratio:.2f} | {peak:,.0f} | {extra:+,.0f} | {syncs} |")
            lines += ["", f"max |fast - recomputed| of rule (iv) fused: {difference:.2e}.", ""]
            sections.append("\n".join(lines))
    device = torch.cuda.get_device_name()
    report = "\n".join(
        [
            "# Speed and memory on a GPU",
            "",
            f"Generated by `python benchmarks/bench_gpu.py` in {time.perf_counter() - started:.0f} s. "
            "Do not edit by hand.",
            "",
            f"Machine: {device}; torch {torch.__version__}, transformers {transformers.__version__}; {triton_line()}.",
            "",
            "Median wall time over interleaved rounds, each call between `torch.cuda.synchronize()`; `x forward` is "
            "the ratio to the model's own forward (sdpa) in the same rounds. Token-relevance rows use "
            '`attention_capture="fast"` unless the row says otherwise. Memory is `torch.cuda.max_memory_allocated` '
            "during one call minus the allocation before it. Syncs: warnings of `torch.cuda.set_sync_debug_mode` "
            "during one call (12 layers: a count below 12 means no layer waits for the device).",
            "",
            *sections,
        ]
    )
    args.out.write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
