"""``tokenlrp``: token relevance from the command line, for a few images or a whole folder.

    tokenlrp explain [IMAGE ...] --model bundled --rules i ii iii iv --out DIR
    tokenlrp explain-dir DIR --out OUT [--batch-size 32] [--workers 2]
    torchrun --nproc_per_node 2 -m captum_tokenlrp.cli explain-dir DIR --out OUT
    tokenlrp shapes OUT --count 1000 --seed 5     # a folder of shapes images, masks and labels

``--model`` takes a hub id (default ``facebook/dino-vits16``), a local checkpoint
directory, or ``bundled`` (the small shapes ViT that ships with the package, offline).
Images are preprocessed by the model's own image processor configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import TokenRelevanceLRP
from ._adapters import TokenLayout
from ._core.propagation import HEAD_MODES
from .models import BUNDLED_MODEL_DIR, bundled_sample_image, load_bundled_model, load_vit
from .visualization import patch_grid, plot_rule_grid

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CliError(Exception):
    """A problem the user can fix; printed as one message, without a traceback."""


# ------------------------------------------------------------------ model loading
@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    name: str


def load_model(name: str, device: str, dtype: str) -> LoadedModel:
    """The model and its image processor, with a clear message when neither hub nor disk has it."""
    from transformers import AutoImageProcessor

    source = str(BUNDLED_MODEL_DIR) if name == "bundled" else name
    try:
        model = load_bundled_model() if name == "bundled" else load_vit(name)
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise CliError(
            f"Could not load model {name!r} ({type(error).__name__}: {str(error).splitlines()[0]}).\n"
            "The HuggingFace Hub may be out of reach and the model not cached. Use --model bundled "
            "for the offline model that ships with the package, or --model /path/to/checkpoint for a "
            "local directory written by save_pretrained (set HF_HUB_OFFLINE=1 to use the cache only)."
        ) from None
    try:
        model = model.to(device=device, dtype=DTYPES[dtype])
    except (RuntimeError, AssertionError) as error:
        raise CliError(f"Cannot move the model to device {device!r}: {error}") from None
    return LoadedModel(model.eval(), processor, name)


def preprocess(processor, images: Sequence) -> torch.Tensor:
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


# ------------------------------------------------------------------ outputs
def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` so that it either exists complete or not at all (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_save_figure(path: Path, figure) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=110)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def layout_arrays(layout: TokenLayout) -> dict[str, np.ndarray]:
    """The token layout as arrays stored beside the relevance."""
    return {
        "grid": np.array(layout.grid),
        "special_tokens": np.array(layout.special_token_names),
        "patch_size": np.array(layout.patch_size),
    }


def relevance_arrays(
    lrp: TokenRelevanceLRP, pixel_values: torch.Tensor, head_fusion: str | None, target_token: int | None
) -> tuple[np.ndarray, TokenLayout]:
    """Token relevance `(batch, [heads,] num_tokens)` as numpy, and the token layout of the inputs."""
    layout = lrp.token_layout(pixel_values)
    options = {}
    if target_token is not None:
        if not 0 <= target_token < layout.num_tokens:
            raise CliError(f"--target-token {target_token} is out of range: the model has {layout.num_tokens} tokens.")
        start = torch.zeros(layout.num_tokens)
        start[target_token] = 1.0
        options["initial_relevance"] = start
    relevance = lrp.token_relevance(pixel_values, head_fusion=head_fusion, **options)
    return relevance.cpu().numpy(), layout


# ------------------------------------------------------------------ explain
def explain(args: argparse.Namespace) -> int:
    from PIL import Image

    loaded = load_model(args.model, args.device, args.dtype)
    if args.images:
        named = []
        for path in args.images:
            try:
                with Image.open(path) as image:
                    named.append((Path(path).stem, image.convert("RGB")))
            except OSError as error:
                raise CliError(f"Cannot read image {path}: {error}") from None
    else:
        named = [("sample", bundled_sample_image())]
    out = Path(args.out)
    for stem, image in named:
        pixel_values = preprocess(loaded.processor, [image]).to(args.device, DTYPES[args.dtype])
        fused, per_head, arrays = {}, {}, {}
        for rule in args.rules:
            lrp = TokenRelevanceLRP(loaded.model, rule=rule)
            fused_rel, layout = relevance_arrays(lrp, pixel_values, args.head_fusion, args.target_token)
            head_rel, _ = relevance_arrays(lrp, pixel_values, None, args.target_token)
            if fused_rel.ndim == 3:  # a per-head --head-fusion: show its mean as the fused column
                fused_rel = fused_rel.mean(axis=1)
            fused[f"rule ({rule})"] = patch_grid(torch.from_numpy(fused_rel[0]), layout)
            per_head[f"rule ({rule})"] = patch_grid(torch.from_numpy(head_rel[0]), layout)
            arrays[f"rule_{rule}_fused"] = fused_rel[0]
            arrays[f"rule_{rule}_per_head"] = head_rel[0]
        display = pixel_values[0].float().cpu()
        figure = plot_rule_grid(display, fused, per_head, title=f"{stem} - {loaded.name}")
        atomic_save_figure(out / f"{stem}.png", figure)
        atomic_save_npz(out / f"{stem}.npz", **arrays, **layout_arrays(layout))
        print(f"Wrote {out / f'{stem}.png'} and {out / f'{stem}.npz'}")
    return 0


# ------------------------------------------------------------------ explain-dir
def find_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise CliError(f"{root} is not a directory.")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def output_path(out: Path, root: Path, image: Path) -> Path:
    return out / image.relative_to(root).with_suffix(".npz")


class ImageFolder(torch.utils.data.Dataset):
    """Reads and preprocesses one image; an unreadable one yields its error instead."""

    def __init__(self, paths: list[Path], processor) -> None:
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                pixels = preprocess(self.processor, [image.convert("RGB")])[0]
            return index, pixels, None
        except Exception as error:  # any decoding failure is reported and the image skipped
            return index, None, f"{type(error).__name__}: {error}"


def _collate(items):
    return items


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def explain_dir(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    rank, world = _distributed()
    root, out = Path(args.directory), Path(args.out)
    paths = find_images(root)
    mine = paths[rank::world]
    pending = [p for p in mine if not output_path(out, root, p).exists()]
    skipped = len(mine) - len(pending)
    loaded = load_model(args.model, args.device, args.dtype)
    lrp = TokenRelevanceLRP(loaded.model, rule=args.rule)
    loader = torch.utils.data.DataLoader(
        ImageFolder(pending, loaded.processor),
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=_collate,
    )
    done, failed = 0, []
    started = time.perf_counter()
    progress = tqdm(total=len(pending), disable=args.quiet or rank != 0, desc="explain-dir", file=sys.stderr)
    for items in loader:
        good = [(index, pixels) for index, pixels, error in items if error is None]
        failed += [(pending[index], error) for index, _, error in items if error is not None]
        if good:
            pixel_values = torch.stack([pixels for _, pixels in good]).to(args.device, DTYPES[args.dtype])
            relevance, layout = relevance_arrays(lrp, pixel_values, args.head_fusion, args.target_token)
            for (index, _), row in zip(good, relevance, strict=True):
                atomic_save_npz(output_path(out, root, pending[index]), relevance=row, **layout_arrays(layout))
            done += len(good)
        progress.update(len(items))
    progress.close()
    seconds = time.perf_counter() - started
    for path, error in failed:
        print(f"[rank {rank}] skipped unreadable image {path}: {error}", file=sys.stderr)
    counts = torch.tensor([done, skipped, len(failed)], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
        dist.destroy_process_group()
    if rank == 0:
        total_done, total_skipped, total_failed = (int(c) for c in counts)
        rate = done / seconds if seconds > 0 else 0.0
        print(
            f"explain-dir: {total_done} explained, {total_skipped} already done (skipped), "
            f"{total_failed} unreadable, {len(paths)} images in {root}; "
            f"{rate:.1f} images/s on rank 0 ({world} process{'es' if world > 1 else ''})"
        )
    return 0


# ------------------------------------------------------------------ shapes
def write_shapes(args: argparse.Namespace) -> int:
    """Write ``count`` images of the shapes stream ``seed`` as PNG, with masks and a labels CSV."""
    from PIL import Image

    from .data.shapes import SHAPE_CLASSES, generate_shapes

    if args.count < 1:
        raise CliError(f"--count must be at least 1, got {args.count}.")
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = ["file,label,class"]
    for start in range(0, args.count, 500):
        images, masks, labels = generate_shapes(min(500, args.count - start), args.seed, args.size, start=start)
        for offset, (image, mask, label) in enumerate(zip(images, masks, labels, strict=True)):
            name = f"shape_{start + offset:06d}.png"
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(out / "images" / name)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / name)
            rows.append(f"{name},{label},{SHAPE_CLASSES[label]}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"Wrote {args.count} images to {out / 'images'}, masks to {out / 'masks'}, labels to {out / 'labels.csv'}")
    return 0


# ------------------------------------------------------------------ entry point
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="facebook/dino-vits16", help="hub id, local directory or 'bundled'")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    fusions = [mode for mode in HEAD_MODES if mode is not None] + ["none"]
    parser.add_argument("--head-fusion", default="mean", choices=fusions, help="'none': one map per head")
    parser.add_argument("--target-token", type=int, default=None, help="start token (default: CLS / classifier)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenlrp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("explain", help="paper-style figure and token relevance for a few images")
    one.add_argument("images", nargs="*", help="image files (default: a bundled sample)")
    one.add_argument("--rules", nargs="+", default=["i", "ii", "iii", "iv"])
    _common(one)
    many = commands.add_parser("explain-dir", help="token relevance for every image of a folder (resumable)")
    many.add_argument("directory")
    many.add_argument("--rule", default="iv")
    many.add_argument("--batch-size", type=int, default=32)
    many.add_argument("--workers", type=int, default=0)
    many.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(many)
    shapes = commands.add_parser("shapes", help="write images of the synthetic shapes data, masks and labels")
    shapes.add_argument("out", help="folder; images go to OUT/images, masks to OUT/masks")
    shapes.add_argument("--count", type=int, default=100)
    shapes.add_argument("--seed", type=int, default=5, help="stream seed (0 trained the bundled model)")
    shapes.add_argument("--size", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "head_fusion", None) == "none":
        args.head_fusion = None
    commands = {"explain": explain, "explain-dir": explain_dir, "shapes": write_shapes}
    try:
        return commands[args.command](args)
    except CliError as error:
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as error:  # the library's own input errors: already clear
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
