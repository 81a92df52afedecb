// The single-threaded inner kernels of the float32 layer ops (layer_ops.cpp owns the checks, the
// threading and the Python bindings). layer_kernels.inc holds their one source; each of
// layer_isa_generic.cpp, layer_isa_avx2.cpp and layer_isa_avx512.cpp compiles it for its
// instruction set, and layer_ops.cpp picks the best table the CPU runs (or the one OXIDE_CPU_ISA names).
#pragma once

#include <array>
#include <cstdint>

namespace oxide_cpu {

using Dims3 = std::array<int64_t, 3>;   // sizes or strides (in elements) of three leading dimensions

// One attention call. Query row (b, h, t) starts at q + b*q_stride[0] + h*q_stride[1] + t*q_stride[2];
// key/value row (b, kh, s) likewise with k_stride / v_stride; every row is hd contiguous floats.
struct Attn {
    const float* q;
    Dims3 q_stride;            // over (B, H, T)
    const float* k;
    Dims3 k_stride;            // over (B, Hkv, S)
    const float* v;
    Dims3 v_stride;
    const int64_t* q_pos;      // (T,)
    const int64_t* k_pos;      // (S,)
    int64_t B, H, Hkv, T, S, hd, G;   // G = H / Hkv query heads per kv head
    float scale, cap;          // cap 0: no soft-cap
    int64_t window;            // 0: none
};

struct LayerKernels {
    const char* name;
    // out = x / sqrt(mean(x^2) + eps) * weight, one row of n.
    void (*rms_norm_row)(const float* x, const float* weight, float* out, int64_t n, float eps);
    // sum = x + residual; normed = rms_norm(sum), one row of n.
    void (*add_rms_norm_row)(const float* x, const float* residual, const float* weight, float* sum, float* normed,
                             int64_t n, float eps);
    // out[:h] = x1 cos - x2 sin, out[h:] = x2 cos + x1 sin for one row of 2h (x1 = x[:h], x2 = x[h:]).
    void (*rope_row)(const float* x, const float* cos, const float* sin, float* out, int64_t half);
    // out = act(gate) * up over n elements; act 0: silu, 1: gelu (tanh form), 2: gelu (erf).
    void (*gated)(const float* gate, const float* up, float* out, int64_t n, int act);
    // out = cap * tanh(x / cap) over n elements.
    void (*softcap)(const float* x, float* out, int64_t n, float cap);
    // The index of the first largest of n > 0 values, a NaN counting as larger than any number (torch.argmax).
    int64_t (*argmax)(const float* x, int64_t n);
    // The query heads kh*G .. kh*G+G-1 at (b, t) against keys [s0, s1): for each such head g, writes
    // the record part[g*(hd+2) ...] = (m, l, acc[hd]): the chunk's max score m (-inf if no key is
    // allowed), l = sum_j exp(s_j - m) and acc = sum_j exp(s_j - m) v_j. scores: G * (s1 - s0) floats.
    void (*attend_chunk)(const Attn& a, int64_t b, int64_t kh, int64_t t, int64_t s0, int64_t s1, float* scores,
                         float* part);
};

namespace generic { extern const LayerKernels layer_kernels; }
namespace avx2 { extern const LayerKernels layer_kernels; }      // x86-64 with GCC or clang only
namespace avx512 { extern const LayerKernels layer_kernels; }    // x86-64 with GCC or clang only

}  // namespace oxide_cpu
