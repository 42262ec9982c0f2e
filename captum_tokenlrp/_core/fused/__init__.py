"""Fused kernels of the built-in rules: a layer's attention output and redistribution matrix in one pass.

The unfused path (:mod:`..kernels`) materialises each head's probabilities and then passes over
`(batch, heads, N, N)` about ten times (softmax, ``+ I``, distances, activation, row sums, division,
head mean). :func:`fused_layer` computes, per tile of query rows, the scores, the softmax, the layer
output ``P @ V`` and the rule's contribution to the matrix, and writes the kept matrix once:

- on a CUDA device, Triton kernels (:mod:`.triton_kernels`; Triton ships with CUDA builds of torch);
- on the CPU, a C++ kernel built on first use and cached (:mod:`.cpu`), where a compiler is found.

:func:`backend` says which one serves a device (None: the unfused path must run). Only the paper's
rules (i)-(iv) built from the exact built-in component classes take this path
(:func:`rule_flags`); any other :class:`~captum_tokenlrp.rules.TokenRule` keeps the rule's own code.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch
from torch import Tensor

from ...rules import AttentionWeight, TokenRule, UnitActivation, ValueDeviationActivation, ValueDistanceWeight
from ..distances import normalize_rows_

__all__ = ["backend", "fused_layer", "rule_flags"]

#: Head modes of one layer, as :func:`~captum_tokenlrp._core.propagation.layer_mode` gives them.
LAYER_MODES = ("mean", "max", "min", None)
_NAMES = {"i": (False, False), "ii": (False, True), "iii": (True, False), "iv": (True, True)}
logger = logging.getLogger("captum_tokenlrp")
#: Devices whose Triton kernels failed to compile or run in this process: the unfused path serves them.
_failed_devices: set[str] = set()


def rule_flags(rule: TokenRule | str) -> tuple[bool, bool] | None:
    """``(by_distance, by_deviation)`` of a built-in rule, or None for any other rule.

    By distance: the weight is ``||v_j - v_i|| w_ij + delta_ij`` (rules (iii), (iv)); by deviation:
    ``a_j = ||v_j - v_mean||`` (rules (ii), (iv)). Exact types only, as in
    :func:`~captum_tokenlrp._core.kernels.builtin_kernel`: a subclass may change ``__call__``.
    """
    if isinstance(rule, str):
        return _NAMES.get(rule)
    if not isinstance(rule, TokenRule):
        return None
    activation, weight = type(rule.activation), type(rule.weight)
    if activation not in (UnitActivation, ValueDeviationActivation) or weight not in (
        AttentionWeight,
        ValueDistanceWeight,
    ):
        return None
    return weight is ValueDistanceWeight, activation is ValueDeviationActivation


def triton_available() -> bool:
    """Whether Triton can be imported (without importing it: that takes a second)."""
    return importlib.util.find_spec("triton") is not None


def backend(device: torch.device | str) -> str | None:
    """``"triton"`` (CUDA with Triton), ``"cpu"`` (the built C++ kernel) or None: the unfused path runs.

    On the CPU the first call may build the kernel (tens of seconds, once per torch version); where
    no compiler is found it logs one line and returns None.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "triton" if triton_available() and device.type not in _failed_devices else None
    if device.type == "cpu":
        from . import cpu

        return "cpu" if cpu.extension() is not None else None
    return None


def _broadcast_bias(score_bias: Tensor | None, shape: tuple[int, int, int, int]) -> Tensor | None:
    """The additive score bias as a `(batch, heads, N, N)` view (stride 0 where it broadcasts)."""
    if score_bias is None:
        return None
    bias = score_bias
    if bias.dim() < 4:
        bias = bias.reshape(*([1] * (4 - bias.dim())), *bias.shape)
    elif bias.dim() > 4:
        bias = bias.reshape(-1, *bias.shape[-3:])
    try:
        return bias.expand(shape)
    except RuntimeError as error:
        raise ValueError(
            f"score_bias must broadcast to (batch, heads, N, N) = {shape}, got shape {tuple(score_bias.shape)}."
        ) from error


def _value_statistics(value: Tensor, token_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(v - v_mean, v_mean, ||v - v_mean||)`` in float32; the mean over the real tokens where masked."""
    values = value.float()
    if token_mask is None:
        mean = values.mean(dim=-2, keepdim=True)
    else:
        weights = token_mask.to(values.dtype)[:, None, :, None]
        mean = (values * weights).sum(dim=-2, keepdim=True) / weights.sum(dim=-2, keepdim=True).clamp(min=1)
    centred = values - mean
    return centred, mean.squeeze(-2), torch.linalg.vector_norm(centred, dim=-1)


def fused_layer(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    scale: float,
    rule: TokenRule | str,
    head_mode: str | None,
    score_bias: Tensor | None = None,
    token_mask: Tensor | None = None,
    kernel: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One attention layer's output and the redistribution matrix its head mode keeps.

    ``w = softmax(q k^T * scale + score_bias)``, ``output = w @ v`` and, for each head,
    ``M_ij = a_j W_ij / sum_j' a_j' W_ij'`` of the built-in ``rule``, reduced over heads as
    ``head_mode`` says; no per-head probabilities are kept.

    Parameters
    ----------
    query, key, value : Tensor
        `(batch, heads, N, head_dim)`, any strides, float32, bfloat16 or float16 (accumulated in float32).
    scale : float
        The module's scaling of the scores (``1 / sqrt(head_dim)`` for ViTs).
    rule : TokenRule or str
        One of the built-in rules (i)-(iv), as a rule or its name (see :func:`rule_flags`).
    head_mode : {"mean", "max", "min", None}
        How this layer's heads are reduced (``"max"``, ``"min"``: elementwise, rows renormalised), or
        None to keep every head.
    score_bias : Tensor, optional
        Added to the scaled scores, broadcastable to `(batch, heads, N, N)`: BEiT's relative position
        bias, a padding mask (large negative where a key is masked).
    token_mask : Tensor, optional
        `(batch, N)` bool, True for real tokens: ``v_mean`` is taken over them (text batches).
    kernel : {"triton", "cpu"}, optional
        Force a kernel (the tests run Triton's interpreter on CPU tensors this way); default
        :func:`backend` of the tensors' device.

    Returns
    -------
    output : Tensor
        `(batch, heads, N, head_dim)` in ``value``'s dtype: ``w @ v``, what the model's attention returns
        before its heads are merged.
    matrix : Tensor
        float32, `(batch, N, N)` for a fused mode, `(batch, heads, N, N)` for None; rows sum to 1.

    Raises
    ------
    ValueError
        For a rule that is not built in, an unknown head mode, mismatched shapes, or no kernel for the
        device (check :func:`backend` first).
    """
    flags = rule_flags(rule)
    if flags is None:
        raise ValueError(
            f"fused_layer computes the built-in rules (i)-(iv) only, got {rule!r}; "
            "other rules run through their own redistribution (kernels.redistribution)."
        )
    if head_mode not in LAYER_MODES:
        raise ValueError(f"head_mode must be one of {list(LAYER_MODES)}, got {head_mode!r}.")
    if query.dim() != 4 or query.shape != key.shape or query.shape != value.shape:
        raise ValueError(
            "query, key and value must all be (batch, heads, N, head_dim), got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}."
        )
    chosen = kernel or backend(query.device)
    if chosen not in ("triton", "cpu"):
        raise ValueError(
            f"No fused kernel for device {query.device} (kernel={kernel!r}); use the unfused path, or check "
            "fused.backend(device) first."
        )
    by_distance, by_deviation = flags
    batch, heads, tokens, _dim = query.shape
    bias = _broadcast_bias(score_bias, (batch, heads, tokens, tokens))
    centred, mean, norms = _value_statistics(value, token_mask)
    fused = head_mode is not None
    if chosen == "triton":
        from . import triton_kernels

        output = torch.empty(value.shape, dtype=value.dtype, device=value.device)
        shape = (batch, tokens, tokens) if fused else (batch, heads, tokens, tokens)
        matrix = torch.empty(shape, dtype=torch.float32, device=query.device)
        _launch_triton(
            triton_kernels,
            query,
            key,
            value,
            bias,
            mean.contiguous(),
            norms.contiguous(),
            norms.square().amax(dim=-1).contiguous(),
            output,
            matrix,
            scale=float(scale),
            by_distance=by_distance,
            by_deviation=by_deviation,
            mode=head_mode,
            forced=kernel is not None,
        )
        if head_mode in ("max", "min"):
            normalize_rows_(matrix)
        return output, matrix
    from . import cpu

    if os.environ.get(cpu.SWITCH, "1") == "0" and kernel is None:  # pragma: no cover - backend() said None
        raise ValueError(f"{cpu.SWITCH}=0 turns the fused CPU kernel off.")
    scaled = torch.mul(query.float(), float(scale)).contiguous()  # q scaled: one pass over N x d, not N x N
    output, matrix = cpu.launch(
        scaled,
        key.float().contiguous(),
        value.float().contiguous(),
        centred.contiguous() if by_distance else None,
        norms.contiguous() if (by_distance or by_deviation) else None,
        None if bias is None else bias.float(),
        by_distance=by_distance,
        by_deviation=by_deviation,
        mode={"mean": 0, "max": 1, "min": 2, None: 3}[head_mode],
    )
    return output.to(value.dtype), matrix


class TritonFailed(RuntimeError):
    """The Triton kernels could not compile or run on this device; the unfused path serves it from now on."""


def _launch_triton(module, *args, forced: bool, **kwargs) -> None:
    """``module.launch``; a failure (a GPU or Triton release the kernels do not support) turns them off for the
    device, with one log line, and raises :class:`TritonFailed` for the caller to take the unfused path."""
    try:
        module.launch(*args, **kwargs)
    except Exception as error:
        if forced:
            raise
        device = args[0].device.type
        _failed_devices.add(device)
        logger.warning(
            "captum_tokenlrp: fused Triton kernels off for %s (%s: %s); the unfused path runs.",
            device,
            type(error).__name__,
            str(error).splitlines()[0][:200] if str(error) else "",
        )
        raise TritonFailed(str(error)) from error
