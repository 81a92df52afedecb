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

namespace oxide_cpu {
namespace avx512 {
namespace {

// Four partial sums per activation row: an FMA's result is ready only after a few cycles, so one
// running sum would stall every group on the previous one.
struct Acc {
    __m512 v[4];
};

inline void acc_zero(Acc& a) {
    for (__m512& v : a.v) v = _mm512_setzero_ps();
}

inline float acc_total(const Acc& a) {
    const __m512 all = _mm512_add_ps(_mm512_add_ps(a.v[0], a.v[1]), _mm512_add_ps(a.v[2], a.v[3]));
    const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(all),
                                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(all), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline __m512 group_quants(const int8_t* q, int g) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kGroup * g))));
}

// The sixteen weights of group g: scale[g] * q[16g .. 16g + 15] + offset[g].
inline __m512 group_weights(const int8_t* q, const float* scale, const float* offset, int g) {
    return _mm512_fmadd_ps(_mm512_set1_ps(scale[g]), group_quants(q, g), _mm512_set1_ps(offset[g]));
}

template <int R>
inline void dot_groups(const int8_t* q, const float* scale, const float* offset, int ngroups, const float* const* x,
                       Acc* acc) {
    constexpr int C = R == 1 ? 4 : (R == 2 ? 2 : 1);   // chains per row: R * C independent sums
    __m512 sum[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) sum[r][c] = acc[r].v[c];
    int g = 0;
    for (; g + C <= ngroups; g += C) {
        for (int c = 0; c < C; ++c) {
            const __m512 w = group_weights(q, scale, offset, g + c);
            for (int r = 0; r < R; ++r) sum[r][c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x[r] + kGroup * (g + c)), sum[r][c]);
        }
    }
    for (; g < ngroups; ++g) {
        const __m512 w = group_weights(q, scale, offset, g);
        for (int r = 0; r < R; ++r) sum[r][0] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x[r] + kGroup * g), sum[r][0]);
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r].v[c] = sum[r][c];
}

template <class F, int R>
inline void dot_direct(const uint8_t* blocks, int64_t nblocks, const float* const* x, Acc* acc) {
    // Per block and row: t = q . x over the 32 quants (a multiply and a fused multiply-add), then
    // sum += d * t; the sums rotate over C chains so consecutive blocks do not wait on each other.
    constexpr int C = R == 1 ? 4 : (R == 2 ? 2 : 1);
    __m512 sum[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) sum[r][c] = acc[r].v[c];
    auto step = [&](const int64_t b, const int c) {
        const uint8_t* blk = blocks + b * F::kBytes;
        const __m512 d = _mm512_set1_ps(half_to_float(blk));
        const __m256i quants = F::quants(blk);
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(quants)));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(quants, 1)));
        for (int r = 0; r < R; ++r) {
            const float* xb = x[r] + 32 * b;
            const __m512 t = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(q0, _mm512_loadu_ps(xb)));
            sum[r][c] = _mm512_fmadd_ps(d, t, sum[r][c]);
        }
    };
    int64_t b = 0;
    for (; b + C <= nblocks; b += C)
        for (int c = 0; c < C; ++c) step(b + c, c);
    for (; b < nblocks; ++b) step(b, 0);
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r].v[c] = sum[r][c];
}

inline void dequant_groups(const int8_t* q, const float* scale, const float* offset, int ngroups, float* dst) {
    for (int g = 0; g < ngroups; ++g)
        _mm512_storeu_ps(dst + kGroup * g, _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(scale[g]), group_quants(q, g)),
                                                         _mm512_set1_ps(offset[g])));
}

}  // namespace

#include "quant_kernels.inc"

const KernelTable table = {"avx512", gemv_any, dequant_any};

}  // namespace avx512
}  // namespace oxide_cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
