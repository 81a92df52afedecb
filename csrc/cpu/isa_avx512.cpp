// AVX-512 (F, BW, VL) build of the quantized kernels: one group of sixteen weights per vector.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <cstdint>
#include <cstring>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#endif

#define OXIDE_F16C 1
#define OXIDE_UNPACK_AVX2 1
#include "quant_formats.h"
#include "units_avx2.h"

namespace oxide_cpu {
namespace avx512 {
namespace {

#include "float_rows.h"
#include "common_avx512.h"

// Per activation row: two partial sums (alternate units, or a unit's two halves when they have their
// own scales; an FMA's result is ready only after a few cycles, so one running sum would stall), the
// offsets of the super-block types (16 groups per vector) and those of the 32-weight types (a scalar).
struct Acc {
    __m512 v[2];
    __m512 offsets;
    float block_offsets;
};

inline void acc_zero(Acc& a) {
    a.v[0] = a.v[1] = a.offsets = _mm512_setzero_ps();
    a.block_offsets = 0.f;
}

inline float acc_total(const Acc& a) {
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a.v[0], a.v[1]), a.offsets)) + a.block_offsets;
}

// sum[r][c] += scale_lo * (q_lo . x_lo) + scale_hi * (q_hi . x_hi) for one 32-weight unit at rows[r].x + first,
// its quants q0 (weights 0-15) and q1 (16-31) as floats; one multiply when both halves share a scale.
template <bool kShared, int R>
inline void dot_unit(__m512 q0, __m512 q1, __m512 s0, __m512 s1, const RowView* rows, int64_t first, int c,
                     __m512 (&sum)[R][2]) {
    for (int r = 0; r < R; ++r) {
        const __m512 p0 = _mm512_mul_ps(q0, _mm512_loadu_ps(rows[r].x + first));
        if constexpr (kShared) {
            sum[r][c] = _mm512_fmadd_ps(s0, _mm512_fmadd_ps(q1, _mm512_loadu_ps(rows[r].x + first + 16), p0), sum[r][c]);
        } else {
            sum[r][0] = _mm512_fmadd_ps(s0, p0, sum[r][0]);
            sum[r][1] = _mm512_fmadd_ps(s1, _mm512_mul_ps(q1, _mm512_loadu_ps(rows[r].x + first + 16)), sum[r][1]);
        }
    }
}

inline __m512 widen_low(__m256i q) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))); }
inline __m512 widen_high(__m256i q) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))); }

template <class F, int R>
inline void dot_units(const uint8_t* blocks, int64_t nblocks, const RowView* rows, Acc* acc) {
    __m512 sum[R][2];
    for (int r = 0; r < R; ++r) {
        sum[r][0] = acc[r].v[0];
        sum[r][1] = acc[r].v[1];
    }
    if constexpr (F::kBlock == 32) {
        for (int64_t b = 0; b < nblocks; ++b) {
            const uint8_t* block = blocks + b * F::kBytes;
            const __m256i q = Units<F>::quants(block);
            const __m512 s = _mm512_set1_ps(half_to_float(block));
            dot_unit<true, R>(widen_low(q), widen_high(q), s, s, rows, 32 * b, int(b & 1), sum);
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
            const __m512 scales = join(bs.scale[0], bs.scale[1]);
            Units<F>::template each<false>(block, [&](__m256i q, int u) {
                const __m512 s0 = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * u), scales);
                const __m512 s1 = _mm512_permutexvar_ps(_mm512_set1_epi32(2 * u + 1), scales);
                dot_unit<Units<F>::kSharedScale, R>(widen_low(q), widen_high(q), s0, s1, rows, 256 * b + 32 * u, u & 1, sum);
            });
            if constexpr (F::kOffset) {
                const __m512 offsets = join(bs.offset[0], bs.offset[1]);
                for (int r = 0; r < R; ++r)
                    acc[r].offsets = _mm512_fmadd_ps(offsets, _mm512_loadu_ps(rows[r].sums + 16 * b), acc[r].offsets);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        acc[r].v[0] = sum[r][0];
        acc[r].v[1] = sum[r][1];
    }
}

}  // namespace

#include "quant_kernels.inc"

const KernelTable table = {"avx512", "float32", scratch_bytes, gemv_any, dequant_any};

}  // namespace avx512
}  // namespace oxide_cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
