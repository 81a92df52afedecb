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
#include "quant_formats.h"

namespace oxide_cpu {
namespace avx2 {
namespace {

struct Acc {
    __m256 v;
};

inline void acc_zero(Acc& a) { a.v = _mm256_setzero_ps(); }

inline float acc_total(const Acc& a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Sixteen int8 quants as two vectors of eight floats.
inline void load_group(const int8_t* q, __m256& lo, __m256& hi) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
}

template <int R>
inline void dot_groups(const int8_t* q, const float* scale, int ngroups, const float* const* x, Acc* acc) {
    __m256 sum[R];
    for (int r = 0; r < R; ++r) sum[r] = acc[r].v;
    for (int g = 0; g < ngroups; ++g) {
        __m256 lo, hi;
        load_group(q + kGroup * g, lo, hi);
        const __m256 s = _mm256_broadcast_ss(scale + g);
        lo = _mm256_mul_ps(lo, s);
        hi = _mm256_mul_ps(hi, s);
        for (int r = 0; r < R; ++r) {
            const float* xg = x[r] + kGroup * g;
            sum[r] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xg), sum[r]);
            sum[r] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xg + 8), sum[r]);
        }
    }
    for (int r = 0; r < R; ++r) acc[r].v = sum[r];
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
