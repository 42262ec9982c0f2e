"""An offline HTML report of an ``explain-dir`` run: ``tokenlrp report OUT``.

:func:`write_report` reads every ``.npz`` that ``tokenlrp explain-dir`` wrote under a run folder
and writes one self-contained folder (default ``OUT/report/``)::

    report/index.html    the page: inline CSS and vanilla JavaScript, no server, no network
    report/data.js       the entries, loaded by a <script> tag (works from file://)
    report/data.json     the same data, for other programs
    report/thumbs/*.png  one thumbnail per image and rule: the photo with the patch map blended on it

The page shows the run's manifest, then the images as cards (thumbnail, name, concentration score,
link to the ``.npz``), 100 per page, sortable by name or concentration and filterable by name
(and by predicted class where the ``.npz`` files record one).

Concentration score
-------------------
The share of the map's relevance held by its top 10 % of patches::

    r = |relevance of the patch tokens|      (special tokens dropped; a per-head map is averaged over heads)
    k = ceil(0.1 * number of patches)
    concentration = sum of the k largest r / sum of r

It lies in ``[k / num_patches, 1]``: about 0.1 for a uniform map, 1 when at most k patches hold
all the relevance. A map of zeros scores 0.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from ._core.geometry import TokenLayout, patch_grid

__all__ = ["PAGE_SIZE", "TOP_SHARE", "concentration_score", "patch_map", "write_report"]

#: Cards per page of the report.
PAGE_SIZE = 100
#: Fraction of the patches whose share of the relevance is the concentration score.
TOP_SHARE = 0.1
#: Marks a folder written by :func:`write_report`, so that a rerun may replace it (and nothing else).
MARKER = ".tokenlrp-report"
#: ``.npz`` keys read as the image's predicted class, first found wins (explain-dir writes ``class_name``
#: and ``predicted_class`` for a classifier).
CLASS_KEYS = ("class_name", "predicted_class", "label")
COLORMAP = "inferno"
#: Outline of the patches a thumbnail's robust colour scale clips (cyan, as the figures outline them).
CLIPPED_RGB = (0, 255, 255)
#: Runs of at least this many images print their progress to stderr (one line per tenth: logs stay short).
PROGRESS_MIN_IMAGES = 200
#: Names of the images not found under ``--images`` (or unreadable there) that the warning spells out.
NAMES_SHOWN = 5


class ReportError(Exception):
    """A problem with the run folder or the report's destination that the user can fix."""


# ------------------------------------------------------------------ scores and maps
def patch_map(relevance: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """The patch tokens' relevance on the patch grid.

    Parameters
    ----------
    relevance : np.ndarray
        ``(num_tokens,)`` or ``(num_heads, num_tokens)`` (``--head-fusion none``), in the model's token
        order (special tokens first).
    layout : TokenLayout
        The run's token layout (from the ``.npz``: ``special_tokens``, ``grid``, ``patch_size``).

    Returns
    -------
    np.ndarray
        ``(rows, cols)`` float64; a per-head map is averaged over its heads.
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    if relevance.ndim == 2:
        relevance = relevance.mean(axis=0)
    if relevance.ndim != 1:
        raise ValueError(
            f"Expected relevance of shape (num_tokens,) or (num_heads, num_tokens), got {relevance.shape}."
        )
    return patch_grid(torch.from_numpy(relevance), layout).numpy()


def concentration_score(patches: np.ndarray, top_share: float = TOP_SHARE) -> float:
    """Share of the absolute relevance held by the top ``top_share`` of the patches.

    Parameters
    ----------
    patches : np.ndarray
        ``(rows, cols)`` (or any shape): one relevance value per patch.
    top_share : float
        Fraction of the patches counted, ``0 < top_share <= 1``; ``k = ceil(top_share * num_patches)``.

    Returns
    -------
    float
        In ``[k / num_patches, 1]``; 0 for a map of zeros.
    """
    if not 0 < top_share <= 1:
        raise ValueError(f"top_share must lie in (0, 1], got {top_share}.")
    values = np.abs(np.asarray(patches, dtype=np.float64)).reshape(-1)
    total = values.sum()
    if values.size == 0 or not np.isfinite(total) or total <= 0:
        return 0.0
    k = max(1, math.ceil(top_share * values.size))
    return float(np.sort(values)[-k:].sum() / total)


def _thumbnail(patches: np.ndarray, photo, size: int):
    """A PIL image ``size`` wide: the map (nearest, colormapped) blended on ``photo`` (a PIL image) if given.

    The colours run from 0 to the robust top of :func:`~captum_tokenlrp.visualization.colour_scale` (the
    maximum, but at most ``CLIP_HEADROOM`` x the 99th percentile of the patches): one sink patch does not
    leave the rest of the thumbnail dark. The patches above it are drawn in the top colour and outlined in
    :data:`CLIPPED_RGB`, as the figures outline them.
    """
    from matplotlib import colormaps
    from PIL import Image

    from .visualization import colour_scale

    width, height = _thumbnail_shape(patches.shape, size)
    values = np.abs(patches)
    scale = colour_scale([values])
    peak = scale.high
    normalised = np.clip(values / peak, 0.0, 1.0) if peak > 0 and np.isfinite(peak) else np.zeros_like(values)
    colours = (colormaps[COLORMAP](normalised)[..., :3] * 255).astype(np.uint8)
    overlay = Image.fromarray(colours).resize((width, height), Image.Resampling.NEAREST)
    if photo is not None:
        overlay = Image.blend(photo.resize((width, height), Image.Resampling.BILINEAR), overlay, 0.5)
    clipped = np.isfinite(values) & (values > peak)
    if clipped.any():
        cells = Image.fromarray(clipped.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
        inside = np.asarray(cells) > 0
        padded = np.pad(inside, 1, constant_values=False)
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        pixels = np.asarray(overlay).copy()
        pixels[inside & ~interior] = CLIPPED_RGB
        overlay = Image.fromarray(pixels)
    return overlay


def _thumbnail_shape(grid: Sequence[int], size: int) -> tuple[int, int]:
    """(width, height) of a thumbnail ``size`` wide with the patch grid's aspect."""
    rows, cols = grid
    return size, max(1, round(size * rows / cols))


def _photo(image_path: Path | None):
    """The image explain-dir read, as RGB, or None where it is missing or unreadable."""
    if image_path is None or not image_path.is_file():
        return None
    from .images import load_image

    try:
        return load_image(image_path).convert("RGB")
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------ reading the run
@dataclass
class _Run:
    manifest: dict
    rules: list[str]
    entries: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    #: Inputs under ``--images`` that have no ``.npz``: {"name", "reason"} (unreadable, or not explained yet).
    without_map: list[dict] = field(default_factory=list)


def _relevance_key(rule: str, files: Sequence[str]) -> str | None:
    if f"relevance_{rule}" in files:
        return f"relevance_{rule}"
    return "relevance" if "relevance" in files else None


def _read_manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a directory: give the --out folder of a 'tokenlrp explain-dir' run.")
    if not path.is_file():
        raise ReportError(
            f"{run_dir} has no manifest.json, so it is not the output folder of 'tokenlrp explain-dir' "
            "(give the folder passed to explain-dir as --out)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"{path} is unreadable ({error}).") from None
    if not isinstance(manifest, dict):
        raise ReportError(f"{path} does not hold a manifest (a JSON object).")
    return manifest


def _scan(run_dir: Path, report_dir: Path) -> _Run:
    manifest = _read_manifest(run_dir)
    rules = [str(rule) for rule in manifest.get("rules") or []] or ["relevance"]
    run = _Run(manifest, rules)
    report_dir = report_dir.resolve()
    paths = sorted(
        p
        for p in run_dir.rglob("*.npz")
        if not p.name.startswith(".tmp-") and report_dir not in p.resolve().parents and p.is_file()
    )
    for path in paths:
        name = path.relative_to(run_dir).as_posix()
        try:
            with np.load(path) as saved:
                files = saved.files
                recorded = json.loads(str(saved["manifest"])) if "manifest" in files else None
                if recorded != manifest:
                    why = "no manifest" if recorded is None else "its manifest differs from the folder's manifest.json"
                    run.skipped.append({"name": name, "reason": why})
                    continue
                layout = TokenLayout(
                    special_token_names=tuple(str(name) for name in saved["special_tokens"]),
                    grid=tuple(int(n) for n in saved["grid"]),
                    patch_size=tuple(int(n) for n in np.broadcast_to(saved["patch_size"], (2,))),
                )
                maps, scores = {}, {}
                for rule in rules:
                    key = _relevance_key(rule, files)
                    if key is None:
                        raise ValueError(f"no relevance for rule {rule!r}")
                    maps[rule] = patch_map(saved[key], layout)
                    scores[rule] = round(concentration_score(maps[rule]), 6)
                predicted = next((str(saved[key]) for key in CLASS_KEYS if key in files), None)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            run.skipped.append({"name": name, "reason": f"unreadable ({type(error).__name__}: {error})"})
            continue
        run.entries.append(
            {"name": name[: -len(".npz")], "npz": path, "maps": maps, "concentration": scores, "class": predicted}
        )
    return run


def _inputs_without_map(run: _Run, run_dir: Path, images: Path, report_dir: Path) -> list[dict]:
    """The images under ``images`` that the run has no map of, each with the likely reason.

    explain-dir writes ``OUT/<relative path>.npz`` for every image it read and reports the unreadable ones on
    stderr only; the report reads them again to tell which is which.
    """
    from .images import load_image
    from .images._loading import IMAGE_SUFFIXES

    known = {entry["name"] for entry in run.entries} | {item["name"][: -len(".npz")] for item in run.skipped}
    report_dir, run_dir = report_dir.resolve(), run_dir.resolve()
    found = []
    for path in sorted(images.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        resolved = path.resolve()
        if resolved == report_dir or report_dir in resolved.parents:  # the report's own thumbnails
            continue
        if run_dir in resolved.parents:  # the run's figures (when the run was written into the images folder)
            continue
        name = path.relative_to(images).as_posix()
        if name in known:
            continue
        try:
            load_image(path)
        except Exception as error:  # any decoding failure: why explain-dir skipped it
            reason = f"unreadable ({type(error).__name__}: {error})"
        else:
            reason = "not explained (added after the run, or the run did not finish: rerun explain-dir to resume)"
        found.append({"name": name, "reason": reason})
    return found


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _progress(done: int, total: int) -> None:
    """One stderr line per tenth of a large run (works in logs as in a terminal)."""
    if total < PROGRESS_MIN_IMAGES:
        return
    if done == total or done * 10 // total != (done - 1) * 10 // total:
        print(f"tokenlrp report: {done}/{total} images", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ writing
def _prepare_destination(out: Path) -> Path:
    """A fresh temporary folder beside ``out``; ``out`` itself must be absent, empty or an earlier report."""
    if out.exists():
        if not out.is_dir():
            raise ReportError(f"{out} exists and is not a folder; choose another report folder.")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise ReportError(
                f"{out} exists, is not empty and was not written by 'tokenlrp report'; choose another report folder."
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-report-", dir=out.parent))


def _url(path: str) -> str:
    return quote(path.replace(os.sep, "/"), safe="/")


def write_report(
    run_dir: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    thumbnail_size: int = 128,
) -> Path:
    """Write an offline HTML report of a ``tokenlrp explain-dir`` run.

    Parameters
    ----------
    run_dir : path
        The ``--out`` folder of ``explain-dir``: ``manifest.json`` and ``<relative image path>.npz`` files,
        each holding ``relevance`` / ``relevance_<rule>`` of shape ``(num_tokens,)`` or
        ``(num_heads, num_tokens)``, ``grid`` ``(2,)``, ``special_tokens`` and ``manifest``.
    images_dir : path, optional
        The folder explain-dir read; ``<images_dir>/<relative path>`` is drawn under the map. Without it
        (or where an image is missing or unreadable) the thumbnail shows the map alone: the page says so,
        and stderr names the images not found. Its images that have no map in the run (unreadable, or
        not explained yet) are listed on the page.
    out : path, optional
        The report folder (default ``run_dir/report``). It is replaced on every call; a non-empty
        folder that no earlier report wrote is refused.
    thumbnail_size : int
        Thumbnail width in pixels (height follows the patch grid's aspect).

    Returns
    -------
    Path
        ``out / "index.html"``.

    Raises
    ------
    ReportError
        ``run_dir`` has no ``manifest.json`` (it is no explain-dir output), ``images_dir`` holds none of
        the run's images, or ``out`` is unusable.

    Notes
    -----
    ``.npz`` files whose recorded manifest differs from ``manifest.json`` (or that are unreadable)
    are left out of the cards and listed as skipped on the page and in ``data.json``. Runs of at least
    :data:`PROGRESS_MIN_IMAGES` images print their progress to stderr.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    if thumbnail_size < 8:
        raise ReportError(f"thumbnail_size must be at least 8 pixels, got {thumbnail_size}.")
    images = Path(images_dir) if images_dir is not None else None
    if images is not None and not images.is_dir():
        raise ReportError(f"--images {images} is not a folder (give the folder explain-dir read).")
    run = _scan(run_dir, out)
    if images is not None:
        absent = [entry["name"] for entry in run.entries if not (images / entry["name"]).is_file()]
        if run.entries and len(absent) == len(run.entries):  # decided before anything is written
            raise ReportError(
                f"--images {images} holds none of the run's {len(run.entries)} images (looked for "
                f"{_names([str(images / name) for name in absent])}); give the folder explain-dir read."
            )
        run.without_map = _inputs_without_map(run, run_dir, images, out)
    staging = _prepare_destination(out)
    try:
        (staging / "thumbs").mkdir()
        (staging / MARKER).write_text("written by tokenlrp report; replaced on every run\n", encoding="utf-8")
        items = []
        for index, entry in enumerate(run.entries):
            photo = _photo(images / entry["name"]) if images is not None else None  # one at a time in memory
            thumbs = {}
            for number, rule in enumerate(run.rules):
                thumb = f"thumbs/{index:06d}_{number}.png"
                _thumbnail(entry["maps"][rule], photo, thumbnail_size).save(staging / thumb, compress_level=1)
                thumbs[rule] = thumb
            items.append(
                {
                    "name": entry["name"],
                    "npz": _url(os.path.relpath(entry["npz"].resolve(), out.resolve())),
                    "thumbs": thumbs,
                    "concentration": entry["concentration"],
                    "class": entry["class"],
                    "has_image": photo is not None,
                }
            )
            _progress(index + 1, len(run.entries))
        not_found = [item["name"] for item in items if images is not None and not item["has_image"]]
        if not_found:
            print(
                f"tokenlrp report: warning: {len(not_found)} of the run's {len(items)} images are not under "
                f"{images} (or unreadable there), so their thumbnails show the map alone: {_names(not_found)}.",
                file=sys.stderr,
            )
        data = {
            "manifest": run.manifest,
            "rules": run.rules,
            "page_size": PAGE_SIZE,
            "top_share": TOP_SHARE,
            "images": items,
            "skipped": run.skipped,
            "images_dir": None if images is None else str(images),
            "images_not_found": not_found,
            "inputs_without_map": run.without_map,
        }
        text = json.dumps(data, sort_keys=True)
        (staging / "data.json").write_text(text, encoding="utf-8")
        (staging / "data.js").write_text(f"window.REPORT_DATA = {text};\n", encoding="utf-8")
        (staging / "index.html").write_text(_page(run, items, images), encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _json_text(value: object) -> str:
    """A manifest value as the manifest.json spells it (``null``, ``false``, numbers); strings and lists of
    strings without quotes, so that the table reads as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value) if value else "[]"
    return json.dumps(value, sort_keys=True)


def _manifest_rows(manifest: Mapping) -> str:
    shown = ["model", "model_class", "rules", "head_fusion", "target_token", "dtype", "version"]
    shown += sorted(key for key in manifest if key not in shown)
    rows = []
    for key in shown:
        if key not in manifest:
            continue
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(_json_text(manifest[key]))}</td></tr>")
    return "\n".join(rows)


def _manifest_summary(manifest: Mapping) -> str:
    """The run in one line (the folded manifest's summary): model, rules, head fusion."""
    parts = [f"model {_json_text(manifest.get('model', '?'))}"]
    if "rules" in manifest:
        parts.append(f"rules {_json_text(manifest['rules'])}")
    if "head_fusion" in manifest:
        parts.append(f"head fusion {_json_text(manifest['head_fusion'])}")
    return "Run settings (manifest.json): " + "; ".join(parts)


def _listing(element_id: str, title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A folded list of (name, reason) under ``title``; nothing when there are no rows."""
    if not rows:
        return ""
    items = "".join(f"<li>{html.escape(name)}: {html.escape(reason)}</li>" for name, reason in rows)
    summary = f"<summary>{html.escape(title)}</summary>"
    return f'<details id="{element_id}" class="notice">{summary}<ul>{items}</ul></details>'


def _page(run: _Run, items: Sequence[Mapping], images: Path | None) -> str:
    manifest = run.manifest
    notices = [
        _listing(
            "skipped",
            f"{len(run.skipped)} file(s) skipped",
            [(item["name"], item["reason"]) for item in run.skipped],
        )
    ]
    if images is None:
        notices.append(
            '<p id="no-images" class="notice">No --images folder was given: the thumbnails show the maps alone '
            "(rerun <code>tokenlrp report OUT --images FOLDER</code> with the folder explain-dir read).</p>"
        )
    else:
        not_found = [item["name"] for item in items if not item["has_image"]]
        notices.append(
            _listing(
                "images-not-found",
                f"Warning: {len(not_found)} of {len(items)} image(s) not found (or unreadable) under {images}: "
                "their thumbnails show the map alone",
                [(name, "no photo") for name in not_found],
            )
        )
        notices.append(
            _listing(
                "inputs-without-map",
                f"{len(run.without_map)} input(s) without a map under {images}",
                [(item["name"], item["reason"]) for item in run.without_map],
            )
        )
    from .visualization import CLIP_HEADROOM, CLIP_PERCENTILE  # the thumbnails' colour scale, stated on the page

    title = f"tokenlrp report: {_json_text(manifest.get('model', '?'))}"
    return (
        _TEMPLATE.replace("%%TITLE%%", html.escape(title))
        .replace("%%MANIFEST_SUMMARY%%", html.escape(_manifest_summary(manifest)))
        .replace("%%MANIFEST%%", _manifest_rows(manifest))
        .replace("%%COUNT%%", str(len(items)))
        .replace("%%SKIPPED%%", "\n".join(notice for notice in notices if notice))
        .replace("%%TOP%%", f"{round(TOP_SHARE * 100)}")
        .replace("%%HEADROOM%%", f"{CLIP_HEADROOM:g}")
        .replace("%%PERCENTILE%%", f"{CLIP_PERCENTILE:g}")
    )


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>%%TITLE%%</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
table.manifest { border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }
table.manifest th { text-align: left; padding: 2px 1em 2px 0; color: #555; font-weight: 600; }
table.manifest td { font-family: monospace; word-break: break-all; }
#controls { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: center; margin: 1em 0;
            position: sticky; top: 0; background: #fff; padding: 0.5em 0; border-bottom: 1px solid #ddd; }
#cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: 6px; font-size: 0.8em; background: #fafafa; }
.card img { width: 100%; height: auto; image-rendering: pixelated; display: block; background: #000; }
.card .name { word-break: break-all; margin: 4px 0 2px; }
.card .score { color: #555; }
.hidden { display: none !important; }
.notice { margin: 0.4em 0; }
#images-not-found summary, #inputs-without-map summary { color: #a15c00; }
#no-match { grid-column: 1 / -1; color: #555; padding: 1em 0; }
details summary { cursor: pointer; }
</style>
</head>
<body>
<h1>%%TITLE%%</h1>
<details id="manifest-details"><summary>%%MANIFEST_SUMMARY%%</summary>
<table class="manifest" id="manifest">
%%MANIFEST%%
</table>
</details>
<p>%%COUNT%% image(s). Concentration: the share of the map's absolute relevance held by its top %%TOP%% %
of patches (about 0.1 for a uniform map, 1 when a few patches hold everything).
Colour scale: one per thumbnail, from 0 to the map's largest |relevance|, but at most %%HEADROOM%% x its
%%PERCENTILE%%th-percentile patch, so that one outlying patch (an attention sink's) does not leave the rest dark;
the patches above it are drawn in the top colour and outlined in cyan.</p>
%%SKIPPED%%
<div id="controls">
  <label>Name <input id="filter" type="search" placeholder="filter by file name"></label>
  <label id="class-control" class="hidden">Class
    <select id="class-filter"><option value="">all</option></select></label>
  <label id="rule-control" class="hidden">Rule <select id="rule"></select></label>
  <label>Sort <select id="sort">
    <option value="name-asc">name (A-Z)</option>
    <option value="name-desc">name (Z-A)</option>
    <option value="conc-desc">concentration (high first)</option>
    <option value="conc-asc">concentration (low first)</option>
  </select></label>
  <button id="prev" type="button">&laquo; prev</button>
  <span id="page-info"></span>
  <button id="next" type="button">next &raquo;</button>
</div>
<div id="cards"></div>
<noscript>This report needs JavaScript to list the images.</noscript>
<script src="data.js"></script>
<script>
(function () {
  "use strict";
  var data = window.REPORT_DATA;
  var all = data.images, pageSize = data.page_size, page = 0, shown = all;
  var $ = function (id) { return document.getElementById(id); };
  var rule = data.rules[0];
  data.rules.forEach(function (r) {
    var option = document.createElement("option"); option.value = r; option.textContent = r;
    $("rule").appendChild(option);
  });
  if (data.rules.length > 1) { $("rule-control").classList.remove("hidden"); }
  var classes = {};
  all.forEach(function (item) { if (item["class"] !== null) { classes[item["class"]] = true; } });
  var classNames = Object.keys(classes).sort();
  classNames.forEach(function (c) {
    var option = document.createElement("option"); option.value = c; option.textContent = c;
    $("class-filter").appendChild(option);
  });
  if (classNames.length > 0) { $("class-control").classList.remove("hidden"); }

  function compare(order) {
    var byName = function (a, b) { return a.name < b.name ? -1 : (a.name > b.name ? 1 : 0); };
    if (order === "name-asc") { return byName; }
    if (order === "name-desc") { return function (a, b) { return byName(b, a); }; }
    var sign = order === "conc-desc" ? -1 : 1;
    return function (a, b) {
      var d = a.concentration[rule] - b.concentration[rule];
      return d !== 0 ? sign * d : byName(a, b);
    };
  }
  function update(resetPage) {
    var text = $("filter").value.trim().toLowerCase(), cls = $("class-filter").value;
    shown = all.filter(function (item) {
      return (!text || item.name.toLowerCase().indexOf(text) >= 0) && (!cls || item["class"] === cls);
    });
    shown.sort(compare($("sort").value));
    if (resetPage) { page = 0; }
    render();
  }
  function card(item) {
    var div = document.createElement("div"); div.className = "card";
    div.setAttribute("data-name", item.name);
    div.setAttribute("data-concentration", String(item.concentration[rule]));
    var link = document.createElement("a"); link.href = item.npz; link.className = "npz";
    link.title = "relevance (.npz)";
    var img = document.createElement("img");
    img.loading = "lazy"; img.src = item.thumbs[rule]; img.alt = item.name; img.width = 128;
    link.appendChild(img); div.appendChild(link);
    var name = document.createElement("div"); name.className = "name"; name.textContent = item.name;
    div.appendChild(name);
    var score = document.createElement("div"); score.className = "score";
    score.textContent = "concentration " + item.concentration[rule].toFixed(3) +
      (item["class"] !== null ? " \\u00b7 " + item["class"] : "");
    div.appendChild(score);
    return div;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    var fragment = document.createDocumentFragment();
    shown.slice(page * pageSize, (page + 1) * pageSize).forEach(function (item) { fragment.appendChild(card(item)); });
    var cards = $("cards"); cards.textContent = ""; cards.appendChild(fragment);
    if (shown.length === 0) {
      var none = document.createElement("p"); none.id = "no-match";
      var text = $("filter").value.trim(), cls = $("class-filter").value;
      none.textContent = all.length === 0 ? "The run has no images to show." :
        "No image name contains \\"" + text + "\\"" + (cls ? " in class " + cls : "") +
        ": clear the filter to see all " + all.length + ".";
      if (!text && cls) { none.textContent = "No image of class " + cls + "."; }
      cards.appendChild(none);
    }
    $("page-info").textContent = "page " + (page + 1) + " / " + pages + " (" + shown.length + " of " + all.length + ")";
    $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
    document.body.setAttribute("data-rendered", String(Date.now()));
  }
  $("filter").addEventListener("input", function () { update(true); });
  $("class-filter").addEventListener("change", function () { update(true); });
  $("sort").addEventListener("change", function () { update(true); });
  $("rule").addEventListener("change", function () { rule = $("rule").value; update(false); });
  $("prev").addEventListener("click", function () { page -= 1; render(); window.scrollTo(0, 0); });
  $("next").addEventListener("click", function () { page += 1; render(); window.scrollTo(0, 0); });
  update(true);
})();
</script>
</body>
</html>
"""
