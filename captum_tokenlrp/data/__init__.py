"""Bundled data: deterministic synthetic shapes and multi-object scenes with per-pixel ground-truth masks."""

from .scenes import ScenesDataset, average_precision, generate_scenes, mean_average_precision
from .shapes import SHAPE_CLASSES, ShapesDataset, generate_shapes

__all__ = [
    "SHAPE_CLASSES",
    "ScenesDataset",
    "ShapesDataset",
    "average_precision",
    "generate_scenes",
    "generate_shapes",
    "mean_average_precision",
]
