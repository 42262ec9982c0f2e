"""Text models' recorder: :func:`.capture.record_layers` with ``token_mask=`` (kept import path).

The text recorder is the one recorder (:mod:`.capture`); this module keeps the names callers
imported from here: :func:`record_text_layers` (``record_layers(..., capture="exact",
token_mask=...)``) and the helpers the text path uses.
"""

from __future__ import annotations

from .capture import (
    _UNSUPPORTED_ARGUMENTS,
    additive_mask,
    eager_probabilities,
    merge_heads,
    record_text_layers,
    repeat_key_value_heads,
)

__all__ = [
    "_UNSUPPORTED_ARGUMENTS",
    "additive_mask",
    "eager_probabilities",
    "merge_heads",
    "record_text_layers",
    "repeat_key_value_heads",
]
