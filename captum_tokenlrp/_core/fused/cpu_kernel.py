"""C++ source of the fused CPU kernel (see :mod:`.cpu`), kept in a module so that it ships with the package."""

SOURCE = r"""
// The fused CPU kernel of the built-in rules (i)-(iv): see cpu.py for why it exists and how it is built.
//
// One task is a tile of query rows of one input. For every head the tile's scores (and, for the
// value-distance weight, the Gram matrix of the centred values) come from one GEMM each into a
// buffer that stays in the core's cache; one loop over each row then takes the softmax, the value
// distances, the rule's contributions, their row sum and the division, and adds the row to the
// fused matrix (or writes it, per head); the layer output is one more GEMM from the probabilities.
// The fused matrix is written once, while its rows are still in cache.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// exp(x) for float32 without a library call, so that the row loops vectorise: x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) from its degree-6 Taylor polynomial (relative error < 2e-7 on that interval),
// 2^n put into the exponent bits. Below -87.3 (and for -inf: masked scores) the result is 0.
inline float exp_float(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f;      // ln 2 split so that n * ln2_hi is exact
    const float ln2_lo = -2.12194440e-4f;
    const float low = x > -87.3f ? x : -87.3f;
    const float clamped = low < 88.7f ? low : 88.7f;
    float n = std::floor(clamped * log2e + 0.5f);
    float r = clamped - n * ln2_hi - n * ln2_lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return x < -87.3f ? 0.0f : p * scale;
}


// The same exp on W lanes at once, with GCC/Clang vector types: the compiler's auto-vectoriser does
// not reliably vectorise a reduction loop around it (one of its copies of the loop stays scalar).
#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float floats __attribute__((vector_size(W * sizeof(float))));
typedef int32_t ints __attribute__((vector_size(W * sizeof(float))));

inline floats splat(float x) {
    floats v;
    for (int l = 0; l < W; ++l) v[l] = x;
    return v;
}

inline floats load(const float* p) {
    floats v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

inline void store(float* p, floats v) { std::memcpy(p, &v, sizeof(v)); }

inline float lanes_sum(floats v) {
    float total = 0.0f;
    for (int l = 0; l < W; ++l) total += v[l];
    return total;
}

inline floats exp_floats(floats x) {
    const floats low = splat(-87.3f), high = splat(88.7f);
    floats clamped = x > low ? x : low;
    clamped = clamped < high ? clamped : high;
    // Round x log2(e) to the nearest integer n with the 1.5 * 2^23 trick: n sits in the low mantissa bits.
    const floats magic = splat(12582912.0f);
    const floats shifted = clamped * splat(1.44269504088896341f) + magic;
    const floats n = shifted - magic;
    const floats r = clamped - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
    floats p = splat(1.0f / 720.0f);
    p = p * r + splat(1.0f / 120.0f);
    p = p * r + splat(1.0f / 24.0f);
    p = p * r + splat(1.0f / 6.0f);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    ints magic_bits, shifted_bits;
    std::memcpy(&magic_bits, &magic, sizeof(magic));
    std::memcpy(&shifted_bits, &shifted, sizeof(shifted));
    const ints exponent = ((shifted_bits - magic_bits) + 127) << 23;
    floats scale;
    std::memcpy(&scale, &exponent, sizeof(scale));
    return x < low ? splat(0.0f) : p * scale;
}

}  // namespace

// q, k, v: float32 contiguous (B, H, N, D), q already scaled; centred: (B, H, N, D) v - v_mean (or empty);
// norms: (B, H, N) ||v_j - v_mean|| (or empty); bias: float32 (B, H, N, N), any strides (or empty);
// mode 0 mean, 1 max, 2 min, 3 every head. Returns {output (B, H, N, D), matrix}.
std::vector<at::Tensor> fused_rule_layer(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor centred,
                                         at::Tensor norms, at::Tensor bias, bool by_distance, bool by_deviation,
                                         int64_t mode, int64_t tile_rows, double near_share) {
    // The GEMMs below are the engine's own, not the user's: no Python dispatch mode may see them
    // (it would be called from worker threads that do not hold the interpreter lock).
    c10::impl::ExcludeDispatchKeyGuard no_python(
        c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot}));
    at::NoGradGuard no_grad;
    const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
    auto options = q.options();
    at::Tensor output = at::empty({B, H, N, D}, options);
    at::Tensor matrix = mode == 3 ? at::empty({B, H, N, N}, options) : at::empty({B, N, N}, options);
    const bool has_bias = bias.defined() && bias.numel() > 0;
    const int64_t TM = std::max<int64_t>(1, std::min<int64_t>(tile_rows, N));
    const int64_t tiles = (N + TM - 1) / TM;
    const float* norm_data = (by_distance || by_deviation) ? norms.data_ptr<float>() : nullptr;
    const float* centred_data = by_distance ? centred.data_ptr<float>() : nullptr;
    float* matrix_data = matrix.data_ptr<float>();
    const float* bias_data = has_bias ? bias.data_ptr<float>() : nullptr;
    const int64_t bs0 = has_bias ? bias.stride(0) : 0, bs1 = has_bias ? bias.stride(1) : 0;
    const int64_t bs2 = has_bias ? bias.stride(2) : 0, bs3 = has_bias ? bias.stride(3) : 0;

    at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> probabilities(TM * N), contributions(TM * N), squared_norms(N);
        at::Tensor scores_view = at::from_blob(probabilities.data(), {TM, N}, options);
        at::Tensor gram_view = at::from_blob(contributions.data(), {TM, N}, options);
        for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / tiles, first = (task % tiles) * TM, rows = std::min(TM, N - first);
            at::Tensor scores = scores_view.narrow(0, 0, rows), gram = gram_view.narrow(0, 0, rows);
            for (int64_t h = 0; h < H; ++h) {
                at::mm_out(scores, q[b][h].narrow(0, first, rows), k[b][h].t());
                const float* a = norm_data == nullptr ? nullptr : norm_data + (b * H + h) * N;
                const float* vc = centred_data == nullptr ? nullptr : centred_data + (b * H + h) * N * D;
                float max_squared = 0.0f;
                if (by_distance) {
                    at::Tensor block = centred[b][h];
                    at::mm_out(gram, block.narrow(0, first, rows), block.t());
                    for (int64_t j = 0; j < N; ++j) {
                        squared_norms[j] = a[j] * a[j];
                        max_squared = std::max(max_squared, squared_norms[j]);
                    }
                }
                for (int64_t r = 0; r < rows; ++r) {
                    const int64_t i = first + r;
                    float* __restrict p = probabilities.data() + r * N;
                    float* __restrict c = contributions.data() + r * N;
                    // 1. bias and row maximum
                    float top = -std::numeric_limits<float>::infinity();
                    if (has_bias) {
                        const float* bias_row = bias_data + b * bs0 + h * bs1 + i * bs2;
                        if (bs3 == 1) {
#pragma omp simd reduction(max : top)
                            for (int64_t j = 0; j < N; ++j) {
                                const float x = p[j] + bias_row[j];
                                p[j] = x;
                                top = x > top ? x : top;
                            }
                        } else {
                            for (int64_t j = 0; j < N; ++j) {
                                p[j] += bias_row[j * bs3];
                                top = p[j] > top ? p[j] : top;
                            }
                        }
                    } else {
#pragma omp simd reduction(max : top)
                        for (int64_t j = 0; j < N; ++j) top = p[j] > top ? p[j] : top;
                    }
                    if (top == -std::numeric_limits<float>::infinity()) top = 0.0f;
                    // 2. unnormalised probabilities and their sum
                    floats lanes = splat(0.0f);
                    const floats shift = splat(top);
                    int64_t j = 0;
                    for (; j + W <= N; j += W) {
                        const floats e = exp_floats(load(p + j) - shift);
                        store(p + j, e);
                        lanes += e;
                    }
                    float total = lanes_sum(lanes);
                    for (; j < N; ++j) {
                        p[j] = exp_float(p[j] - top);
                        total += p[j];
                    }
                    const float inverse = 1.0f / total;
                    // 3. squared value distances (Gram identity), and the pairs it cannot resolve
                    if (by_distance) {
                        const float own = squared_norms[i];
                        const float cutoff = static_cast<float>(near_share) * (own + max_squared);
                        const float* __restrict n2 = squared_norms.data();
                        float nearest = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : nearest)
                        for (int64_t j = 0; j < N; ++j) {
                            const float x = own + n2[j] - 2.0f * c[j];
                            c[j] = x;
                            const float off = j == i ? std::numeric_limits<float>::infinity() : x;
                            nearest = off < nearest ? off : nearest;
                        }
                        if (nearest < cutoff) {  // rare: recompute those pairs from the differences
                            for (int64_t j = 0; j < N; ++j) {
                                if (c[j] < cutoff && j != i) {
                                    float exact = 0.0f;
                                    for (int64_t d = 0; d < D; ++d) {
                                        const float difference = vc[i * D + d] - vc[j * D + d];
                                        exact += difference * difference;
                                    }
                                    c[j] = exact;
                                }
                            }
                        }
                    }
                    // 4. w_ij (kept for the output GEMM), z_ij = a_j x_ij w_ij and their sum
                    float z = 0.0f;
                    if (by_distance && by_deviation) {
#pragma omp simd reduction(+ : z)
                        for (int64_t j = 0; j < N; ++j) {
                            const float w = p[j] * inverse;
                            p[j] = w;
                            const float squared = c[j] > 0.0f ? c[j] : 0.0f;
                            const float x = std::sqrt(squared) * w * a[j];
                            c[j] = x;
                            z += x;
                        }
                    } else if (by_distance) {
#pragma omp simd reduction(+ : z)
                        for (int64_t j = 0; j < N; ++j) {
                            const float w = p[j] * inverse;
                            p[j] = w;
                            const float squared = c[j] > 0.0f ? c[j] : 0.0f;
                            const float x = std::sqrt(squared) * w;
                            c[j] = x;
                            z += x;
                        }
                    } else if (by_deviation) {
#pragma omp simd reduction(+ : z)
                        for (int64_t j = 0; j < N; ++j) {
                            const float w = p[j] * inverse;
                            p[j] = w;
                            const float x = w * a[j];
                            c[j] = x;
                            z += x;
                        }
                    } else {
#pragma omp simd reduction(+ : z)
                        for (int64_t j = 0; j < N; ++j) {
                            const float w = p[j] * inverse;
                            p[j] = w;
                            c[j] = w;
                            z += w;
                        }
                    }
                    // The diagonal: x_ii w_ii + delta_ii, times a_i (x_ii = ||v_i - v_i|| = 0 by distance).
                    const float own_activation = by_deviation ? a[i] : 1.0f;
                    const float diagonal = ((by_distance ? 0.0f : p[i]) + 1.0f) * own_activation;
                    z += diagonal - c[i];
                    c[i] = diagonal;
                    if (z == 0.0f) {  // a_i = 0 and nothing else: the identity row
                        c[i] = 1.0f;
                        z = 1.0f;
                    }
                    // 5. the row of M, into the kept matrix
                    const float share = mode == 0 ? 1.0f / (z * H) : 1.0f / z;
                    float* __restrict target =
                        mode == 3 ? matrix_data + ((b * H + h) * N + i) * N : matrix_data + (b * N + i) * N;
                    if (mode == 3 || h == 0) {
#pragma omp simd
                        for (int64_t j = 0; j < N; ++j) target[j] = c[j] * share;
                    } else if (mode == 0) {
#pragma omp simd
                        for (int64_t j = 0; j < N; ++j) target[j] += c[j] * share;
                    } else if (mode == 1) {
#pragma omp simd
                        for (int64_t j = 0; j < N; ++j) {
                            const float x = c[j] * share;
                            target[j] = x > target[j] ? x : target[j];
                        }
                    } else {
#pragma omp simd
                        for (int64_t j = 0; j < N; ++j) {
                            const float x = c[j] * share;
                            target[j] = x < target[j] ? x : target[j];
                        }
                    }
                }
                at::Tensor out = output[b][h].narrow(0, first, rows);
                at::mm_out(out, scores, v[b][h]);
            }
            if (mode == 1 || mode == 2) {  // max, min: renormalise the fused rows while they are in cache
                for (int64_t r = 0; r < rows; ++r) {
                    const int64_t i = first + r;
                    float* target = matrix_data + (b * N + i) * N;
                    float total = 0.0f;
#pragma omp simd reduction(+ : total)
                    for (int64_t j = 0; j < N; ++j) total += target[j];
                    if (total == 0.0f) {
                        target[i] = 1.0f;
                        total = 1.0f;
                    }
                    const float inverse = 1.0f / total;
#pragma omp simd
                    for (int64_t j = 0; j < N; ++j) target[j] *= inverse;
                }
            }
        }
    });
    return {output, matrix};
}
"""
