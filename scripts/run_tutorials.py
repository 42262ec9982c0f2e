"""Execute every tutorial notebook top to bottom, offline, and fail on the first error.

    python scripts/run_tutorials.py                 # check, execute, write docs/tutorials/*.ipynb
    python scripts/run_tutorials.py --strip         # remove outputs from tutorials/*.ipynb in place

Notebooks are committed **without outputs** (this script refuses ones that have any, so the rule
is enforced in CI); executed copies, with outputs and figures, go to ``docs/tutorials/`` for the
documentation site. The environment forces the offline path: ``TOKENLRP_TUTORIAL_MODEL=dinov2-small``
(the quickstart's one parameter: the real DINOv2-S/14 of the ``[real]`` extra, which the notebook replaces
by the bundled model, saying so, where the extra is missing) and ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
EXECUTED = ROOT / "docs" / "tutorials"
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def notebooks() -> list[Path]:
    return sorted(TUTORIALS.glob("*.ipynb"))


def stripped(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    notebook.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata = {key: value for key, value in cell.metadata.items() if key == "tags"}
    return notebook


def unstripped_cells(notebook: nbformat.NotebookNode) -> list[int]:
    return [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strip", action="store_true", help="strip outputs in place and stop")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("names", nargs="*", help="run only these notebooks (file names)")
    args = parser.parse_args(argv)
    paths = [path for path in notebooks() if not args.names or path.name in args.names]
    if args.strip:
        for path in paths:
            nbformat.write(stripped(nbformat.read(path, as_version=4)), path)
        print(f"stripped {len(paths)} notebooks")
        return 0
    dirty = {path.name: unstripped_cells(nbformat.read(path, as_version=4)) for path in paths}
    dirty = {name: cells for name, cells in dirty.items() if cells}
    if dirty:
        print(f"Notebooks must be committed without outputs; found outputs in {dirty}.", file=sys.stderr)
        print("Run: python scripts/run_tutorials.py --strip", file=sys.stderr)
        return 1
    os.environ.update(TOKENLRP_TUTORIAL_MODEL="dinov2-small", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    EXECUTED.mkdir(parents=True, exist_ok=True)
    (EXECUTED / "README.md").write_text((TUTORIALS / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    timings = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        started = time.perf_counter()
        client = NotebookClient(
            notebook, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(TUTORIALS)}}
        )
        try:
            client.execute()
        except CellExecutionError as error:
            print(f"{path.name} failed:\n{error}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - started
        timings.append((path.name, seconds))
        nbformat.write(notebook, EXECUTED / path.name)
        print(f"{path.name}: executed in {seconds:.1f} s", flush=True)
    print(f"all {len(timings)} notebooks ran in {sum(s for _, s in timings):.1f} s; executed copies in {EXECUTED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
