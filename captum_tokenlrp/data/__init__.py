"""Bundled data: a deterministic synthetic shapes dataset with per-pixel ground-truth masks."""

from .shapes import SHAPE_CLASSES, ShapesDataset, generate_shapes

__all__ = ["SHAPE_CLASSES", "ShapesDataset", "generate_shapes"]
