"""Token relevance as Captum's ``VisualizationDataRecord``s, and drawn by Captum's ``visualize_text``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import visualization
from torch import Tensor

ArrayLike = Tensor | np.ndarray


# ------------------------------------------------------------------ Captum's text records
def _as_rows(value: object, name: str) -> np.ndarray:
    """A tensor or array `(num_tokens,)` or `(batch_size, num_tokens)` as float64 `(batch_size, num_tokens)`."""
    if isinstance(value, Tensor):
        array = value.detach().double().cpu().numpy()
    elif isinstance(value, np.ndarray):
        array = value.astype(np.float64)
    else:
        raise TypeError(
            f"Expected {name} as a torch.Tensor or numpy.ndarray of shape (batch_size, num_tokens), got "
            f"{type(value).__name__}."
        )
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"Expected {name} of shape (batch_size, num_tokens) or (num_tokens,), got {tuple(array.shape)}; "
            "per-head relevance (batch_size, num_heads, num_tokens) goes one head at a time, e.g. relevance[:, h]."
        )
    return array


def _token_rows(tokens: object, batch: int, num_tokens: int) -> list[list[str]]:
    """Token strings, one list per sentence, each of ``num_tokens`` (padding included)."""
    if isinstance(tokens, str) or not isinstance(tokens, Sequence) or not tokens:
        raise TypeError(
            "Expected tokens as a list of token strings per sentence (lrp.tokens(input_ids)), or one list for a "
            f"single sentence; got {type(tokens).__name__}."
        )
    rows = [list(tokens)] if all(isinstance(token, str) for token in tokens) else [list(row) for row in tokens]
    if len(rows) != batch:
        raise ValueError(f"tokens has {len(rows)} sentences but relevance has {batch}; pass one list per sentence.")
    for index, row in enumerate(rows):
        if len(row) != num_tokens or not all(isinstance(token, str) for token in row):
            raise ValueError(
                f"tokens[{index}] must be {num_tokens} token strings (one per column of relevance, padding "
                f"included), got {len(row)} items; name them with lrp.tokens(input_ids)."
            )
    return rows


def _per_sentence(value: object, batch: int, name: str) -> list[Any]:
    """One value for all sentences, or a sequence (or tensor) of one per sentence."""
    if isinstance(value, Tensor | np.ndarray):
        value = value.tolist()
        if not isinstance(value, list):
            return [value] * batch
    if isinstance(value, list | tuple):
        if len(value) != batch:
            raise ValueError(f"{name} has {len(value)} values for {batch} sentences; give one value or one each.")
        return list(value)
    return [value] * batch


def visualization_records(
    relevance: ArrayLike,
    tokens: Sequence[Sequence[str]] | Sequence[str],
    *,
    token_mask: ArrayLike | None = None,
    label: object = "",
    predicted: object = "",
    probability: float | Sequence[float] | ArrayLike | None = None,
    attributed: object = None,
    convergence_delta: float | Sequence[float] | ArrayLike | None = None,
    normalize: bool = True,
) -> list[visualization.VisualizationDataRecord]:
    """Captum's text records of token relevance: one per sentence, padding dropped.

    ``captum.attr.visualization.visualize_text(visualization_records(...))`` draws them (it needs IPython).

    Parameters
    ----------
    relevance : Tensor or ndarray
        `(batch_size, num_tokens)` (a fused map of :meth:`TextTokenRelevanceLRP.token_relevance`) or
        `(num_tokens,)` for one sentence.
    tokens : list of list of str, or list of str
        The token strings, one list per sentence (``lrp.tokens(input_ids)``), padding included.
    token_mask : Tensor or ndarray, optional
        `(batch_size, num_tokens)` (or `(num_tokens,)`), 1 for real tokens: the ``attention_mask``. Padding
        columns are dropped; without it every column is kept.
    label : object or sequence, default ""
        The true class, shown in Captum's "True Label" column (one value, or one per sentence).
    predicted : object or sequence, default ""
        The predicted class ("Predicted Label").
    probability : float or sequence of float, optional
        Its probability, shown as "predicted (0.97)"; NaN when not given (a model without a classifier).
    attributed : object or sequence, optional
        The class the relevance explains ("Attribution Label"); defaults to ``predicted``.
    convergence_delta : float or sequence of float, optional
        ``attribute(..., return_convergence_delta=True)``'s delta, kept as the record's ``convergence_score``.
    normalize : bool, default True
        Divide each sentence's relevance by its largest absolute value, so the colours span Captum's
        [-1, 1] scale (relevance sums to 1, so raw values are pale). ``attr_score`` is the raw total either way.

    Returns
    -------
    list of VisualizationDataRecord
        ``word_attributions`` float32 `(num_real_tokens,)`, ``raw_input_ids`` the matching token strings,
        ``attr_score`` the relevance total over the real tokens.
    """
    values = _as_rows(relevance, "relevance")
    batch, num_tokens = values.shape
    rows = _token_rows(tokens, batch, num_tokens)
    if token_mask is None:
        mask = np.ones(values.shape, dtype=bool)
    else:
        mask = _as_rows(token_mask, "token_mask")
        if mask.shape != values.shape:
            raise ValueError(
                f"token_mask has shape {mask.shape} but relevance has {values.shape}; pass the attention_mask of "
                "the same inputs."
            )
        mask = mask != 0
    labels = _per_sentence(label, batch, "label")
    predictions = _per_sentence(predicted, batch, "predicted")
    attributions = predictions if attributed is None else _per_sentence(attributed, batch, "attributed")
    probabilities = _per_sentence(math.nan if probability is None else probability, batch, "probability")
    deltas = _per_sentence(convergence_delta, batch, "convergence_delta")
    records = []
    for index in range(batch):
        kept = values[index][mask[index]]
        words = [token for token, real in zip(rows[index], mask[index], strict=True) if real]
        shown = kept
        if normalize:
            largest = float(np.abs(kept).max()) if kept.size else 0.0
            shown = kept / largest if largest > 0 else kept
        records.append(
            visualization.VisualizationDataRecord(
                torch.from_numpy(shown.astype(np.float32)),
                float(probabilities[index]),
                predictions[index],
                labels[index],
                attributions[index],
                float(kept.sum()),
                words,
                None if deltas[index] is None else float(deltas[index]),
            )
        )
    return records


def visualize_text(
    relevance: ArrayLike,
    tokens: Sequence[Sequence[str]] | Sequence[str],
    *,
    legend: bool = True,
    **options: Any,
):
    """Draw token relevance with Captum's ``visualize_text`` (in a notebook); returns its ``IPython.display.HTML``.

    Parameters
    ----------
    relevance, tokens, **options
        As in :func:`visualization_records` (``token_mask``, ``label``, ``predicted``, ...).
    legend : bool, default True
        Captum's colour legend.

    Raises
    ------
    ImportError
        If IPython is not installed (Captum draws through it): ``pip install ipython``.
    """
    records = visualization_records(relevance, tokens, **options)
    if not getattr(visualization, "HAS_IPYTHON", False):
        raise ImportError(
            "Captum's visualize_text draws through IPython, which is not installed: pip install ipython. Without "
            "it, plot captum_tokenlrp.visualization.plot_text_relevance(...) or use visualization_records(...)."
        )
    return visualization.visualize_text(records, legend=legend)
