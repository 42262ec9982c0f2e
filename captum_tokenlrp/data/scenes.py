"""Multi-object scenes: 2 to 4 shapes of distinct classes on a cluttered background.

The multi-label counterpart of :mod:`captum_tokenlrp.data.shapes`: the same background
(gradient, oriented texture, distractor blobs, pixel noise), the same outlines and the same
contrasting colours, but several objects per image, each of a different class of
:data:`~captum_tokenlrp.data.shapes.SHAPE_CLASSES`, with one mask per class. Objects never
overlap and keep a gap between them, so the masks are disjoint and two objects rarely share
a patch of 8 pixels. Every scene is a pure function of ``(seed, index)``; held-out sets use
seeds disjoint from training.

:func:`average_precision` and :func:`mean_average_precision` score multi-label predictions
(numpy only, so neither the training script nor a benchmark needs scikit-learn).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .shapes import SHAPE_CLASSES, _background, _finish, _paint_contrasting, _placed_mask, normalize

#: Object radius as a share of the image side (10 to 16 px at 96 px).
RADIUS_RANGE = (10 / 96, 16 / 96)
#: The triangle reaches 1.1 radii from its centre, the other outlines 1 radius: objects are
#: placed by this bounding circle, so no two can touch whatever their rotation.
_EXTENT = 1.1
#: Free pixels between two objects' bounding circles, as a share of the side (4 px at 96 px).
_GAP = 4 / 96
#: Tries to place one object before the scene is laid out again with smaller objects, and
#: how many layouts are tried: a bound, so generation always ends (and deterministically).
_TRIES_PER_OBJECT = 100
_LAYOUTS = 20
_SHRINK = 0.9


def _layout(rng: np.random.Generator, count: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radii, centres and rotations of ``count`` non-overlapping objects: `(n,)`, `(n, 2)`, `(n,)`.

    Rejection sampling: each object's centre is drawn until its bounding circle (plus the gap)
    clears those already placed; if one cannot be placed, every radius shrinks and the layout
    starts over.
    """
    radii = rng.uniform(*RADIUS_RANGE, count) * size
    rotations = rng.uniform(0, 2 * np.pi, count)
    gap = _GAP * size
    for _ in range(_LAYOUTS):
        centres: list[np.ndarray] = []
        for radius in radii:
            reach = _EXTENT * radius
            for _ in range(_TRIES_PER_OBJECT):
                centre = rng.uniform(reach + 1, size - reach - 1, 2)
                if all(
                    np.hypot(*(centre - other)) >= reach + _EXTENT * other_radius + gap
                    for other, other_radius in zip(centres, radii, strict=False)
                ):
                    centres.append(centre)
                    break
            else:
                break
        if len(centres) == count:
            return radii, np.array(centres), rotations
        radii = radii * _SHRINK
    raise RuntimeError(f"could not place {count} objects in {size} px after {_LAYOUTS} layouts")


def _render_scene(
    rng: np.random.Generator, size: int, clutter: float, min_objects: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    # Every random draw happens whatever ``clutter`` is, so the objects of scene ``index``
    # (classes, sizes, places, colours) do not depend on it.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, xs, ys, clutter)
    count = int(rng.integers(min_objects, max_objects + 1))
    classes = rng.choice(len(SHAPE_CLASSES), size=count, replace=False)
    radii, centres, rotations = _layout(rng, count, size)
    masks = np.zeros((len(SHAPE_CLASSES), size, size), dtype=bool)
    for label, radius, (cx, cy), rotation in zip(classes, radii, centres, rotations, strict=True):
        mask = _placed_mask(int(label), xs, ys, cx, cy, radius, rotation)
        _paint_contrasting(rng, image, mask)
        masks[label] = mask
    return _finish(rng, image, clutter), masks


def generate_scenes(
    count: int,
    seed: int,
    size: int = 96,
    start: int = 0,
    clutter: float = 1.0,
    min_objects: int = 2,
    max_objects: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, per-class masks and multi-hot labels of scenes ``start .. start + count - 1`` of stream ``seed``.

    Parameters
    ----------
    count, seed, size, start
        How many scenes, which stream, the side in pixels (at least 32), the first scene's index.
    clutter
        In ``[0, 1]``: scales the background's gradient, texture, noise and the share of
        distractor blobs drawn, as in :func:`~captum_tokenlrp.data.generate_shapes`; the
        objects of a scene are the same at every clutter.
    min_objects, max_objects
        Bounds of the number of objects per scene (drawn uniformly per scene), each of a
        distinct class: ``1 <= min_objects <= max_objects <= 4``.

    Returns
    -------
    images : ndarray
        float32 in [0, 1], `(count, size, size, 3)`.
    masks : ndarray
        bool, `(count, num_classes, size, size)`: the pixels of the object of each class of
        :data:`SHAPE_CLASSES`, all ``False`` where the class is absent; disjoint.
    labels : ndarray
        float32 multi-hot, `(count, num_classes)`: ``masks.any(axis=(2, 3))``.

    Raises
    ------
    ValueError
        If an argument is out of its range (the message says which and what was expected).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels (room for 4 separated objects), got {size}")
    if not 0.0 <= clutter <= 1.0:
        raise ValueError(f"clutter must be in [0, 1], got {clutter}")
    # More than 4 separated objects of 10-16 px radius do not reliably fit in 96 px.
    if not 1 <= min_objects <= max_objects <= 4:
        raise ValueError(
            f"expected 1 <= min_objects <= max_objects <= 4, got min_objects={min_objects}, max_objects={max_objects}"
        )
    num_classes = len(SHAPE_CLASSES)
    images = np.empty((count, size, size, 3), dtype=np.float32)
    masks = np.empty((count, num_classes, size, size), dtype=bool)
    for offset, index in enumerate(range(start, start + count)):
        rng = np.random.default_rng([seed, index])
        images[offset], masks[offset] = _render_scene(rng, size, clutter, min_objects, max_objects)
    labels = masks.any(axis=(2, 3)).astype(np.float32)
    return images, masks, labels


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class: the mean, over its positives, of the precision at their rank.

    ``scores`` `(n,)` (higher means more likely present) and ``targets`` `(n,)` (0/1). Tied
    scores are ranked pessimistically (negatives first), so a constant score does not look good.
    Returns ``nan`` if there is no positive.
    """
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.ndim != 1:
        raise ValueError(f"expected scores and targets of the same shape (n,), got {scores.shape} and {targets.shape}")
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    # Descending score; among equal scores, negatives first (lexsort: last key is primary).
    order = np.lexsort((targets, -scores))
    hits = targets[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / positives)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean over classes of :func:`average_precision`, and the per-class values.

    ``scores`` and ``targets`` `(n, num_classes)`; returns ``(mAP, per_class)`` with
    ``per_class`` `(num_classes,)` (classes without a positive are ``nan`` and left out of the mean).
    """
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            f"expected scores and targets of the same shape (n, num_classes), got {scores.shape} and {targets.shape}"
        )
    per_class = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    return float(np.nanmean(per_class)), per_class


class ScenesDataset(Dataset):
    """The scenes stream ``seed`` as a map-style dataset of ``(pixel_values, labels, masks)``.

    ``pixel_values`` `(3, size, size)` normalised as :func:`~captum_tokenlrp.data.shapes.normalize`
    does, ``labels`` float32 multi-hot `(num_classes,)`, ``masks`` bool `(num_classes, size, size)`.
    """

    def __init__(self, count: int, seed: int, size: int = 96) -> None:
        self.count, self.seed, self.size = count, seed, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} samples")
        images, masks, labels = generate_scenes(1, self.seed, self.size, start=index)
        return normalize(images)[0], torch.from_numpy(labels[0]), torch.from_numpy(masks[0])
