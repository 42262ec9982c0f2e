"""``tokenlrp shapes``: a folder of synthetic shapes images with their masks and labels."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .._loading import CliError
from .._version import __version__
from ._outputs import PACKAGE, SHAPES_HEADER, atomic_save_text, refuse_foreign


def write_shapes(args: argparse.Namespace) -> int:
    """Write ``count`` images of the shapes stream ``seed`` as PNG, with masks and a labels CSV."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from ..data.shapes import SHAPE_CLASSES, generate_shapes

    if args.count < 1:
        raise CliError(f"--count must be at least 1, got {args.count}.")
    out = Path(args.out)
    names = [f"shape_{index:06d}.png" for index in range(args.count)]
    refuse_foreign(
        [out / folder / name for folder in ("images", "masks") for name in names] + [out / "labels.csv"]
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    marked = PngInfo()
    marked.add_text("Software", f"{PACKAGE} {__version__}")  # so that a rerun may replace them
    rows = [SHAPES_HEADER]
    for start in range(0, args.count, 500):
        images, masks, labels = generate_shapes(min(500, args.count - start), args.seed, args.size, start=start)
        for offset, (image, mask, label) in enumerate(zip(images, masks, labels, strict=True)):
            name = names[start + offset]
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(out / "images" / name, pnginfo=marked)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / name, pnginfo=marked)
            rows.append(f"{name},{label},{SHAPE_CLASSES[label]}")
    atomic_save_text(out / "labels.csv", "\n".join(rows) + "\n")
    print(f"Wrote {args.count} images to {out / 'images'}, masks to {out / 'masks'}, labels to {out / 'labels.csv'}")
    return 0
