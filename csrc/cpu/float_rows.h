// The activations as the float builds (AVX2, AVX-512) read them: x itself, plus the sums of x over
// each group of 16 weights, by which the offsets (mins) of a block multiply. Included after
// quant_formats.h by isa_avx2.cpp and isa_avx512.cpp, inside their namespaces.
#pragma once

struct RowView {
    const float* x;
    const float* sums;   // sums[g] = x[16g] + ... + x[16g + 15]
};

inline size_t scratch_bytes(int64_t M, int64_t K) { return size_t(M) * size_t(K / kGroup) * sizeof(float); }

inline float* row_sums(const Activations& x, int64_t m) {
    return reinterpret_cast<float*>(x.scratch) + m * (x.K / kGroup);
}

inline void prepare_rows(const Activations& x, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
        const float* row = x.x + m * x.stride;
        float* sums = row_sums(x, m);
        for (int64_t g = 0; g < x.K / kGroup; ++g) {
            float s = 0.f;
            for (int i = 0; i < kGroup; ++i) s += row[kGroup * g + i];
            sums[g] = s;
        }
    }
}

inline RowView row_view(const Activations& x, int64_t m) { return {x.x + m * x.stride, row_sums(x, m)}; }
