"""Synthetic shapes on cluttered backgrounds, with per-pixel masks of the object.

Each RGB image holds one foreground object from :data:`SHAPE_CLASSES` with random size,
position, rotation and colour, on a background made of a colour gradient, an oriented
texture, pixel noise and elongated distractor blobs. The class cannot be read from global
colour statistics (colours are drawn independently of the class); it is in the object's
outline. Every image is a pure function of ``(seed, index)``, so any subset can be
regenerated exactly, and held-out sets use seeds disjoint from training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPE_CLASSES = ("disc", "crescent", "triangle", "ring", "cross", "star")

#: ImageNet statistics (the bundled model's image processor uses them too).
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _object_mask(label: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Inside test of shape ``label`` in rotated, centred coordinates (``v`` pointing up)."""
    rho = np.hypot(u, v)
    if label == 0:
        return rho <= radius
    if label == 1:
        # A disc less an offset disc: open on one side, unlike the ring.
        return (rho <= radius) & (np.hypot(u - 0.4 * radius, v) > 0.85 * radius)
    if label == 2:
        r = 1.1 * radius
        return (v >= -0.5 * r) & (np.sqrt(3) * u + v <= r) & (-np.sqrt(3) * u + v <= r)
    if label == 3:
        return (rho <= radius) & (rho >= 0.55 * radius)
    if label == 4:
        arm = 0.32 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    theta = np.arctan2(v, u)
    return rho <= radius * (0.55 + 0.45 * np.cos(5 * theta))


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, clutter: float) -> np.ndarray:
    """The cluttered background, float64 `(size, size, 3)` (not yet clipped to [0, 1]).

    ``xs``, ``ys`` are the pixel grid, `(size, size)`. Every random draw happens whatever
    ``clutter`` is, so what is drawn after the background does not depend on it.
    """
    size = xs.shape[0]
    # A gradient between two random colours in a random direction ...
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xs * np.cos(angle) + ys * np.sin(angle)) / size + 1) / 2
    low, high = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    image = low + clutter * (high - low) * ramp[..., None]
    # ... an oriented texture ...
    frequency, orientation = rng.uniform(0.15, 0.6), rng.uniform(0, np.pi)
    stripes = np.sin(frequency * (xs * np.cos(orientation) + ys * np.sin(orientation)) + rng.uniform(0, 6.3))
    image = image + clutter * rng.uniform(0.05, 0.15) * stripes[..., None] * rng.uniform(-1, 1, 3)
    # ... and elongated distractor blobs (never one of the classes' outlines).
    blobs = rng.integers(2, 6)
    for blob_index in range(blobs):
        cx, cy = rng.uniform(0, size, 2)
        a, b = rng.uniform(2, 7), rng.uniform(0.2, 0.5)
        phi = rng.uniform(0, np.pi)
        du, dv = xs - cx, ys - cy
        pu, pv = du * np.cos(phi) + dv * np.sin(phi), -du * np.sin(phi) + dv * np.cos(phi)
        blob = (pu / a) ** 2 + (pv / (a * b)) ** 2 <= 1
        blob_colour = rng.uniform(0, 1, 3)
        if blob_index < round(blobs * clutter):
            image[blob] = blob_colour
    return image


def _placed_mask(
    label: int, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, radius: float, rotation: float
) -> np.ndarray:
    """Pixels of shape ``label`` centred at ``(cx, cy)``, turned by ``rotation``: bool `(size, size)`."""
    du, dv = xs - cx, cy - ys
    u = du * np.cos(rotation) + dv * np.sin(rotation)
    v = -du * np.sin(rotation) + dv * np.cos(rotation)
    return _object_mask(label, u, v, radius)


def _length(vector: np.ndarray) -> float:
    """Euclidean length of a colour vector, the same on every machine.

    ``np.linalg.norm`` goes through BLAS, whose kernels (chosen per processor, ``OPENBLAS_CORETYPE``) sum
    and round differently (fused multiply-adds, lane order): a last-bit difference can flip which of two
    colours is painted, so the data stream the bundled models were trained on depended on the host (a Haswell
    kernel gave another seed-3 stream). Plain float arithmetic in one fixed order is IEEE-exact everywhere;
    this order, ``(x^2 + z^2) + y^2``, is OpenBLAS's generic two-lane kernel's, and gives the recorded streams.
    """
    x, y, z = vector.tolist()
    return math.sqrt((x * x + z * z) + y * y)


def _paint_contrasting(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Paint ``mask`` of ``image`` (in place) in one colour that stands out from what is under it."""
    under = image[mask].mean(axis=0) if mask.any() else image.mean(axis=(0, 1))
    direction = rng.normal(size=3)
    step = rng.uniform(0.35, 0.6) * direction / _length(direction)
    # Clipping to [0, 1] can eat the step (a light object on a light background); of the
    # two opposite steps, take the one that keeps more of it.
    candidates = np.clip(under + step, 0, 1), np.clip(under - step, 0, 1)
    colour = max(candidates, key=lambda candidate: _length(candidate - under))
    image[mask] = colour


def _finish(rng: np.random.Generator, image: np.ndarray, clutter: float) -> np.ndarray:
    """Pixel noise, then clip: float32 `(size, size, 3)` in [0, 1]."""
    image = image + clutter * rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _render(rng: np.random.Generator, label: int, size: int, clutter: float) -> tuple[np.ndarray, np.ndarray]:
    # The draw order (background, radius, centre, rotation, colour, noise) is the published
    # stream's: changing it would change every image (the bundled model was trained on them).
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, xs, ys, clutter)
    radius = rng.uniform(0.2, 0.32) * size
    cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
    rotation = rng.uniform(0, 2 * np.pi)
    mask = _placed_mask(label, xs, ys, cx, cy, radius, rotation)
    _paint_contrasting(rng, image, mask)
    return _finish(rng, image, clutter), mask


def generate_shapes(
    count: int, seed: int, size: int = 64, start: int = 0, clutter: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, masks and labels of samples ``start .. start + count - 1`` of the stream ``seed``.

    Parameters
    ----------
    count, seed, size, start
        How many samples, which stream, the side in pixels, the first sample's index.
    clutter
        In ``[0, 1]``: scales the background's gradient, texture, noise and the share of
        distractor blobs drawn. ``1`` (the default) is the dataset; lower values give the
        same objects on plainer backgrounds (a training curriculum uses them).

    Returns
    -------
    images : ndarray
        float32 in [0, 1], `(count, size, size, 3)`.
    masks : ndarray
        bool, `(count, size, size)`: the object's pixels.
    labels : ndarray
        int64, `(count,)`: index into :data:`SHAPE_CLASSES`; classes cycle, so every
        block of 6 consecutive samples holds each class once.
    """
    if not 0.0 <= clutter <= 1.0:
        raise ValueError(f"clutter must be in [0, 1], got {clutter}")
    images = np.empty((count, size, size, 3), dtype=np.float32)
    masks = np.empty((count, size, size), dtype=bool)
    labels = (np.arange(start, start + count) % len(SHAPE_CLASSES)).astype(np.int64)
    for offset, index in enumerate(range(start, start + count)):
        rng = np.random.default_rng([seed, index])
        images[offset], masks[offset] = _render(rng, int(labels[offset]), size, clutter)
    return images, masks, labels


def normalize(images: np.ndarray) -> torch.Tensor:
    """`(count, H, W, 3)` images in [0, 1] -> normalised `(count, 3, H, W)` pixel values."""
    return torch.from_numpy((images - MEAN) / STD).permute(0, 3, 1, 2).contiguous()


class ShapesDataset(Dataset):
    """The shapes stream ``seed`` as a map-style dataset of ``(pixel_values, label, mask)``.

    ``pixel_values`` are normalised like the bundled model expects, `(3, size, size)`.
    """

    def __init__(self, count: int, seed: int, size: int = 64) -> None:
        self.count, self.seed, self.size = count, seed, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} samples")
        images, masks, labels = generate_shapes(1, self.seed, self.size, start=index)
        return normalize(images)[0], int(labels[0]), torch.from_numpy(masks[0])
