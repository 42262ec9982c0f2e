"""The token geometry's former place: it lives in :mod:`captum_tokenlrp._utils.geometry`.

The adapters need :class:`TokenLayout` and the engine imports the adapters, so the geometry sits
below both (in ``_utils``, which imports nothing of the package) and imports flow one way. This
module re-exports it for the modules that still import it from here.
"""

from __future__ import annotations

from .._utils.geometry import (
    TokenLayout,
    block_sums,
    crop_to_grid,
    grid_to_tokens,
    patch_grid,
    patch_relevance_to_pixels,
    patch_sums,
    tokens_to_grid,
)

__all__ = [
    "TokenLayout",
    "block_sums",
    "crop_to_grid",
    "grid_to_tokens",
    "patch_grid",
    "patch_relevance_to_pixels",
    "patch_sums",
    "tokens_to_grid",
]
