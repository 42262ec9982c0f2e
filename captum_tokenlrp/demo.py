"""Main job: token relevance of a ViT for each rule, fused and per head, as the paper's figure.

    python -m captum_tokenlrp.demo --out outputs/demo                      # offline demo
    python -m captum_tokenlrp.demo --model facebook/dino-vits16 --image cat.jpg

Without ``--model`` (or with ``--model random``) it runs offline on a seeded
**random-init** model with the DINO ViT-S/16 architecture and a synthetic
image: the figure then shows how the rules redistribute relevance in an
untrained network, not what a trained DINO sees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from . import TokenRelevanceLRP
from .models import load_vit, random_dino_model
from .visualization import patch_grid, plot_rule_grid


def synthetic_image(size: int = 224, seed: int = 0) -> torch.Tensor:
    """A deterministic test image `(3, size, size)` in [0, 1]: a bright disc on a shaded background."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([0.2 + 0.3 * xs, 0.25 + 0.2 * ys, 0.35 - 0.1 * xs])
    disc = ((xs - 0.6) ** 2 + (ys - 0.45) ** 2) < 0.04
    image[:, disc] = torch.tensor([0.9, 0.6, 0.1])[:, None]
    return (image + 0.03 * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def _normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation, as DINO's image processor applies it."""
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (image - mean) / std


def _load_inputs(model_name: str, image_path: str | None, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel_values (1, 3, H, W), display image (3, H, W))."""
    if image_path is None:
        size = int(model.config.image_size)
        display = synthetic_image(size)
        return _normalize(display)[None], display
    from PIL import Image
    from transformers import AutoImageProcessor

    image = Image.open(image_path).convert("RGB")
    processor = AutoImageProcessor.from_pretrained(model_name)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    return pixel_values, pixel_values[0]


def run(model_name: str, image_path: str | None, out_dir: Path, rules: list[str]) -> Path:
    if model_name == "random":
        model = random_dino_model("facebook/dino-vits16", seed=0)
        label = "random-init DINO ViT-S/16 architecture (demo, untrained)"
    else:
        model = load_vit(model_name)
        label = model_name
    pixel_values, display = _load_inputs(model_name, image_path, model)
    fused, per_head, raw = {}, {}, {}
    for rule in rules:
        lrp = TokenRelevanceLRP(model, rule=rule)
        layout = lrp.token_layout(pixel_values)
        fused_relevance = lrp.token_relevance(pixel_values)[0]
        head_relevance = lrp.token_relevance(pixel_values, head_fusion=None)[0]
        fused[f"rule ({rule})"] = patch_grid(fused_relevance, layout)
        per_head[f"rule ({rule})"] = patch_grid(head_relevance, layout)
        raw[f"rule_{rule}_fused"] = fused_relevance.numpy()
        raw[f"rule_{rule}_per_head"] = head_relevance.numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = plot_rule_grid(display, fused, per_head, title=f"Token relevance, start at CLS - {label}")
    figure_path = out_dir / "token_relevance.png"
    figure.savefig(figure_path, dpi=110)
    np.savez(out_dir / "token_relevance.npz", **raw)
    return figure_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="hub id, local directory, or 'random' (offline demo)")
    parser.add_argument("--image", default=None, help="image file (default: a synthetic image)")
    parser.add_argument("--rules", nargs="+", default=["i", "ii", "iii", "iv"])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    args = parser.parse_args(argv)
    try:
        path = run(args.model, args.image, args.out, args.rules)
    except OSError as error:
        print(
            f"Could not load {args.model!r}: {error}\nThe HuggingFace Hub may be out of reach; "
            "run with --model random, or point --model at a local checkpoint directory.",
            file=sys.stderr,
        )
        return 2
    print(f"Wrote {path} and {path.with_suffix('.npz')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
