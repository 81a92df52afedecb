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

namespace oxide_cpu {
namespace avx2 {
namespace {

// Four partial sums per activation row (a group's low and high eight weights, even and odd groups):
// an FMA's result is ready only after a few cycles, so one running sum would stall every group.
struct Acc {
    __m256 v[4];
};

inline void acc_zero(Acc& a) {
    for (__m256& v : a.v) v = _mm256_setzero_ps();
}

inline float acc_total(const Acc& a) {
    const __m256 all = _mm256_add_ps(_mm256_add_ps(a.v[0], a.v[1]), _mm256_add_ps(a.v[2], a.v[3]));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// The sixteen quants of group g as two vectors of eight floats.
inline void group_quants(const int8_t* q, int g, __m256& lo, __m256& hi) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kGroup * g));
    lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
}

// The sixteen weights of group g, scale[g] * q + offset[g], as two vectors of eight floats.
inline void group_weights(const int8_t* q, const float* scale, const float* offset, int g, __m256& lo, __m256& hi) {
    group_quants(q, g, lo, hi);
    const __m256 s = _mm256_broadcast_ss(scale + g), o = _mm256_broadcast_ss(offset + g);
    lo = _mm256_fmadd_ps(s, lo, o);
    hi = _mm256_fmadd_ps(s, hi, o);
}

template <int R>
inline void dot_groups(const int8_t* q, const float* scale, const float* offset, int ngroups, const float* const* x,
                       Acc* acc) {
    constexpr int C = R == 1 ? 2 : 1;   // group parities per row; times low/high halves: 2C chains per row
    __m256 sum[R][2 * C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < 2 * C; ++c) sum[r][c] = acc[r].v[c];
    int g = 0;
    for (; g + C <= ngroups; g += C) {
        for (int c = 0; c < C; ++c) {
            __m256 lo, hi;
            group_weights(q, scale, offset, g + c, lo, hi);
            for (int r = 0; r < R; ++r) {
                const float* xg = x[r] + kGroup * (g + c);
                sum[r][2 * c] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xg), sum[r][2 * c]);
                sum[r][2 * c + 1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xg + 8), sum[r][2 * c + 1]);
            }
        }
    }
    for (; g < ngroups; ++g) {
        __m256 lo, hi;
        group_weights(q, scale, offset, g, lo, hi);
        for (int r = 0; r < R; ++r) {
            const float* xg = x[r] + kGroup * g;
            sum[r][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xg), sum[r][0]);
            sum[r][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xg + 8), sum[r][1]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < 2 * C; ++c) acc[r].v[c] = sum[r][c];
}

template <class F, int R>
inline void dot_direct(const uint8_t* blocks, int64_t nblocks, const float* const* x, Acc* acc) {
    // Per block and row: two partial dots of 16 quants each (a multiply and a fused multiply-add),
    // then sum += d * partial; the sums rotate over chains so blocks do not wait on each other.
    constexpr int C = R == 1 ? 4 : 2;
    __m256 sum[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) sum[r][c] = acc[r].v[c];
    auto eighth = [](__m128i half, int upper) {   // int8 lanes 0-7 (or 8-15) of half, as floats
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(upper ? _mm_srli_si128(half, 8) : half));
    };
    auto step = [&](const int64_t b, const int c) {   // c: the first of the two chains this block feeds
        const uint8_t* blk = blocks + b * F::kBytes;
        const __m256 d = _mm256_set1_ps(half_to_float(blk));
        const __m256i quants = F::quants(blk);
        const __m128i low = _mm256_castsi256_si128(quants), high = _mm256_extracti128_si256(quants, 1);
        const __m256 q0 = eighth(low, 0), q1 = eighth(low, 1), q2 = eighth(high, 0), q3 = eighth(high, 1);
        for (int r = 0; r < R; ++r) {
            const float* xb = x[r] + 32 * b;
            const __m256 lo = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), _mm256_mul_ps(q0, _mm256_loadu_ps(xb)));
            const __m256 hi = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), _mm256_mul_ps(q2, _mm256_loadu_ps(xb + 16)));
            sum[r][c] = _mm256_fmadd_ps(d, lo, sum[r][c]);
            sum[r][c + 1] = _mm256_fmadd_ps(d, hi, sum[r][c + 1]);
        }
    };
    int64_t b = 0;
    for (; b + C / 2 <= nblocks; b += C / 2)
        for (int c = 0; c < C / 2; ++c) step(b + c, 2 * c);
    for (; b < nblocks; ++b) step(b, 0);
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r].v[c] = sum[r][c];
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

const KernelTable table = {"avx2", gemv_any, dequant_any};

}  // namespace avx2
}  // namespace oxide_cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
