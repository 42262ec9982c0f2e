"""Explanation quality of every method on the bundled model and held-out shapes with masks.

    python benchmarks/bench_quality.py            # 500 images, writes benchmarks/RESULTS.md + PNGs
    python benchmarks/bench_quality.py --quick    # a few images, writes to a temporary folder (CI)

Methods: rules (i)-(iv) with heads fused by mean and as the mean of per-head maps, raw
attention (fused), attention rollout, GAE (Chefer et al. 2021), Integrated Gradients (50
steps), GradCAM and a random map. Each explains the bundled classifier's predicted class (rules
(i)-(iv), rollout and raw attention do not depend on the class).

Metrics, per image (then mean and 95 % CI over images):

- localisation against the object mask, at patch resolution (a patch is object when half its
  pixels are) and at pixel resolution (the method's ``attribute`` pixel map): relevance mass,
  pointing game, IoU of the map thresholded at its mean (Chefer's protocol);
- faithfulness: deletion of patches in 10 % steps, most relevant first (MoRF, lower area is
  better) and least relevant first (LeRF, higher is better), removed patches replaced by the
  image's mean colour, following the predicted class's probability; ABPC = LeRF - MoRF area;
- sanity: cascading parameter randomisation (Adebayo et al. 2018) on the first images; Spearman
  correlation with the intact model's patch map after randomising the head and the last block,
  and after randomising everything (lower = the map depends more on the model);
- cost: the method's time on the whole set divided by one forward pass over it, same run. The
  eight rule maps (four rules, two head modes) come from one ``token_relevance_by_rule`` call per
  batch, one forward pass for all of them: each rule row shows that shared cost.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import transformers
from torch import Tensor, nn

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import (
    AttentionRollout,
    GenericAttentionExplainability,
    RandomRelevance,
    RawAttention,
    TokenGradCAM,
    TokenIntegratedGradients,
)
from captum_tokenlrp.data.shapes import generate_shapes, normalize
from captum_tokenlrp.evaluation import (
    localisation_scores,
    mean_confidence_interval,
    parameter_randomization_test,
    patch_relevance_grid,
    perturbation_curves,
)
from captum_tokenlrp.models import load_bundled_model, load_vit

HERE = Path(__file__).resolve().parent
#: Stream seed of the benchmark's images: disjoint from training (0) and the training run's check (1).
BENCHMARK_SEED = 3


@dataclass(frozen=True)
class Method:
    """A method as the benchmark runs it: every attribution class here shares the contract
    ``token_relevance(x, target=...)`` -> `(batch, tokens)` and ``attribute`` -> pixel map."""

    name: str
    family: str
    build: Callable[[nn.Module], Any]
    options: dict[str, Any] = field(default_factory=dict)
    #: ``(rule, head mode)`` of a rule method, whose maps come from the shared one-forward call.
    by_rule: tuple[str, str] | None = None

    def token_relevance(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return self.build(model).token_relevance(images, target=target, **self.options)

    def pixel_map(self, model: nn.Module, images: Tensor, target: Tensor) -> Tensor:
        return self.build(model).attribute(images, target=target, **self.options)


def methods(ig_steps: int) -> list[Method]:
    rules = [
        Method(
            f"rule ({rule}) {label}",
            "token relevance",
            partial(TokenRelevanceLRP, rule=rule),
            {"head_fusion": how},
            by_rule=(rule, how),
        )
        for rule in RULES
        for how, label in (("mean", "fused"), ("per_head_mean", "per-head mean"))
    ]
    return [
        *rules,
        Method("raw attention (fused)", "attention", RawAttention),
        Method("rollout", "attention", AttentionRollout),
        Method("GAE (Chefer 2021)", "gradient", GenericAttentionExplainability),
        Method(f"IG ({ig_steps} steps)", "gradient", partial(TokenIntegratedGradients, n_steps=ig_steps)),
        Method("GradCAM", "gradient", TokenGradCAM),
        Method("random", "control", RandomRelevance),
    ]


RULES = ("i", "ii", "iii", "iv")
HEAD_MODES = ("mean", "per_head_mean")


def rule_maps(model: nn.Module, images: Tensor, batch_size: int) -> tuple[dict[tuple[str, str], Tensor], float]:
    """Every rule's map in both head modes, one ``token_relevance_by_rule`` call (one forward) per batch.

    Returns ``({(rule, head mode): (count, tokens)}, seconds)``.
    """
    by_rule = partial(TokenRelevanceLRP(model).token_relevance_by_rule, rules=RULES, head_fusions=HEAD_MODES)
    parts: dict[tuple[str, str], list[Tensor]] = {(rule, mode): [] for rule in RULES for mode in HEAD_MODES}
    seconds = 0.0
    for start, size in _batches(images.shape[0], batch_size):
        maps, elapsed = _timed(by_rule, images[start : start + size])
        seconds += elapsed
        for key, values in parts.items():
            values.append(maps[key[0]][key[1]])
    return {key: torch.cat(values) for key, values in parts.items()}, seconds


def _batches(count: int, size: int):
    for start in range(0, count, size):
        yield start, min(size, count - start)


def _timed(function: Callable[..., Tensor], *args: object) -> tuple[Tensor, float]:
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def evaluate(model: nn.Module, count: int, batch_size: int, sanity_count: int, ig_steps: int, seed: int) -> dict:
    images_np, masks_np, labels_np = generate_shapes(count, seed, model.config.image_size)
    images, masks = normalize(images_np), torch.from_numpy(masks_np)
    patch = model.config.patch_size
    with torch.no_grad():
        predicted = torch.cat([model(images[s : s + n]).logits.argmax(1) for s, n in _batches(count, batch_size)])
    accuracy = (predicted.numpy() == labels_np).mean()
    passes = []
    with torch.no_grad():
        for _ in range(3):
            passes.append(sum(_timed(model, images[s : s + n])[1] for s, n in _batches(count, batch_size)))
    forward_seconds = sorted(passes)[1]  # median of three passes over the whole set
    layout = TokenRelevanceLRP(model).token_layout(images[:1])
    results: dict[str, dict] = {}
    shared_maps, shared_seconds = None, 0.0
    for method in methods(ig_steps):
        print(f"  {method.name} ...", flush=True, file=sys.stderr)
        if method.by_rule is not None and shared_maps is None:
            shared_maps, shared_seconds = rule_maps(model, images, batch_size)
        grids, pixel_maps, seconds = [], [], 0.0
        for start, size in _batches(count, batch_size):
            chunk, target = images[start : start + size], predicted[start : start + size]
            if method.by_rule is not None:  # from the shared call: one forward for every rule and mode
                relevance = shared_maps[method.by_rule][start : start + size]
            else:
                relevance, elapsed = _timed(method.token_relevance, model, chunk, target)
                seconds += elapsed
            grids.append(patch_relevance_grid(relevance.detach().float(), layout))
            pixel_maps.append(method.pixel_map(model, chunk, target).detach().float().sum(dim=1))
        grid, pixels = torch.cat(grids), torch.cat(pixel_maps)
        scores = localisation_scores(grid, masks, object_share=0.5)
        pixel_scores = localisation_scores(pixels, masks)
        curves = perturbation_curves(model, images, grid, target=predicted, baseline="mean", patch_size=patch)
        sanity = parameter_randomization_test(
            model,
            lambda m, x, method=method: patch_relevance_grid(
                method.token_relevance(m, x, predicted[: x.shape[0]]).detach().float(), layout
            ),
            images[:sanity_count],
            seed=0,
        )
        results[method.name] = {
            "family": method.family,
            "grid": grid,
            "per_image": {
                "mass": scores["mass"],
                "pointing": scores["pointing"],
                "iou": scores["iou"],
                "mass_pixel": pixel_scores["mass"],
                "pointing_pixel": pixel_scores["pointing"],
                "iou_pixel": pixel_scores["iou"],
                "auc_morf": curves.auc_morf,
                "auc_lerf": curves.auc_lerf,
                "abpc": curves.area_between,
                "rand_last_block": sanity.spearman[1],  # stage 1: head and last block
                "rand_all": sanity.spearman[-1],
            },
            "curves": curves,
            "cost": (shared_seconds if method.by_rule is not None else seconds) / forward_seconds,
        }
    return {
        "results": results,
        "accuracy": float(accuracy),
        "images": images_np,
        "masks": masks_np,
        "predicted": predicted,
    }


# (key, column title, higher is better)
COLUMNS = [
    ("mass", "mass", True),
    ("pointing", "pointing", True),
    ("iou", "IoU", True),
    ("mass_pixel", "mass px", True),
    ("pointing_pixel", "pointing px", True),
    ("iou_pixel", "IoU px", True),
    ("auc_morf", "MoRF AUC ↓", False),
    ("auc_lerf", "LeRF AUC ↑", True),
    ("abpc", "ABPC ↑", True),
    ("rand_last_block", "rand. ρ last block ↓", False),
    ("rand_all", "rand. ρ all ↓", False),
]


def _cell(values: Tensor) -> str:
    mean, half = mean_confidence_interval(values)
    return f"{mean:.3f} ± {half:.3f}" if not math.isnan(half) else f"{mean:.3f}"


def table(results: dict) -> str:
    header = "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " | cost (× forward) |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    best = {}
    for key, _, higher in COLUMNS:
        means = {name: r["per_image"][key].double().mean().item() for name, r in results.items() if name != "random"}
        best[key] = (max if higher else min)(means, key=means.get)
    for name, result in results.items():
        cells = []
        for key, _, _ in COLUMNS:
            cell = _cell(result["per_image"][key])
            cells.append(f"**{cell}**" if best[key] == name else cell)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['cost']:.2f} |")
    return "\n".join(lines)


def _paired(results: dict, first: str, second: str, key: str) -> tuple[float, float]:
    return mean_confidence_interval(results[first]["per_image"][key] - results[second]["per_image"][key])


def findings(results: dict) -> str:
    """Sentences and tables computed from the per-image scores: which rule variant wins on which
    metric, and whether a value rule (ii)-(iv) beats rollout (rule (i)) and raw attention, by paired
    95 % intervals over images."""
    rules = [name for name, r in results.items() if r["family"] == "token relevance"]
    lines = []
    for key, title, higher in COLUMNS:
        means = {name: results[name]["per_image"][key].double().mean().item() for name in rules}
        winner = (max if higher else min)(means, key=means.get)
        overall = {name: r["per_image"][key].double().mean().item() for name, r in results.items()}
        best = (max if higher else min)(overall, key=overall.get)
        note = "" if best == winner else f"; best of all methods: {best} ({overall[best]:.3f})"
        lines.append(f"- **{title}**: best rule variant {winner} ({means[winner]:.3f}){note}.")
    value_rules = [f"rule ({rule}) {fusion}" for rule in ("ii", "iii", "iv") for fusion in ("fused", "per-head mean")]
    for other in ("rule (i) fused", "raw attention (fused)"):
        lines += [
            "",
            f"Value rules minus **{other}**, paired over images (mean ± 95 % CI). ✓: better, ✗: worse "
            "(the interval excludes 0 in that direction), =: no difference found.",
            "",
            "| value rule | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        for name in value_rules:
            cells = []
            for key, _, higher in COLUMNS:
                mean, half = _paired(results, name, other, key)
                gain = mean if higher else -mean
                mark = "✓" if gain - half > 0 else ("✗" if gain + half < 0 else "=")
                cells.append(f"{mean:+.3f} ± {half:.3f} {mark}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colours = plt.get_cmap("tab20").colors  # 14 methods: the default cycle of 10 would repeat
    for index, (name, result) in enumerate(results.items()):
        curves = result["curves"]
        style = "-" if result["family"] == "token relevance" else "--"
        for axis, curve in zip(axes, (curves.morf, curves.lerf), strict=True):
            axis.plot(curves.fractions * 100, curve.mean(0), style, label=name, linewidth=1.2, color=colours[index])
    axes[0].set_title("MoRF deletion (most relevant patches first; lower is better)")
    axes[1].set_title("LeRF deletion (least relevant first; higher is better)")
    for axis in axes:
        axis.set_xlabel("patches removed (%)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the predicted class")
    axes[1].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_gallery(evaluation: dict, path: Path, count: int = 4) -> None:
    results = evaluation["results"]
    names = list(results)
    figure, axes = plt.subplots(count, len(names) + 1, figsize=(1.3 * (len(names) + 1), 1.45 * count))
    for row in range(count):
        axes[row, 0].imshow(evaluation["images"][row])
        axes[row, 0].contour(evaluation["masks"][row], levels=[0.5], colors="white", linewidths=0.6)
        for column, name in enumerate(names, start=1):
            axes[row, column].imshow(results[name]["grid"][row].numpy(), cmap="inferno")
    for column, name in enumerate(["image + mask", *names]):
        axes[0, column].set_title(name, fontsize=6)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few images; output to a temporary folder")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--sanity-images", type=int, default=50, help="images for the randomisation test")
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=BENCHMARK_SEED, help="shapes stream of the images")
    parser.add_argument("--model", default="bundled", help="'bundled' or a local classifier checkpoint")
    parser.add_argument("--out", type=Path, default=None, help="folder for RESULTS.md and the figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.sanity_images, args.ig_steps = 12, 6, 4, 4
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-quality-")) if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load_bundled_model() if args.model == "bundled" else load_vit(args.model)
    started = time.perf_counter()
    evaluation = evaluate(
        model, args.images, args.batch, min(args.sanity_images, args.images), args.ig_steps, args.seed
    )
    wall = time.perf_counter() - started
    plot_curves(evaluation["results"], out / "quality_curves.png")
    plot_gallery(evaluation, out / "quality_gallery.png", count=min(4, args.images))
    command = "python benchmarks/bench_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    report = f"""# Explanation quality on the bundled model

Generated by `{command.strip()}` in {wall / 60:.1f} min on {cpu} ({torch.get_num_threads()} threads),
Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.
Do not edit by hand: rerun the command.

Model: `{args.model}`; {args.images} held-out images of the shapes data (stream seed {args.seed}; training
used seed 0), 64 px, 8 x 8 patches. The model's accuracy on them: {evaluation["accuracy"]:.3f}.
Every method explains the predicted class. Mean ± 95 % CI over images (Student t); the randomisation
columns use the first {min(args.sanity_images, args.images)} images. Bold: best non-random method per column.
Patch-resolution localisation counts a patch as object when at least half its pixels are; "px" columns
score the method's pixel map (`attribute`) against the exact mask. Deletion replaces removed patches by
the image's mean colour; the curves follow the predicted class's probability.

{table(evaluation["results"])}

## Findings (computed from the table's per-image scores)

{findings(evaluation["results"])}

## Figures

Deletion curves (mean over images): ![curves](quality_curves.png)

Maps of the first images: ![gallery](quality_gallery.png)
"""
    (out / "RESULTS.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {out / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
