"""Triton kernels of the built-in rules: attention, its output and the layer's matrix in two passes.

Per tile of query rows of one (input, head), the first kernel computes the scores, the online
softmax statistics, the layer output ``P @ V`` and the rule's row sums ``z_i = sum_j a_j W_ij``
(flash-attention style: key tiles streamed, the row statistics rescaled as the maximum grows). The
second kernel recomputes each (query tile, key tile) of every head from those statistics and
writes the redistribution matrix once: the head mean (or max, min) accumulated in registers for a
fused layer, or each head's tile for a per-head one. Per-head probabilities never reach memory;
what does is the output, three floats per row and head, and the matrix.

Value distances come from the Gram identity of the centred values, as on the CPU
(:func:`~captum_tokenlrp._core.distances.pairwise_distances`): a tile holding a pair the identity
cannot resolve (squared distance under ``NEAR_PAIR_SHARE`` of the norms) recomputes those pairs
from the differences, so the result is exact within float32 rounding. Every product runs in
float32 (``input_precision="ieee"``: tf32 would cost the rules three decimal digits); half-precision
inputs are widened on load.

Runs on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the tests check it without a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..distances import NEAR_PAIR_SHARE

#: Head reductions of the matrix kernel (``MODE``): mean, max, min, or every head's matrix kept.
MODES = {"mean": 0, "max": 1, "min": 2, None: 3}


@triton.jit
def _centred(V, VBAR, base, bar, tokens, stride_n, stride_d, token_ok, dims, dim_ok):
    """`(tokens, DP)` centred values ``v - v_mean`` of the given tokens, float32, zero outside."""
    mask = token_ok[:, None] & dim_ok[None, :]
    v = tl.load(V + base + tokens[:, None] * stride_n + dims[None, :] * stride_d, mask=mask, other=0.0)
    mean = tl.load(VBAR + bar + dims, mask=dim_ok, other=0.0)
    return tl.where(mask, v.to(tl.float32) - mean[None, :], 0.0)


@triton.jit
def _distances(
    V,
    VBAR,
    base,
    bar,
    stride_n,
    stride_d,
    rows,
    cols,
    row_ok,
    col_ok,
    vi,
    vj,
    cutoff,
    D,
    DP: tl.constexpr,
    DC: tl.constexpr,
):
    """``||v_j - v_i||`` for a `(BM, BN)` tile, exact zeros on the diagonal.

    The Gram identity first; pairs under the row's ``cutoff`` (rare) are recomputed from the
    differences, ``DC`` dimensions at a time, only in a tile that has one.
    """
    ni2 = tl.sum(vi * vi, axis=1)
    nj2 = tl.sum(vj * vj, axis=1)
    gram = tl.dot(vi, tl.trans(vj), input_precision="ieee")
    squared = ni2[:, None] + nj2[None, :] - 2.0 * gram
    diagonal = rows[:, None] == cols[None, :]
    valid = row_ok[:, None] & col_ok[None, :]
    near = (squared < cutoff[:, None]) & valid & (~diagonal)
    if tl.max(near.to(tl.int32)) > 0:
        exact = tl.zeros(squared.shape, dtype=tl.float32)
        for start in range(0, DP, DC):
            dims = start + tl.arange(0, DC)
            dim_ok = dims < D
            ci = _centred(V, VBAR, base, bar, rows, stride_n, stride_d, row_ok, dims, dim_ok)
            cj = _centred(V, VBAR, base, bar, cols, stride_n, stride_d, col_ok, dims, dim_ok)
            difference = ci[:, None, :] - cj[None, :, :]
            exact += tl.sum(difference * difference, axis=2)
        squared = tl.where(near, exact, squared)
    return tl.where(diagonal, 0.0, tl.sqrt(tl.maximum(squared, 0.0)))


@triton.jit
def _scores(
    K,
    BIAS,
    q,
    b,
    h,
    rows,
    row_ok,
    cols,
    col_ok,
    dims,
    dim_ok,
    sk0,
    sk1,
    sk2,
    sk3,
    sb0,
    sb1,
    sb2,
    sb3,
    scale,
    HAS_BIAS: tl.constexpr,
):
    """Scaled scores (plus the bias) of a `(BM, BN)` tile; -inf outside the keys."""
    k = tl.load(
        K + b * sk0 + h * sk1 + cols[:, None] * sk2 + dims[None, :] * sk3,
        mask=col_ok[:, None] & dim_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    if HAS_BIAS:
        bias = tl.load(
            BIAS + b * sb0 + h * sb1 + rows[:, None] * sb2 + cols[None, :] * sb3,
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        s += bias.to(tl.float32)
    return tl.where(col_ok[None, :], s, float("-inf"))


@triton.jit
def _query(Q, b, h, rows, row_ok, dims, dim_ok, sq0, sq1, sq2, sq3):
    return tl.load(
        Q + b * sq0 + h * sq1 + rows[:, None] * sq2 + dims[None, :] * sq3,
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    ).to(tl.float32)


@triton.jit
def _stats_kernel(
    Q,
    K,
    V,
    BIAS,
    VBAR,
    NORMS,
    MAXN2,
    OUT,
    ROW_MAX,
    ROW_SUM,
    ROW_Z,
    sq0,
    sq1,
    sq2,
    sq3,
    sk0,
    sk1,
    sk2,
    sk3,
    sv0,
    sv1,
    sv2,
    sv3,
    sb0,
    sb1,
    sb2,
    sb3,
    so0,
    so1,
    so2,
    so3,
    H,
    N,
    D,
    scale,
    near_share,
    HAS_BIAS: tl.constexpr,
    BY_DISTANCE: tl.constexpr,
    BY_DEVIATION: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    DC: tl.constexpr,
):
    """Pass 1, one program per (query tile, input x head): output rows and row statistics."""
    tile, bh = tl.program_id(0), tl.program_id(1)
    # 64-bit offsets: a per-head matrix of a large batch has more than 2^31 elements.
    b, h = (bh // H).to(tl.int64), bh % H
    rows = tile * BM + tl.arange(0, BM)
    row_ok = rows < N
    dims = tl.arange(0, DP)
    dim_ok = dims < D
    q = _query(Q, b, h, rows, row_ok, dims, dim_ok, sq0, sq1, sq2, sq3)
    v_base = b * sv0 + h * sv1
    bar = bh * D
    if BY_DISTANCE:
        vi = _centred(V, VBAR, v_base, bar, rows, sv2, sv3, row_ok, dims, dim_ok)
        ni2 = tl.sum(vi * vi, axis=1)
        cutoff = near_share * (ni2 + tl.load(MAXN2 + bh))
    row_max = tl.full((BM,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BM,), tl.float32)
    rule_sum = tl.zeros((BM,), tl.float32)
    acc = tl.zeros((BM, DP), tl.float32)
    for start in range(0, N, BN):
        cols = start + tl.arange(0, BN)
        col_ok = cols < N
        # fmt: off
        s = _scores(
            K, BIAS, q, b, h, rows, row_ok, cols, col_ok, dims, dim_ok,
            sk0, sk1, sk2, sk3, sb0, sb1, sb2, sb3, scale, HAS_BIAS,
        )
        # fmt: on
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows with no key yet: nothing to rescale
        alpha = tl.exp(row_max - safe_max)
        p = tl.exp(s - safe_max[:, None])
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        v = tl.load(
            V + v_base + cols[:, None] * sv2 + dims[None, :] * sv3,
            mask=col_ok[:, None] & dim_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        if BY_DISTANCE or BY_DEVIATION:
            c = p
            if BY_DISTANCE:
                vj = _centred(V, VBAR, v_base, bar, cols, sv2, sv3, col_ok, dims, dim_ok)
                c = c * _distances(
                    V, VBAR, v_base, bar, sv2, sv3, rows, cols, row_ok, col_ok, vi, vj, cutoff, D, DP, DC
                )
            if BY_DEVIATION:
                c = c * tl.load(NORMS + bh * N + cols, mask=col_ok, other=0.0)[None, :]
            rule_sum = rule_sum * alpha + tl.sum(c, axis=1)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(
        OUT + b * so0 + h * so1 + rows[:, None] * so2 + dims[None, :] * so3,
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )
    # z_i = sum_j a_j (x_ij w_ij) + a_i, with w_ij = p_ij / row_sum_i and x_ij the distance or 1.
    if BY_DISTANCE or BY_DEVIATION:
        z = rule_sum / row_sum
    else:
        z = tl.full((BM,), 1.0, tl.float32)
    if BY_DEVIATION:
        z += tl.load(NORMS + bh * N + rows, mask=row_ok, other=0.0)
    else:
        z += 1.0
    tl.store(ROW_MAX + bh * N + rows, row_max, mask=row_ok)
    tl.store(ROW_SUM + bh * N + rows, row_sum, mask=row_ok)
    tl.store(ROW_Z + bh * N + rows, z, mask=row_ok)


@triton.jit
def _matrix_kernel(
    Q,
    K,
    V,
    BIAS,
    VBAR,
    NORMS,
    MAXN2,
    ROW_MAX,
    ROW_SUM,
    ROW_Z,
    MATRIX,
    sq0,
    sq1,
    sq2,
    sq3,
    sk0,
    sk1,
    sk2,
    sk3,
    sv0,
    sv1,
    sv2,
    sv3,
    sb0,
    sb1,
    sb2,
    sb3,
    sm0,
    sm1,
    sm2,
    sm3,
    H,
    N,
    D,
    scale,
    near_share,
    HAS_BIAS: tl.constexpr,
    BY_DISTANCE: tl.constexpr,
    BY_DEVIATION: tl.constexpr,
    MODE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    DP: tl.constexpr,
    DC: tl.constexpr,
):
    """Pass 2, one program per (key tile, query tile, input): every head's ``M`` tile, reduced over heads."""
    key_tile, tile = tl.program_id(0), tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)  # 64-bit offsets, as in pass 1
    rows = tile * BM + tl.arange(0, BM)
    row_ok = rows < N
    cols = key_tile * BN + tl.arange(0, BN)
    col_ok = cols < N
    dims = tl.arange(0, DP)
    dim_ok = dims < D
    diagonal = rows[:, None] == cols[None, :]
    if MODE == 1:
        acc = tl.full((BM, BN), float("-inf"), tl.float32)
    elif MODE == 2:
        acc = tl.full((BM, BN), float("inf"), tl.float32)
    else:
        acc = tl.zeros((BM, BN), tl.float32)
    for h in range(H):
        bh = b * H + h
        q = _query(Q, b, h, rows, row_ok, dims, dim_ok, sq0, sq1, sq2, sq3)
        # fmt: off
        s = _scores(
            K, BIAS, q, b, h, rows, row_ok, cols, col_ok, dims, dim_ok,
            sk0, sk1, sk2, sk3, sb0, sb1, sb2, sb3, scale, HAS_BIAS,
        )
        # fmt: on
        row_max = tl.load(ROW_MAX + bh * N + rows, mask=row_ok, other=0.0)
        safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        row_sum = tl.load(ROW_SUM + bh * N + rows, mask=row_ok, other=1.0)
        c = tl.exp(s - safe_max[:, None]) / row_sum[:, None]  # w_ij
        if BY_DISTANCE:
            v_base = b * sv0 + h * sv1
            bar = bh * D
            vi = _centred(V, VBAR, v_base, bar, rows, sv2, sv3, row_ok, dims, dim_ok)
            vj = _centred(V, VBAR, v_base, bar, cols, sv2, sv3, col_ok, dims, dim_ok)
            cutoff = near_share * (tl.sum(vi * vi, axis=1) + tl.load(MAXN2 + bh))
            c = c * _distances(V, VBAR, v_base, bar, sv2, sv3, rows, cols, row_ok, col_ok, vi, vj, cutoff, D, DP, DC)
        c = tl.where(diagonal, c + 1.0, c)
        if BY_DEVIATION:
            c = c * tl.load(NORMS + bh * N + cols, mask=col_ok, other=0.0)[None, :]
        z = tl.load(ROW_Z + bh * N + rows, mask=row_ok, other=1.0)
        # An empty row (a_i = 0 and nothing else) becomes the identity row, as row_divisors_ makes it.
        empty = z == 0.0
        c = tl.where(empty[:, None], tl.where(diagonal, 1.0, 0.0), c)
        m = c / tl.where(empty, 1.0, z)[:, None]
        if MODE == 0:
            acc += m
        elif MODE == 1:
            acc = tl.maximum(acc, m)
        elif MODE == 2:
            acc = tl.minimum(acc, m)
        else:
            tl.store(
                MATRIX + b * sm0 + h * sm1 + rows[:, None] * sm2 + cols[None, :] * sm3,
                m,
                mask=row_ok[:, None] & col_ok[None, :],
            )
    if MODE != 3:
        if MODE == 0:
            acc = acc / H
        tl.store(
            MATRIX + b * sm0 + rows[:, None] * sm2 + cols[None, :] * sm3, acc, mask=row_ok[:, None] & col_ok[None, :]
        )


def launch(
    query,
    key,
    value,
    bias,
    value_mean,
    norms,
    max_squared_norms,
    output,
    matrix,
    *,
    scale: float,
    by_distance: bool,
    by_deviation: bool,
    mode: str | None,
    block: int = 32,
) -> None:
    """Run both passes; every tensor is on one device, ``bias`` `(batch, heads, N, N)` (stride 0 where
    broadcast) or None, ``matrix`` `(batch, N, N)` for a fused ``mode``, `(batch, heads, N, N)` for None.

    ``value_mean`` `(batch, heads, head_dim)`, ``norms`` `(batch, heads, N)` (``||v_j - v_mean||``) and
    ``max_squared_norms`` `(batch, heads)` are float32 and contiguous; the statistics' scratch is allocated
    here.
    """
    import torch

    batch, heads, tokens, dim = query.shape
    stats = [torch.empty(batch, heads, tokens, device=query.device, dtype=torch.float32) for _ in range(3)]
    padded = max(16, triton.next_power_of_2(dim))
    chunk = min(padded, 8)
    has_bias = bias is not None
    bias_arg = bias if has_bias else norms  # any pointer: never read
    bias_strides = bias.stride() if has_bias else (0, 0, 0, 0)
    common = dict(
        HAS_BIAS=has_bias, BY_DISTANCE=by_distance, BY_DEVIATION=by_deviation, BM=block, BN=block, DP=padded, DC=chunk
    )
    tiles = triton.cdiv(tokens, block)
    _stats_kernel[(tiles, batch * heads)](
        query,
        key,
        value,
        bias_arg,
        value_mean,
        norms,
        max_squared_norms,
        output,
        *stats,
        *query.stride(),
        *key.stride(),
        *value.stride(),
        *bias_strides,
        *output.stride(),
        heads,
        tokens,
        dim,
        scale,
        NEAR_PAIR_SHARE,
        **common,
    )
    matrix_strides = matrix.stride() if matrix.dim() == 4 else (matrix.stride(0), 0, *matrix.stride()[1:])
    _matrix_kernel[(tiles, tiles, batch)](
        query,
        key,
        value,
        bias_arg,
        value_mean,
        norms,
        max_squared_norms,
        *stats,
        matrix,
        *query.stride(),
        *key.stride(),
        *value.stride(),
        *bias_strides,
        *matrix_strides,
        heads,
        tokens,
        dim,
        scale,
        NEAR_PAIR_SHARE,
        MODE=MODES[mode],
        **common,
    )
