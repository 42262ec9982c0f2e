"""What a run records so that a rerun resumes it, or refuses to mix other settings in: the manifest."""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._loading import CliError, LoadedModel, LoadedTextModel
from .._version import __version__
from ._outputs import PACKAGE, atomic_save_text, refuse_foreign

MANIFEST_NAME = "manifest.json"


class Interrupted(Exception):
    """Ctrl-C during a resumable command: the message says how far it got; the exit status is 130."""


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
