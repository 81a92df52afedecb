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
#include "quant_formats.h"

namespace oxide_cpu {
namespace avx512 {
namespace {

struct Acc {
    __m512 v;
};

inline void acc_zero(Acc& a) { a.v = _mm512_setzero_ps(); }

inline float acc_total(const Acc& a) {
    const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(a.v),
                                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <int R>
inline void dot_groups(const int8_t* q, const float* scale, int ngroups, const float* const* x, Acc* acc) {
    __m512 sum[R];
    for (int r = 0; r < R; ++r) sum[r] = acc[r].v;
    for (int g = 0; g < ngroups; ++g) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kGroup * g));
        const __m512 w = _mm512_mul_ps(_mm512_set1_ps(scale[g]), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)));
        for (int r = 0; r < R; ++r) sum[r] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x[r] + kGroup * g), sum[r]);
    }
    for (int r = 0; r < R; ++r) acc[r].v = sum[r];
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
