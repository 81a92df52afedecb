// Portable build of the quantized kernels: plain C++ that the compiler vectorises for the target's
// baseline (SSE2 on x86-64, NEON on AArch64).
#include "kernels.h"
#include "quant_formats.h"

namespace oxide_cpu {
namespace generic {
namespace {

struct Acc {
    float lane[kGroup];
};

inline void acc_zero(Acc& a) {
    for (float& v : a.lane) v = 0.f;
}

inline float acc_total(const Acc& a) {
    float s = 0.f;
    for (float v : a.lane) s += v;
    return s;
}

template <int R>
inline void dot_groups(const int8_t* q, const float* scale, const float* offset, int ngroups, const float* const* x,
                       Acc* acc) {
    for (int g = 0; g < ngroups; ++g) {
        float w[kGroup];
        for (int i = 0; i < kGroup; ++i) w[i] = scale[g] * float(q[kGroup * g + i]) + offset[g];
        for (int r = 0; r < R; ++r) {
            const float* xg = x[r] + kGroup * g;
            for (int i = 0; i < kGroup; ++i) acc[r].lane[i] += w[i] * xg[i];
        }
    }
}

inline void dequant_groups(const int8_t* q, const float* scale, const float* offset, int ngroups, float* dst) {
    for (int g = 0; g < ngroups; ++g) {
        for (int i = 0; i < kGroup; ++i) {
            const float product = scale[g] * float(q[kGroup * g + i]);
            dst[kGroup * g + i] = product + offset[g];
        }
    }
}

}  // namespace

#include "quant_kernels.inc"

const KernelTable table = {"generic", gemv_any, dequant_any};

}  // namespace generic
}  // namespace oxide_cpu
