// AVX2 + FMA build of the quantized kernels, chosen at run time when the CPU has them; the rest of
// the extension is compiled for the x86-64 baseline, so the module loads on any x86-64.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <cstdint>
#include <cstring>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#endif

#define OXIDE_F16C 1
#define OXIDE_UNPACK_AVX2 1
#include "quant_formats.h"
#include "units_avx2.h"

namespace oxide_cpu {
namespace avx2 {
namespace {

#include "float_rows.h"

// Per activation row: two partial sums (a unit's first and second sixteen weights: an FMA's result is
// ready only after a few cycles, so one running sum would make consecutive units wait on each other),
// the offsets of the super-block types (16 groups, two vectors) and those of the 32-weight types (a scalar).
struct Acc {
    __m256 v[2];
    __m256 offsets;
    float block_offsets;
};

inline void acc_zero(Acc& a) {
    a.v[0] = a.v[1] = a.offsets = _mm256_setzero_ps();
    a.block_offsets = 0.f;
}

inline float acc_total(const Acc& a) {
    const __m256 all = _mm256_add_ps(_mm256_add_ps(a.v[0], a.v[1]), a.offsets);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s) + a.block_offsets;
}

// The sixteen quants of group g as two vectors of eight floats.
inline void group_quants(const int8_t* q, int g, __m256& lo, __m256& hi) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kGroup * g));
    lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
}

// sum[r][0] += s0 * (q[0..15] . x), sum[r][1] += s1 * (q[16..31] . x) for one 32-weight unit at rows[r].x + first.
template <int R>
inline void dot_unit(__m256i q, __m256 s0, __m256 s1, const RowView* rows, int64_t first, __m256 (&sum)[R][2]) {
    auto eighth = [](__m128i half, int upper) {   // int8 lanes 0-7 (or 8-15) of half, as floats
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(upper ? _mm_srli_si128(half, 8) : half));
    };
    const __m128i low = _mm256_castsi256_si128(q), high = _mm256_extracti128_si256(q, 1);
    const __m256 q0 = eighth(low, 0), q1 = eighth(low, 1), q2 = eighth(high, 0), q3 = eighth(high, 1);
    for (int r = 0; r < R; ++r) {
        const float* xb = rows[r].x + first;
        const __m256 t0 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), _mm256_mul_ps(q0, _mm256_loadu_ps(xb)));
        const __m256 t1 = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), _mm256_mul_ps(q2, _mm256_loadu_ps(xb + 16)));
        sum[r][0] = _mm256_fmadd_ps(s0, t0, sum[r][0]);
        sum[r][1] = _mm256_fmadd_ps(s1, t1, sum[r][1]);
    }
}

template <class F, int R>
inline void dot_units(const uint8_t* blocks, int64_t nblocks, const RowView* rows, Acc* acc) {
    __m256 sum[R][2];
    for (int r = 0; r < R; ++r) {
        sum[r][0] = acc[r].v[0];
        sum[r][1] = acc[r].v[1];
    }
    if constexpr (F::kBlock == 32) {
        for (int64_t b = 0; b < nblocks; ++b) {
            const uint8_t* block = blocks + b * F::kBytes;
            const __m256 s = _mm256_set1_ps(half_to_float(block));
            dot_unit<R>(Units<F>::quants(block), s, s, rows, 32 * b, sum);
            if constexpr (F::kOffset) {
                const float m = half_to_float(block + 2);
                for (int r = 0; r < R; ++r) acc[r].block_offsets += m * (rows[r].sums[2 * b] + rows[r].sums[2 * b + 1]);
            }
        }
    } else {
        BlockScales bs;
        for (int64_t b = 0; b < nblocks; ++b) {
            const uint8_t* block = blocks + b * F::kBytes;
            Units<F>::scales(block, bs);
            Units<F>::template each<false>(block, [&](__m256i q, int u) {
                dot_unit<R>(q, group_value(bs.scale, 2 * u), group_value(bs.scale, 2 * u + 1), rows,
                            256 * b + 32 * u, sum);
            });
            if constexpr (F::kOffset) {
                const __m256 lo = bs.offset[0], hi = bs.offset[1];
                for (int r = 0; r < R; ++r) {
                    const float* s = rows[r].sums + 16 * b;
                    acc[r].offsets = _mm256_fmadd_ps(lo, _mm256_loadu_ps(s), acc[r].offsets);
                    acc[r].offsets = _mm256_fmadd_ps(hi, _mm256_loadu_ps(s + 8), acc[r].offsets);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        acc[r].v[0] = sum[r][0];
        acc[r].v[1] = sum[r][1];
    }
}

inline void dequant_groups(const int8_t* q, const float* scale, const float* offset, int ngroups, float* dst) {
    for (int g = 0; g < ngroups; ++g) {
        __m256 lo, hi;
        group_quants(q, g, lo, hi);
        const __m256 s = _mm256_broadcast_ss(scale + g), o = _mm256_broadcast_ss(offset + g);
        _mm256_storeu_ps(dst + kGroup * g, _mm256_add_ps(_mm256_mul_ps(s, lo), o));
        _mm256_storeu_ps(dst + kGroup * g + 8, _mm256_add_ps(_mm256_mul_ps(s, hi), o));
    }
}

}  // namespace

#include "quant_kernels.inc"

const KernelTable table = {"avx2", "float32", scratch_bytes, gemv_any, dequant_any};

}  // namespace avx2
}  // namespace oxide_cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
