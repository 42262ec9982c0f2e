"""Where the time of token relevance goes, beyond the model's forward: an operator profile.

    python benchmarks/profile_speed.py            # writes benchmarks/PROFILE.md
    python benchmarks/profile_speed.py --quick    # a tiny model, prints only (CI)

For each architecture (seeded random-init DINO ViT-S/16 and ViT-S/8, batch 8, 224 px) it profiles,
with ``torch.profiler`` on the CPU, the model's own forward (sdpa), the same forward with eager
attention (the N x N probabilities materialised, as any method that reads them must), and token
relevance with rules (i) and (iv), heads fused, ``attention_capture="fast"``. Each profiled call
is preceded by a warm-up call. Operators are grouped by what they do; the table gives each group's
self CPU time in milliseconds per call. Profiling adds overhead: read the groups' shares, and take
wall-time ratios from SPEED.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.profiler import ProfilerActivity, profile

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.models import random_dino_model

HERE = Path(__file__).resolve().parent

#: Operator name fragments -> group, first match wins.
GROUPS = (
    ("scaled_dot_product", "fused attention kernel (sdpa)"),
    ("softmax", "softmax"),
    ("linear", "linear layers (q, k, v, MLP, out)"),
    ("addmm", "linear layers (q, k, v, MLP, out)"),
    ("gelu", "GELU, LayerNorm"),
    ("layer_norm", "GELU, LayerNorm"),
    ("bmm", "N x N matrix products (scores, probs @ v, propagation)"),
    ("matmul", "N x N matrix products (scores, probs @ v, propagation)"),
    ("mm", "N x N matrix products (scores, probs @ v, propagation)"),
    ("baddbmm", "N x N matrix products (scores, probs @ v, propagation)"),
    ("sqrt", "square root of the value distances (rules (iii)/(iv))"),
    ("amin", "reductions (row sums, head mean, norms)"),
    ("sum", "reductions (row sums, head mean, norms)"),
    ("mean", "reductions (row sums, head mean, norms)"),
    ("norm", "reductions (row sums, head mean, norms)"),
    ("div", "element-wise N x N (scale, +I, normalise, distances)"),
    ("mul", "element-wise N x N (scale, +I, normalise, distances)"),
    ("add", "element-wise N x N (scale, +I, normalise, distances)"),
    ("clamp", "element-wise N x N (scale, +I, normalise, distances)"),
    ("sub", "element-wise N x N (scale, +I, normalise, distances)"),
    ("fill", "element-wise N x N (scale, +I, normalise, distances)"),
    ("copy", "copies and layout (contiguous, transpose, cast)"),
    ("clone", "copies and layout (contiguous, transpose, cast)"),
    ("to", "copies and layout (contiguous, transpose, cast)"),
    ("empty", "allocation"),
    ("zeros", "allocation"),
)


def group_of(name: str) -> str:
    short = name.removeprefix("aten::").rstrip("_")  # in-place variants (mul_, add_) with their operator
    for fragment, group in GROUPS:
        if fragment == short or (len(fragment) > 3 and fragment in short):
            return group
    return "other"


def profile_call(call: Callable[[], object], repeats: int) -> tuple[dict[str, float], float, float]:
    """Self CPU milliseconds per group, their total, and the unprofiled wall time, per call (means over ``repeats``)."""
    call()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    wall = (time.perf_counter() - started) * 1000 / repeats
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            call()
    groups: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") and event.self_cpu_time_total > 0:
            groups[group_of(event.key)] += event.self_cpu_time_total / 1000 / repeats
    return dict(groups), sum(groups.values()), wall


def cases(name: str, batch: int, size: int, layers: int | None) -> dict[str, Callable[[], object]]:
    overrides = {} if layers is None else {"num_hidden_layers": layers}
    model = random_dino_model(name, seed=0, **overrides)
    eager = random_dino_model(name, seed=0, attn_implementation="eager", **overrides)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    rule_i = TokenRelevanceLRP(model, rule="i", attention_capture="fast")
    rule_iv = TokenRelevanceLRP(model, rule="iv", attention_capture="fast")

    def forward(of: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return of(images)

        return run

    return {
        "forward (sdpa)": forward(model),
        "forward (eager attention)": forward(eager),
        "rule (i), fused, fast capture": lambda: rule_i.token_relevance(images),
        "rule (iv), fused, fast capture": lambda: rule_iv.token_relevance(images),
    }


def table(profiles: dict[str, tuple[dict[str, float], float, float]]) -> str:
    names = list(profiles)
    groups = sorted({group for by_group, _, _ in profiles.values() for group in by_group})
    groups.sort(key=lambda group: -max(profiles[name][0].get(group, 0.0) for name in names))
    lines = ["| operator group | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for group in groups:
        cells = [f"{profiles[name][0].get(group, 0.0):.0f}" for name in names]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    base = profiles[names[0]][1]
    lines.append("| **total (ms)** | " + " | ".join(f"**{profiles[name][1]:.0f}**" for name in names) + " |")
    lines.append("| total / forward (sdpa) | " + " | ".join(f"{profiles[name][1] / base:.2f}" for name in names) + " |")
    walls = [profiles[name][2] for name in names]
    lines.append("| wall time, unprofiled (ms) | " + " | ".join(f"{wall:.0f}" for wall in walls) + " |")
    outside = [wall - profiles[name][1] for wall, name in zip(walls, names, strict=True)]
    lines.append(
        "| wall time outside the operators (Python, dispatch; ms) | " + " | ".join(f"{o:.0f}" for o in outside) + " |"
    )
    lines.append("| wall time / forward (sdpa) | " + " | ".join(f"{wall / walls[0]:.2f}" for wall in walls) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 2-layer model at batch 1, printed only (CI)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    plan = [("facebook/dino-vits16", 8, 224, None), ("facebook/dino-vits8", 8, 224, None)]
    if args.quick:
        plan, args.repeats = [("facebook/dino-vits16", 1, 224, 2)], 1
    sections = []
    for name, batch, size, layers in plan:
        print(f"profiling {name} batch {batch} ...", file=sys.stderr, flush=True)
        profiles = {label: profile_call(call, args.repeats) for label, call in cases(name, batch, size, layers).items()}
        sections.append(f"## {name.split('/')[-1]} architecture, batch {batch}, {size} px\n\n{table(profiles)}\n")
    report = f"""# Where the time goes: operator profile

Generated by `python benchmarks/profile_speed.py{" --quick" if args.quick else ""}`. Do not edit by hand.

Machine: {platform.processor() or platform.machine()}; torch threads {torch.get_num_threads()}; Python
{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.

Self CPU time of the aten operators per call (mean of {args.repeats} profiled calls after one warm-up),
grouped by what they do. The last rows time the same calls without the profiler ({args.repeats} calls after
the warm-up): what the operators' total leaves of that wall time is spent outside them (Python, the
dispatcher, hooks). Profiling adds overhead and the machine is shared: read the shares, and take
wall-time ratios from [SPEED.md](SPEED.md). "forward (eager attention)" materialises every layer's
`(batch, heads, N, N)` probabilities as any method that reads them must; its excess over the sdpa
forward is the floor of such a method's overhead.

{chr(10).join(sections)}"""
    if not args.quick:
        (HERE / "PROFILE.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
