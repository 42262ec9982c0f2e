"""Token redistribution rules: activation x weight.

A rule gives every input token ``j`` an activation ``a_j`` and every pair
``(i, j)`` a weight ``W_ij``. The contribution of input (key) token ``j`` to
output (query) token ``i`` is ``z_ij = a_j * W_ij`` and the layer's
redistribution matrix is

.. math::

    M_{ij} = \\frac{z_{ij}}{\\sum_{j'} z_{ij'}}

(Sawaki & Murata, JSAI 2025). Relevance moves one layer down as
``R^(l-1)_j = sum_i R^(l)_i M_ij``. Index convention everywhere: ``i`` is the
output (query) token, ``j`` the input (key) token.

The paper's four rules are instances of :class:`TokenRule`:

======  ======================  ====================================
rule    activation ``a_j``      weight ``W_ij``
======  ======================  ====================================
(i)     1                       ``w_ij + delta_ij``
(ii)    ``||v_j - v_mean||``    ``w_ij + delta_ij``
(iii)   1                       ``||v_j - v_i|| w_ij + delta_ij``
(iv)    ``||v_j - v_mean||``    ``||v_j - v_i|| w_ij + delta_ij``
======  ======================  ====================================

Rules of the package's own, beyond the paper (measured on real weights: ``benchmarks/REAL.md``,
``benchmarks/TEXT.md``):

===========  ==========================  ====================================
rule         activation ``a_j``          weight ``W_ij``
===========  ==========================  ====================================
``"ii-r4"``  ``||v_j - v_mean||``        ``w_ij + 4 delta_ij``
``"ii2-r4"`` ``||v_j - v_mean||^2``      ``w_ij + 4 delta_ij``
===========  ==========================  ====================================

Write a new rule by composing any activation with any weight; both are plain
callables of an :class:`AttentionState`, so a user-defined one needs no
subclassing (see :class:`TokenActivation` and :class:`TokenWeight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

# The numerics live in the engine (``_core``); the two documented helpers stay importable from here.
from ._core.distances import normalize_rows as normalize_rows
from ._core.distances import normalize_rows_, pairwise_distances

__all__ = [
    "RULE_I",
    "RULE_II",
    "RULE_II2_R4",
    "RULE_III",
    "RULE_II_R4",
    "RULE_IV",
    "AttentionState",
    "AttentionWeight",
    "LayerGatedWeight",
    "ResidualWeight",
    "SquaredValueDeviationActivation",
    "TokenActivation",
    "TokenRule",
    "TokenWeight",
    "UnitActivation",
    "ValueDeviationActivation",
    "ValueDistanceWeight",
    "available_rules",
    "get_rule",
    "register_rule",
]


@dataclass
class AttentionState:
    """What one attention layer computed, per head, in float32.

    Parameters
    ----------
    attention : Tensor
        Attention probabilities ``w_ij = softmax_j(<q_i, k_j> * scaling)`` of
        shape `(batch_size, num_heads, num_tokens, num_tokens)`; rows sum to 1.
    values : Tensor
        Per-head value vectors ``v_j`` (value projection output, bias included)
        of shape `(batch_size, num_heads, num_tokens, head_dim)`.
    layer_index : int
        Index of the layer, 0 for the one nearest to the input.
    token_mask : Tensor, optional
        `(batch_size, num_tokens)` bool, True for real tokens and False for padding (text
        batches). The value mean ``v_mean`` is then taken over the real tokens only, so a padded
        sentence gets the same redistribution as the sentence alone. None: every token is real.

    Notes
    -----
    Derived quantities (centred values, pairwise value distances) are computed
    once, on first use, and shared by the activation and the weight.
    """

    attention: Tensor
    values: Tensor
    layer_index: int = 0
    token_mask: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens per image, ``N`` (special tokens and patches)."""
        return self.attention.shape[-1]

    @cached_property
    def centered_values(self) -> Tensor:
        """``v_j - v_mean``, the mean over all tokens of the input (the real ones where a
        ``token_mask`` is given), layer and head.

        Shape `(batch_size, num_heads, num_tokens, head_dim)`.
        """
        if self.token_mask is None:
            return self.values - self.values.mean(dim=-2, keepdim=True)
        weights = self.token_mask.to(self.values.dtype)[:, None, :, None]  # (batch, 1, N, 1)
        mean = (self.values * weights).sum(dim=-2, keepdim=True) / weights.sum(dim=-2, keepdim=True).clamp(min=1)
        return self.values - mean

    @cached_property
    def centered_norms(self) -> Tensor:
        """``||v_j - v_mean||_2``, shape `(batch_size, num_heads, num_tokens)`."""
        return torch.linalg.vector_norm(self.centered_values, dim=-1)

    @cached_property
    def value_distances(self) -> Tensor:
        """``||v_j - v_i||_2`` for every pair, shape `(batch_size, num_heads, N, N)`.

        Computed from the Gram matrix of the *centred* values: distances are
        translation invariant, and centring keeps the identity
        ``|a|^2 + |b|^2 - 2<a, b>`` well conditioned in float32. The diagonal
        is exactly zero.
        """
        return pairwise_distances(self.centered_values, norms=self.centered_norms)


@runtime_checkable
class TokenActivation(Protocol):
    """Activation ``a_j`` of every input token.

    Called with an :class:`AttentionState`; returns a non-negative tensor of
    shape `(batch_size, num_heads, num_tokens)`.
    """

    def __call__(self, state: AttentionState) -> Tensor: ...


@runtime_checkable
class TokenWeight(Protocol):
    """Weight ``W_ij`` of every (output ``i``, input ``j``) pair.

    Called with an :class:`AttentionState`; returns a non-negative tensor of
    shape `(batch_size, num_heads, num_tokens, num_tokens)`. The residual
    connection's ``delta_ij`` is part of the weight.
    """

    def __call__(self, state: AttentionState) -> Tensor: ...


def _plus_identity(matrix: Tensor) -> Tensor:
    """``matrix + delta_ij`` over the last two dimensions (in place, returned)."""
    matrix.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return matrix


class UnitActivation:
    """``a_j = 1`` for every token (rules (i) and (iii))."""

    def __call__(self, state: AttentionState) -> Tensor:
        return state.attention.new_ones(state.attention.shape[:-1])

    def __repr__(self) -> str:
        return "UnitActivation()"


class ValueDeviationActivation:
    """``a_j = ||v_j - v_mean||_2`` (rules (ii) and (iv)).

    ``v_mean`` is the mean value vector over the tokens of the same input,
    layer and head: all ``N`` tokens of an image (special tokens included), the
    real tokens of a padded text batch (the masked mean over its ``token_mask``,
    see :class:`AttentionState`). A token far from the mean carries more
    specific features and takes more relevance.
    """

    def __call__(self, state: AttentionState) -> Tensor:
        return state.centered_norms

    def __repr__(self) -> str:
        return "ValueDeviationActivation()"


class SquaredValueDeviationActivation:
    """``a_j = ||v_j - v_mean||_2^2`` (rule ``"ii2-r4"``).

    Rule (ii)'s activation squared: the contrast between tokens with specific features (far from
    the mean) and generic ones is sharpened. ``v_mean`` as in :class:`ValueDeviationActivation`.
    """

    def __call__(self, state: AttentionState) -> Tensor:
        return state.centered_norms.square()

    def __repr__(self) -> str:
        return "SquaredValueDeviationActivation()"


class AttentionWeight:
    """``W_ij = w_ij + delta_ij`` (rules (i) and (ii))."""

    def __call__(self, state: AttentionState) -> Tensor:
        return _plus_identity(state.attention.clone())

    def __repr__(self) -> str:
        return "AttentionWeight()"


class ValueDistanceWeight:
    """``W_ij = ||v_j - v_i||_2 * w_ij + delta_ij`` (rules (iii) and (iv)).

    From ``v_hat_i = v_i + sum_j w_ij (v_j - v_i)``: the update token ``j``
    causes in token ``i`` grows with their distance in value space.
    """

    def __call__(self, state: AttentionState) -> Tensor:
        # A fresh distance matrix (not the shared cached one), so it can be scaled in place.
        distances = pairwise_distances(state.centered_values, norms=state.centered_norms)
        return _plus_identity(distances.mul_(state.attention))

    def __repr__(self) -> str:
        return "ValueDistanceWeight()"


class ResidualWeight:
    """``W_ij = w_ij + alpha * delta_ij``: the residual connection weighted ``alpha`` times all of attention.

    With ``alpha = 1`` this is :class:`AttentionWeight`. A larger ``alpha`` keeps more of each
    token's relevance on itself in every layer, so relevance that reaches the patch (or word) tokens
    is moved by the attention of few layers, not blurred through every layer's token mixing: on the
    real DINOv2-S and all-MiniLM-L6-v2 rule (ii)'s faithfulness rises with ``alpha`` up to about 4
    (``benchmarks/REAL.md``, ``benchmarks/TEXT.md``). As ``alpha`` grows without bound the matrices
    tend to the identity and the map to the start.

    Parameters
    ----------
    alpha : float
        Weight of the residual, finite and positive.
    """

    def __init__(self, alpha: float) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not (0 < alpha < float("inf")):
            raise ValueError(f"ResidualWeight alpha must be a finite positive number, got {alpha!r}.")
        self.alpha = float(alpha)

    def __call__(self, state: AttentionState) -> Tensor:
        weight = state.attention.clone()
        weight.diagonal(dim1=-2, dim2=-1).add_(self.alpha)
        return weight

    def __repr__(self) -> str:
        return f"ResidualWeight(alpha={self.alpha:g})"


class LayerGatedWeight:
    """``W_ij = delta_ij`` in the layers below ``first_layer``, ``weight(state)`` from it on.

    Layers below ``first_layer`` then move no relevance between tokens (their matrix is the
    identity): the map is what the upper layers' attention redistributes. Which layers to keep is
    the model's: it depends on its depth (12 layers for ViT-S, 6 for MiniLM), so no rule with a gate
    is registered by name.

    Parameters
    ----------
    weight : TokenWeight
        The weight of the layers kept.
    first_layer : int
        Index of the first layer kept, 0 for the one nearest to the input (0: no layer gated).
    """

    def __init__(self, weight: TokenWeight, first_layer: int) -> None:
        if not callable(weight):
            raise TypeError(f"LayerGatedWeight weight must be callable as weight(state) -> Tensor, got {weight!r}.")
        if isinstance(first_layer, bool) or not isinstance(first_layer, int) or first_layer < 0:
            raise ValueError(f"LayerGatedWeight first_layer must be a non-negative int, got {first_layer!r}.")
        self.weight = weight
        self.first_layer = first_layer

    def __call__(self, state: AttentionState) -> Tensor:
        if state.layer_index >= self.first_layer:
            return self.weight(state)
        return torch.diag_embed(state.attention.new_ones(state.attention.shape[:-1]))

    def __repr__(self) -> str:
        return f"LayerGatedWeight({self.weight!r}, first_layer={self.first_layer})"


@dataclass(frozen=True)
class TokenRule:
    """A redistribution rule: an activation composed with a weight.

    Parameters
    ----------
    activation : TokenActivation
        Callable ``state -> a`` with ``a`` of shape
        `(batch_size, num_heads, num_tokens)`, non-negative.
    weight : TokenWeight
        Callable ``state -> W`` with ``W`` of shape
        `(batch_size, num_heads, num_tokens, num_tokens)`, non-negative,
        ``W[..., i, j]`` for output token ``i`` and input token ``j``.
    name : str, optional
        Shown in figures and ``repr``.

    Examples
    --------
    A rule whose activation is the value norm itself (not centred):

    >>> import torch
    >>> from captum_tokenlrp import TokenRule
    >>> from captum_tokenlrp.rules import AttentionWeight
    >>> norm_rule = TokenRule(
    ...     activation=lambda state: state.values.norm(dim=-1),
    ...     weight=AttentionWeight(),
    ...     name="value-norm",
    ... )

    Use it for the whole model with ``TokenRelevanceLRP(model, rule=norm_rule)``
    or for one layer by setting ``rule`` on that layer's attention module.
    """

    activation: TokenActivation
    weight: TokenWeight
    name: str | None = None

    def __post_init__(self) -> None:
        for role, component in (("activation", self.activation), ("weight", self.weight)):
            if not callable(component):
                raise TypeError(
                    f"TokenRule {role} must be callable as {role}(state) -> Tensor, got {type(component).__name__}."
                )

    def contributions(self, state: AttentionState) -> Tensor:
        """``z_ij = a_j * W_ij``, shape `(batch_size, num_heads, N, N)`, as a new tensor.

        Both components' outputs are checked (shape, finite, non-negative), so a user-defined
        component that breaks the contract fails with a message naming it.
        """
        activation = self.activation(state)
        weight = self.weight(state)
        _check_component(self, "activation", activation, state.attention.shape[:-1])
        _check_component(self, "weight", weight, state.attention.shape)
        return weight * activation.unsqueeze(-2)

    def redistribution(self, state: AttentionState) -> Tensor:
        """Row-normalised ``M_ij = z_ij / sum_j' z_ij'``, shape `(batch_size, num_heads, N, N)`.

        A row whose contributions sum to zero (possible only when ``a_i = 0``
        and every other ``z_ij = 0``) becomes the identity row: the token
        keeps its own relevance.
        """
        return normalize_rows_(self.contributions(state))

    def __repr__(self) -> str:
        if self.name is not None:
            return f"TokenRule(name={self.name!r})"
        return f"TokenRule(activation={self.activation!r}, weight={self.weight!r})"


def _check_component(rule: TokenRule, role: str, tensor: object, expected_shape: torch.Size) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{rule!r}: the {role} must return a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.shape != expected_shape:
        raise ValueError(f"{rule!r}: the {role} must return shape {tuple(expected_shape)}, got {tuple(tensor.shape)}.")
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(
            f"{rule!r}: the {role} must be finite and non-negative so that relevance stays "
            "non-negative and conserved; it returned negative or non-finite entries."
        )


RULE_I = TokenRule(UnitActivation(), AttentionWeight(), name="i")
"""Rule (i): ``a_j = 1``, ``W_ij = w_ij + delta_ij``. Heads fused by mean: Attention Rollout."""

RULE_II = TokenRule(ValueDeviationActivation(), AttentionWeight(), name="ii")
"""Rule (ii): ``a_j = ||v_j - v_mean||``, ``W_ij = w_ij + delta_ij``."""

RULE_III = TokenRule(UnitActivation(), ValueDistanceWeight(), name="iii")
"""Rule (iii): ``a_j = 1``, ``W_ij = ||v_j - v_i|| w_ij + delta_ij``."""

RULE_IV = TokenRule(ValueDeviationActivation(), ValueDistanceWeight(), name="iv")
"""Rule (iv): ``a_j = ||v_j - v_mean||``, ``W_ij = ||v_j - v_i|| w_ij + delta_ij``."""

RULE_II_R4 = TokenRule(ValueDeviationActivation(), ResidualWeight(4.0), name="ii-r4")
"""Rule ``"ii-r4"``: ``a_j = ||v_j - v_mean||``, ``W_ij = w_ij + 4 delta_ij`` (rule (ii), residual weighted 4)."""

RULE_II2_R4 = TokenRule(SquaredValueDeviationActivation(), ResidualWeight(4.0), name="ii2-r4")
"""Rule ``"ii2-r4"``: ``a_j = ||v_j - v_mean||^2``, ``W_ij = w_ij + 4 delta_ij``."""

_REGISTRY: dict[str, TokenRule] = {
    "i": RULE_I,
    "ii": RULE_II,
    "iii": RULE_III,
    "iv": RULE_IV,
    "ii-r4": RULE_II_R4,
    "ii2-r4": RULE_II2_R4,
}


def register_rule(name: str, rule: TokenRule, *, overwrite: bool = False) -> None:
    """Make ``rule`` available by name, e.g. ``TokenRelevanceLRP(model, rule=name)``.

    Raises
    ------
    TypeError
        If ``rule`` is not a :class:`TokenRule` or ``name`` not a string.
    ValueError
        If ``name`` is taken and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Rule name must be a non-empty string, got {name!r}.")
    if not isinstance(rule, TokenRule):
        raise TypeError(
            f"register_rule expects a TokenRule, got {type(rule).__name__}. "
            "Build one with TokenRule(activation=..., weight=...)."
        )
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"A rule named {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = rule


def available_rules() -> tuple[str, ...]:
    """Names accepted by :func:`get_rule`."""
    return tuple(_REGISTRY)


def get_rule(rule: str | TokenRule) -> TokenRule:
    """Resolve a rule name (``"i"``, ``"ii"``, ``"iii"``, ``"iv"``, ``"ii-r4"``, ``"ii2-r4"`` or a registered one)
    or pass a rule through.

    Raises
    ------
    ValueError
        For an unknown name.
    TypeError
        For anything that is neither a string nor a :class:`TokenRule`.
    """
    if isinstance(rule, TokenRule):
        return rule
    if isinstance(rule, str):
        for key in (rule, rule.strip().lower()):
            if key in _REGISTRY:
                return _REGISTRY[key]
        raise ValueError(f"Unknown rule {rule!r}; expected one of {list(_REGISTRY)} or a TokenRule instance.")
    raise TypeError(f"rule must be a rule name or a TokenRule, got {type(rule).__name__}.")
