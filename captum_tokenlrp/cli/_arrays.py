"""The relevance entries of every ``.npz`` the commands write (one schema), from one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .. import TokenRelevanceLRP
from .._adapters import TokenLayout
from .._loading import CliError


def layout_arrays(layout: TokenLayout) -> dict[str, np.ndarray]:
    """The token layout as arrays stored beside the relevance."""
    return {
        "grid": np.array(layout.grid),
        "special_tokens": np.array(layout.special_token_names),
        "patch_size": np.array(layout.patch_size),
    }


def relevance_arrays(
    rules: Sequence[str], fused: dict[str, np.ndarray], per_head: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The relevance entries of every ``.npz`` the commands write (one schema, see the README).

    ``relevance_<rule>``: the map of ``--head-fusion``, `(num_tokens,)`, or `(num_heads, num_tokens)` for
    ``none``; ``relevance``: the same when one rule is given; ``relevance_<rule>_per_head``: the maps of
    each head `(num_heads, num_tokens)`, where the command draws them (``explain``, ``explain-text``).
    """
    arrays = {f"relevance_{rule}": fused[rule] for rule in rules}
    if len(rules) == 1:
        arrays["relevance"] = fused[rules[0]]
    for rule, maps in (per_head or {}).items():
        arrays[f"relevance_{rule}_per_head"] = maps
    return arrays


def relevance_by_rule(
    lrp: TokenRelevanceLRP,
    pixel_values: torch.Tensor,
    rules: Sequence[str],
    head_fusions: Sequence[str | None],
    target_token: int | None,
    forward_args: dict | None,
    target: int | None = None,
) -> tuple[dict[str, dict[str | None, np.ndarray]], TokenLayout]:
    """Token relevance of every rule and head mode from one forward pass (and one backward pass for the
    class-sensitive modes, which explain class ``target``, default the predicted one), as numpy."""
    layout = lrp.token_layout(pixel_values, forward_args)
    options = {} if target is None else {"target": target}
    if target_token is not None:
        if not 0 <= target_token < layout.num_tokens:
            raise CliError(f"--target-token {target_token} is out of range: the model has {layout.num_tokens} tokens.")
        start = torch.zeros(layout.num_tokens)
        start[target_token] = 1.0
        options["initial_relevance"] = start
    relevance = lrp.token_relevance_by_rule(
        pixel_values, rules, additional_forward_args=forward_args, head_fusions=head_fusions, **options
    )
    arrays = {
        rule: {mode: maps.float().cpu().numpy() for mode, maps in by_mode.items()}
        for rule, by_mode in relevance.items()
    }
    return arrays, layout


def fused_for_display(relevance: np.ndarray) -> np.ndarray:
    """A map of a per-head ``--head-fusion`` `(heads, N)` shows its mean as the fused row."""
    return relevance.mean(axis=0) if relevance.ndim == 2 else relevance
