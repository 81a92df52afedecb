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

// The portable build dots x as it is: nothing to prepare.
struct RowView {
    const float* x;
};
inline size_t scratch_bytes(int64_t, int64_t) { return 0; }
inline void prepare_rows(const Activations&, int64_t, int64_t) {}
inline RowView row_view(const Activations& x, int64_t m) { return {x.x + m * x.stride}; }

// Unpacks up to 256 weights at a time (eight 32-weight blocks, or one super-block) into int8 quants plus
// per-16 scales and offsets in L1, then forms the float weights group by group against the R rows.
template <class F, int R>
inline void dot_units(const uint8_t* wrow, int64_t nblocks, const RowView* rows, Acc* acc) {
    constexpr int kPerChunk = F::kBlock >= 256 ? 1 : 256 / F::kBlock;   // blocks unpacked together
    constexpr int G = F::kBlock / kGroup;
    alignas(64) int8_t q[kPerChunk * F::kBlock];
    float scale[kPerChunk * G], offset[kPerChunk * G] = {};   // types without an offset leave them 0
    for (int64_t b0 = 0; b0 < nblocks; b0 += kPerChunk) {
        const int nb = nblocks - b0 < kPerChunk ? int(nblocks - b0) : kPerChunk;
        for (int i = 0; i < nb; ++i) F::unpack(wrow + (b0 + i) * F::kBytes, q + i * F::kBlock, scale + i * G, offset + i * G);
        const float* xs[R];
        for (int r = 0; r < R; ++r) xs[r] = rows[r].x + b0 * F::kBlock;
        dot_groups<R>(q, scale, offset, nb * G, xs, acc);
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

const KernelTable table = {"generic", "float32", scratch_bytes, gemv_any, dequant_any};

}  // namespace generic
}  // namespace oxide_cpu
