"""``tokenlrp explain-text`` and ``explain-text-dir``: one text's heat-strips, or every line of a file."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import TextTokenRelevanceLRP
from .._adapters.text import text_adapter_for
from .._loading import (
    CliError,
    LoadedTextModel,
    encode_texts,
    keep_logits,
    load_text_model,
    prediction,
    prediction_arrays,
)
from ..visualization import plot_text_relevance
from ._arrays import fused_for_display, relevance_arrays
from ._manifest import Interrupted, _is_output_of, check_manifest, manifest_json, model_identity, rule_names, rule_set
from ._outputs import (
    PACKAGE,
    atomic_save_npz,
    atomic_save_text,
    atomic_write_files,
    figure_bytes,
    npz_bytes,
    refuse_foreign,
)

TEXT_SUMMARY_NAME = "summary.json"


#: Named starts of the text commands (``--start``); an integer is a token position.
TEXT_STARTS = ("default", "first", "last", "mean")


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
    fused = {f"rule ({rule})": fused_for_display(fused_maps[rule]) for rule in rules}
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
    return {rule: str(tokens[int(np.argmax(fused_for_display(values)))]) for rule, values in maps.items()}


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
