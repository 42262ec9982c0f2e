"""``tokenlrp explain-dir``: every image of a folder, batched, resumable, one or more processes (torchrun)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from .. import TokenRelevanceLRP
from .._loading import DTYPES, CliError, forward_options, keep_logits, load_model, prediction_arrays, preprocess
from ..images import load_image
from ..images._loading import IMAGE_SUFFIXES
from ._arrays import layout_arrays, relevance_arrays, relevance_by_rule
from ._manifest import Interrupted, check_manifest, manifest_json, rule_names, run_manifest
from ._outputs import atomic_save_npz, file_sha256, refuse_foreign


def find_images(root: Path, out: Path | None = None) -> list[Path]:
    """The images under ``root``, those under ``out`` left out where it lies inside ``root`` (a report's
    thumbnails are no inputs)."""
    if not root.is_dir():
        raise CliError(f"{root} is not a directory.")
    skip = out.resolve() if out is not None else None
    if skip is not None and (skip == root.resolve() or not skip.is_relative_to(root.resolve())):
        skip = None
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not (skip and p.resolve().is_relative_to(skip))
    )


def _digest(path: Path) -> str:
    """:func:`file_sha256`, or "" for a file that cannot be read (the loader reports it and skips it)."""
    try:
        return file_sha256(path)
    except OSError:
        return ""


def output_state(path: Path, manifest_text: str, digest: str) -> str:
    """``"done"``: a complete output of this very run for this very input; ``"changed"``: one of this run
    for another content of the input (it was replaced since); ``"missing"``: anything else."""
    try:
        with np.load(path) as saved:
            if "manifest" not in saved.files or str(saved["manifest"]) != manifest_text:
                return "missing"
            recorded = str(saved["input_sha256"]) if "input_sha256" in saved.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return "missing"
    return "done" if recorded == digest else "changed"


def output_path(out: Path, root: Path, image: Path) -> Path:
    """``OUT/<path relative to the input folder, extension included>.npz``: no two inputs share one."""
    relative = image.relative_to(root)
    return out / relative.with_name(relative.name + ".npz")


class ImageFolder(torch.utils.data.Dataset):
    """Reads and preprocesses one image; an unreadable one yields its error instead."""

    def __init__(self, paths: list[Path], processor) -> None:
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            pixels = preprocess(self.processor, [load_image(self.paths[index])])[0]
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
    paths = find_images(root, out)
    mine = paths[rank::world]
    loaded = load_model(args.model, args.device, args.dtype)
    forward_args = forward_options(loaded, args.interpolate_pos_encoding)
    rules = rule_names(args)
    manifest = run_manifest(loaded, args, rules)
    manifest_text = manifest_json(manifest)
    digests = {path: _digest(path) for path in mine}  # resume by content: a replaced image is redone
    states = {path: "missing" if args.overwrite else output_state(output_path(out, root, path), manifest_text,
                                                                  digests[path]) for path in mine}
    pending = [path for path in mine if states[path] != "done"]
    redone = sum(state == "changed" for state in states.values())
    skipped = len(mine) - len(pending)
    refuse_foreign([output_path(out, root, path) for path in pending], inputs=mine)
    check_manifest(out, manifest, args.overwrite)
    # Each layer's attention computed once (not by the model's kernel and again for the maps): the
    # maps are the same, the recorded prediction within float32 rounding of the model's own.
    lrp = TokenRelevanceLRP(loaded.model, rule=rules[0], attention_capture="fast")
    loader = torch.utils.data.DataLoader(
        ImageFolder(pending, loaded.processor),
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=_collate,
    )
    done, failed = 0, []
    started = time.perf_counter()
    progress = tqdm(total=len(pending), disable=args.quiet or rank != 0, desc="explain-dir", file=sys.stderr)
    try:
        for items in loader:
            good = [(index, pixels) for index, pixels, error in items if error is None]
            failed += [(pending[index], error) for index, _, error in items if error is not None]
            if good:
                pixel_values = torch.stack([pixels for _, pixels in good]).to(args.device, DTYPES[args.dtype])
                with keep_logits(loaded.model) as logits:  # a classifier's prediction, from the same forward pass
                    relevance, layout = relevance_by_rule(
                        lrp, pixel_values, rules, [args.head_fusion], args.target_token, forward_args
                    )
                for row, (index, _) in enumerate(good):
                    path = pending[index]
                    maps = relevance_arrays(rules, {rule: relevance[rule][args.head_fusion][row] for rule in rules})
                    if logits:
                        maps.update(prediction_arrays(loaded.model, logits[-1][row]))
                    atomic_save_npz(
                        output_path(out, root, path),
                        **maps,
                        **layout_arrays(layout),
                        input=np.array(path.relative_to(root).as_posix()),
                        input_sha256=np.array(digests[path]),
                        manifest=np.array(manifest_text),
                    )
                    done += 1
            progress.update(len(items))
    except KeyboardInterrupt:
        progress.close()
        where = f" on rank {rank}" if world > 1 else ""
        raise Interrupted(
            f"explain-dir: interrupted{where}, {done} done in this run ({done + skipped} of {len(mine)} images "
            "in all); rerun the same command to resume."
        ) from None
    progress.close()
    seconds = time.perf_counter() - started
    for path, error in failed:
        print(f"[rank {rank}] skipped unreadable image {path}: {error}", file=sys.stderr)
    counts = torch.tensor([done, skipped, len(failed), redone], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(counts)
        # Every rank past its last collective before any tears down: without it, rank 0 sometimes
        # aborted at exit ("terminate called without an active exception", gloo, ~1 run in 6).
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        total_done, total_skipped, total_failed, total_redone = (int(c) for c in counts)
        rate = done / seconds if seconds > 0 else 0.0
        again = (
            f"; {total_redone} of them redone: the image changed since its output was written" if total_redone else ""
        )
        print(
            f"explain-dir: {total_done} explained, {total_skipped} already done (skipped), "
            f"{total_failed} unreadable, {len(paths)} images in {root}; "
            f"{rate:.1f} images/s on rank 0 ({world} process{'es' if world > 1 else ''}){again}"
        )
    return 0
