"""Token relevance on CLIP, SigLIP, BEiT and ViT-MAE at their real sizes: reference error, time and FLOPs.

    python benchmarks/bench_families.py            # full run, writes benchmarks/FAMILIES.md
    python benchmarks/bench_families.py --quick    # tiny configs, a few seconds (CI); writes nothing

Each model has the architecture of a public checkpoint, with random weights (seeded):
CLIP ViT-B/16 (``CLIPVisionModel``), SigLIP base patch16 224 (``SiglipVisionModel``, attention-pooling
head), BEiT base patch16 224 (``BeitForImageClassification``: per-layer relative position bias, mean
pooling), ViT-MAE base patch16 224 (``ViTMAEModel``, mask ratio 0.75 as trained), and the DINO ViT-S/16
``ViTModel`` for comparison. Batch 1, 224 px.

(a) Reference error: ``max |ours - reference| / max |reference|`` of rule (iv), fused by mean and per head,
against the float64 reference of ``tests/test_families.py`` built from the attention probabilities and
value vectors of the model's own eager forward in float64 (``tests/families.py``), started where the
model's output is read (CLS; SigLIP's pooling attention; BEiT's patch mean).

(b) Cost: wall time of ``token_relevance`` (rule (iv)) over the model's own forward pass (no grad), medians
of interleaved rounds (forward, fused, per head, forward, ...; as ``bench_speed.py``), and FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` for one forward and one ``token_relevance``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_speed import machine  # noqa: E402  (benchmarks/ is on the path: this script's folder)
from families import (  # noqa: E402
    VISION,
    FamilyInfo,
    attention_sites,
    eager_attention_and_values,
    eager_copy,
    identity_noise,
)
from test_families import reference_maps, reference_start, relative_error  # noqa: E402

from captum_tokenlrp import TokenRelevanceLRP  # noqa: E402
from captum_tokenlrp.models import random_dino_model  # noqa: E402

#: Base architecture shared by CLIP ViT-B/16, SigLIP base, BEiT base and ViT-MAE base.
BASE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16, image_size=224
)


#: Query/key gains of the accuracy check: 1 is the random init itself (nearly uniform attention).
GAINS = (1.0, 4.0, 8.0)


# ------------------------------------------------------------------ models
def _seeded(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return factory().eval()


def _clip(dims: dict) -> nn.Module:
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**dims))


def _siglip(dims: dict) -> nn.Module:
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**dims))


def _beit(dims: dict) -> nn.Module:
    config = transformers.BeitConfig(
        **dims,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=False,
        use_absolute_position_embeddings=False,
        use_mean_pooling=True,
        layer_scale_init_value=0.1,
        num_labels=1000,
    )
    model = transformers.BeitForImageClassification(config)
    with torch.no_grad():  # HF initialises the relative bias tables to 0, which would hide them: draw them
        for module in model.modules():
            if type(module).__name__ == "BeitRelativePositionBias":
                module.relative_position_bias_table.normal_(0.0, 1.0)
    return model


def _vit_mae(dims: dict) -> nn.Module:
    return transformers.ViTMAEModel(transformers.ViTMAEConfig(**dims, mask_ratio=0.75))


def _dino(dims: dict) -> nn.Module:
    return random_dino_model("facebook/dino-vits16", seed=0, **({} if dims is BASE else dims))


@dataclass(frozen=True)
class Case:
    name: str
    architecture: str  # the real size (the --quick run uses tiny configs of the same classes)
    family: str
    build: Callable[[dict], nn.Module]


CASES = (
    Case("CLIP", "ViT-B/16", "clip", _clip),
    Case("SigLIP", "base patch16 224", "siglip", _siglip),
    Case("BEiT", "base patch16 224, mean pooling, per-layer bias", "beit", _beit),
    Case("ViT-MAE", "base patch16 224", "vit_mae", _vit_mae),
    Case("DINO", "ViT-S/16, for comparison", "vit", _dino),
)


# ------------------------------------------------------------------ reference
def reference_errors(model: nn.Module, family: str, pixel_values: torch.Tensor) -> dict[str, float]:
    lrp = TokenRelevanceLRP(model, rule="iv")
    layout = lrp.token_layout(pixel_values)
    info = FamilyInfo(
        name=type(model).__name__,
        family=family,
        special_token_names=layout.special_token_names,
        grid=layout.grid,
        patch_size=layout.patch_size[0],
        image_size=pixel_values.shape[-1],
        readout="",
    )
    # ViT-MAE: on every patch (families' references give it increasing noise; mask ratio 0 here).
    ratio = getattr(model.config, "mask_ratio", None)
    if ratio is not None:
        model.config.mask_ratio = 0.0
    try:
        layers = eager_attention_and_values(model, pixel_values)
    finally:
        if ratio is not None:
            model.config.mask_ratio = ratio
    start = reference_start(model, info, pixel_values)
    errors = {}
    for mode, label in (("mean", "fused"), (None, "per head")):
        errors[label] = relative_error(
            lrp.token_relevance(pixel_values, head_fusion=mode), reference_maps(layers, start, "iv", mode)
        )
    # The float32 floor: the same weights run by an eager float32 copy (another float32 rounding of the forward).
    # Both with "exact" capture, so that each forward runs its own kernel (the default "fast" capture computes
    # the attention of both itself, and would hide the difference).
    own = TokenRelevanceLRP(model, rule="iv", attention_capture="exact")
    eager = TokenRelevanceLRP(eager_copy(model, torch.float32), rule="iv", attention_capture="exact")
    for mode, label in (("mean", "fused spread"), (None, "per head spread")):
        errors[label] = relative_error(
            own.token_relevance(pixel_values, head_fusion=mode),
            eager.token_relevance(pixel_values, head_fusion=mode).double(),
        )
    # How peaked the attention is (1 / N when uniform): the mean over layers, heads and rows of max_j w_ij.
    errors["max attention"] = float(torch.stack([w.amax(-1).mean() for w, _ in layers]).mean())
    errors["tokens"] = layout.num_tokens
    return errors


def sharpened(model: nn.Module, gain: float) -> nn.Module:
    """A copy whose self-attention query and key projections (weights and biases) are scaled by ``gain``: scores
    x gain^2, attention more peaked, as in trained models (random-init attention is nearly uniform)."""
    if gain == 1:
        return model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for site in attention_sites(model):
            for linear in (site.query, site.key):
                linear.weight.mul_(gain)
                if linear.bias is not None:
                    linear.bias.mul_(gain)
    return model


# ------------------------------------------------------------------ cost
def forward_call(model: nn.Module, pixel_values: torch.Tensor) -> Callable[[], object]:
    """The model's own forward, no grad. ViT-MAE runs as the explanation runs it: mask ratio 0 (restored after)
    and increasing noise, i.e. every patch in grid order, not the 25 % a 0.75 mask keeps."""
    if not hasattr(model.config, "mask_ratio"):

        def forward() -> None:
            with torch.no_grad():
                model(pixel_values)

        return forward
    patch = model.config.patch_size
    noise = identity_noise(pixel_values, patch)

    def forward_all_patches() -> None:
        ratio = model.config.mask_ratio
        model.config.mask_ratio = 0.0
        try:
            with torch.no_grad():
                model(pixel_values, noise=noise)
        finally:
            model.config.mask_ratio = ratio

    return forward_all_patches


def time_interleaved(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Each round runs every case once, in order (bench_speed.py's scheme); one warm-up call each first."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for call in cases.values():
        call()
    for _ in range(rounds):
        for name, call in cases.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


#: FlopCounterMode has no formula for the CPU flash kernel of scaled_dot_product_attention: count it as sdpa.
CUSTOM_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def count_flops(call: Callable[[], object]) -> int:
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        call()
    return int(counter.get_total_flops())


def measure(case: Case, dims: dict, rounds: int) -> dict[str, object]:
    model = _seeded(lambda: case.build(dims))
    size = int(dims["image_size"])
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    architecture = "tiny" if dims is VISION else case.architecture
    row: dict[str, object] = {"title": f"{case.name} {architecture} (`{type(model).__name__}`)"}
    row["accuracy"] = {}
    for gain in GAINS:
        started = time.perf_counter()
        errors = reference_errors(sharpened(model, gain), case.family, pixel_values)
        errors["seconds"] = time.perf_counter() - started
        row["accuracy"][gain] = errors
    lrp = TokenRelevanceLRP(model, rule="iv")
    cases = {
        "forward": forward_call(model, pixel_values),
        "fused": lambda: lrp.token_relevance(pixel_values),
        "per head": lambda: lrp.token_relevance(pixel_values, head_fusion=None),
    }
    times = time_interleaved(cases, rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    row["seconds"] = medians
    row["rounds"] = rounds
    row["flops"] = {name: count_flops(call) for name, call in cases.items()}
    return row


# ------------------------------------------------------------------ report
def report(rows: list[dict], command: str, seconds: float, quick: bool) -> str:
    size = "tiny configs (hidden 48, 3 layers, 4 heads, 32 px, patch 8)" if quick else "real sizes, 224 px"
    lines = [
        "# Token relevance on CLIP, SigLIP, BEiT and ViT-MAE",
        "",
        f"Generated by `{command}` in {seconds:.0f} s. Do not edit by hand.",
        "",
        f"Machine: {machine()}.",
        "",
        f"Random-init models with the architectures of public checkpoints ({size}), batch 1, seed 0; "
        "BEiT's relative position bias tables drawn from N(0, 1) (HF initialises them to 0). ViT-MAE keeps "
        "its mask ratio 0.75; the explanation runs it on every patch in grid order, and its forward below is "
        "timed the same way (mask ratio 0, increasing noise).",
        "",
        "## (a) Agreement with the float64 eager reference, rule (iv)",
        "",
        "`max |ours - reference| / max |reference|` on 1 image; the reference "
        "(`tests/test_families.py`) applies METHOD.md in float64 to the attention probabilities and value "
        "vectors of the model's own eager forward run in float64, from where the model's output is read. "
        "Random-init attention is nearly uniform, trained attention is not: the rows 'q, k x g' scale the "
        "encoder's query and key projections by g (scores x g^2; SigLIP's pooling head unchanged). "
        "'max attention' is the mean over layers, heads and rows of the largest attention probability "
        "(1/N when uniform). 'float32 spread' is how far our own map moves when the same weights run as an "
        "eager float32 copy instead of the model's sdpa forward, each running its own attention kernel "
        '(`attention_capture="exact"`): the size of the differences that float32 rounding of the forward '
        "alone causes at that peakedness (no float32 implementation can promise less). The errors to the "
        'reference are those of the default `attention_capture="fast"`.',
        "",
        "| model | tokens N | weights | max attention | fused (mean) | per head | float32 spread, fused "
        "| float32 spread, per head | reference time (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for gain, e in row["accuracy"].items():
            weights = "random init" if gain == 1 else f"q, k x {gain:g}"
            lines.append(
                f"| {row['title']} | {e['tokens']} | {weights} | {e['max attention']:.3f} | {e['fused']:.1e} "
                f"| {e['per head']:.1e} | {e['fused spread']:.1e} | {e['per head spread']:.1e} | {e['seconds']:.1f} |"
            )
    lines += [
        "",
        "## (b) Cost relative to the model's own forward pass (no grad)",
        "",
        f"Median wall time over {rows[0]['rounds']} interleaved rounds (forward, rule (iv) fused, rule (iv) per "
        "head), after one warm-up call each. FLOPs from `torch.utils.flop_counter.FlopCounterMode` for one call: "
        "it counts matrix products, convolutions and attention kernels (the CPU flash kernel of "
        "`scaled_dot_product_attention` with sdpa's own formula), not elementwise work (softmax, norms, "
        "divisions).",
        "",
        "| model | forward (s) | fused (s) | x forward | per head (s) | x forward "
        "| forward GFLOP | fused GFLOP | x forward | per head GFLOP | x forward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s, f = row["seconds"], row["flops"]
        lines.append(
            f"| {row['title']} | {s['forward']:.3f} | {s['fused']:.3f} | {s['fused'] / s['forward']:.2f} "
            f"| {s['per head']:.3f} | {s['per head'] / s['forward']:.2f} "
            f"| {f['forward'] / 1e9:.4g} | {f['fused'] / 1e9:.4g} | {f['fused'] / f['forward']:.3f} "
            f"| {f['per head'] / 1e9:.4g} | {f['per head'] / f['forward']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configs for CI (a few seconds); writes no file")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7, --quick 2)")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default: benchmarks/FAMILIES.md)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dims = VISION if args.quick else BASE
    rounds = args.rounds or (2 if args.quick else 7)
    rows = []
    for case in CASES:
        print(f"... {case.name}", file=sys.stderr, flush=True)
        rows.append(measure(case, dims, rounds))
    command = "python benchmarks/bench_families.py" + (" --quick" if args.quick else "")
    text = report(rows, command, time.perf_counter() - started, args.quick)
    out = args.out or (None if args.quick else HERE / "FAMILIES.md")
    if out is not None:
        out.write_text(text, encoding="utf-8")
        print(f"Wrote {out}", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
