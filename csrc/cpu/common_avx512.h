// What the two AVX-512 builds (isa_avx512.cpp, isa_avx512vnni.cpp) share. Included inside a build's namespace.
#pragma once

// The 16 values of two 8-lane halves as one vector.
inline __m512 join(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

// dequant_groups (see quant_kernels.inc): sixteen weights per vector, the product rounded before the
// offset is added, as gguf-py does.
inline void dequant_groups(const int8_t* q, const float* scale, const float* offset, int ngroups, float* dst) {
    for (int g = 0; g < ngroups; ++g) {
        const __m512 quants = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + kGroup * g))));
        _mm512_storeu_ps(dst + kGroup * g,
                         _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(scale[g]), quants), _mm512_set1_ps(offset[g])));
    }
}
