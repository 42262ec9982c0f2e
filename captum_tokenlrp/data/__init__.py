"""Data: deterministic synthetic shapes and multi-object scenes with per-pixel ground-truth masks, and real
photos from installed packages with hand-drawn object masks (:mod:`.photos`, the ``[photos]`` extra)."""

from .photos import Photo, load_photos, photo_names
from .scenes import ScenesDataset, average_precision, generate_scenes, mean_average_precision
from .shapes import SHAPE_CLASSES, ShapesDataset, generate_shapes

__all__ = [
    "SHAPE_CLASSES",
    "Photo",
    "ScenesDataset",
    "ShapesDataset",
    "average_precision",
    "generate_scenes",
    "generate_shapes",
    "load_photos",
    "mean_average_precision",
    "photo_names",
]
