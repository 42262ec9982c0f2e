"""How the commands write: every file atomically and marked as theirs, never over an input or a file
they did not write (:func:`refuse_foreign`)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._loading import CliError
from .._version import __version__

#: What every file the commands write is marked with (a ``.npz`` manifest's ``package``, a PNG's
#: ``Software`` text chunk, a JSON file's ``package``): only files so marked are ever replaced.
PACKAGE = "captum-tokenlrp"


#: First line of the labels file of ``tokenlrp shapes``.
SHAPES_HEADER = "file,label,class"


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
