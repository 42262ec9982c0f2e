"""Scores for explanations: localisation, faithfulness, and the randomisation sanity check.

Usable on any Captum attribution of image inputs (pixel maps `(batch_size, channels, height,
width)`), on maps `(batch_size, height, width)` and on patch grids (see
:func:`patch_relevance_grid` for token relevance). Every score is returned per image, so means
and confidence intervals (:func:`mean_confidence_interval`) are taken over images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._adapters import TokenLayout
from .._core.geometry import patch_grid
from .localisation import (
    class_localisation_scores,
    localisation_scores,
    mean_threshold_iou,
    pointing_game,
    relevance_mass,
)
from .perturbation import PerturbationCurves, gaussian_blur, perturbation_curves
from .randomization import RandomizationResult, cascade_stages, parameter_randomization_test, spearman

__all__ = [
    "PerturbationCurves",
    "RandomizationResult",
    "cascade_stages",
    "class_localisation_scores",
    "gaussian_blur",
    "localisation_scores",
    "mean_confidence_interval",
    "mean_threshold_iou",
    "parameter_randomization_test",
    "patch_relevance_grid",
    "perturbation_curves",
    "pointing_game",
    "relevance_mass",
    "spearman",
]


def patch_relevance_grid(relevance: Tensor, layout: TokenLayout) -> Tensor:
    """Token relevance `(batch_size, num_tokens)` -> the patch tokens' relevance on their grid
    `(batch_size, rows, cols)` (special tokens dropped), ready for the scores here."""
    if not isinstance(relevance, Tensor) or relevance.dim() != 2 or relevance.shape[1] != layout.num_tokens:
        shape = tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance).__name__
        raise ValueError(
            f"relevance must have shape (batch_size, {layout.num_tokens}) for this layout, got {shape}. "
            "Per-head relevance: pick or fuse the heads first."
        )
    return patch_grid(relevance, layout)


def _t_quantile_975(dof: int) -> float:
    """Two-sided 95 % Student-t quantile (Cornish-Fisher expansion; within 5e-3 of the exact value for dof >= 3)."""
    z = 1.959963984540054
    if dof <= 0:
        return math.inf
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def mean_confidence_interval(values: Tensor) -> tuple[float, float]:
    """Mean of per-image scores and the half-width of its 95 % confidence interval (Student t).

    Returns
    -------
    (float, float)
        ``(mean, half_width)``; the half-width is ``nan`` for fewer than two values.
    """
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    count = values.numel()
    if count == 0:
        raise ValueError("mean_confidence_interval needs at least one value.")
    mean = values.mean().item()
    if count < 2:
        return mean, math.nan
    return mean, _t_quantile_975(count - 1) * values.std().item() / math.sqrt(count)
