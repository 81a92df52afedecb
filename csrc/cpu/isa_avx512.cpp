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

// Two partial sums per activation row (alternate units, or a unit's two halves when they have their
// own scales): an FMA's result is ready only after a few cycles, so one running sum would stall.
struct Acc {
    __m512 v[2];
};

inline void acc_zero(Acc& a) {
    for (__m512& v : a.v) v = _mm512_setzero_ps();
}

inline float acc_total(const Acc& a) {
    const __m512 all = _mm512_add_ps(a.v[0], a.v[1]);
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

template <class F, int R>
inline void dot_units(const uint8_t* blocks, int64_t nblocks, const float* const* x, const float* const* sums, Acc* acc,
                      float* off) {
    __m512 sum[R][2];
    for (int r = 0; r < R; ++r) {
        sum[r][0] = acc[r].v[0];
        sum[r][1] = acc[r].v[1];
    }
    for (int64_t b = 0; b < nblocks; ++b) {
        Units<F>::each(blocks + b * F::kBytes, [&](const Unit& u, int index) {
            const int64_t first = b * F::kBlock + 32 * index;
            const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(u.q)));
            const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(u.q, 1)));
            const __m512 s0 = _mm512_set1_ps(u.scale[0]), s1 = _mm512_set1_ps(u.scale[1]);
            for (int r = 0; r < R; ++r) {
                const __m512 p0 = _mm512_mul_ps(q0, _mm512_loadu_ps(x[r] + first));
                if constexpr (Units<F>::kSharedScale) {   // one scale: q . x over all 32, scaled once
                    const int c = index & 1;               // alternate sums, so that units do not wait
                    const __m512 t = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x[r] + first + 16), p0);
                    sum[r][c] = _mm512_fmadd_ps(s0, t, sum[r][c]);
                } else {
                    sum[r][0] = _mm512_fmadd_ps(s0, p0, sum[r][0]);
                    sum[r][1] = _mm512_fmadd_ps(s1, _mm512_mul_ps(q1, _mm512_loadu_ps(x[r] + first + 16)), sum[r][1]);
                }
                if constexpr (F::kOffset)
                    off[r] += u.offset[0] * sums[r][first / kGroup] + u.offset[1] * sums[r][first / kGroup + 1];
            }
        });
    }
    for (int r = 0; r < R; ++r) {
        acc[r].v[0] = sum[r][0];
        acc[r].v[1] = sum[r][1];
    }
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
