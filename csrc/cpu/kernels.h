// The entry points that each instruction-set build of the quantized kernels provides
// (isa_generic.cpp, isa_avx2.cpp, isa_avx512.cpp), and the table module.cpp picks one from.
#pragma once

#include <cstdint>
#include <type_traits>

namespace oxide_cpu {

// out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]) for a GGML-quantized W of N rows of K weights.
struct GemvArgs {
    const float* x;          // (M, K), rows x_stride floats apart
    int64_t M, x_stride;
    const uint8_t* w;        // (N, row_bytes) raw blocks
    int64_t N, K, row_bytes;
    float* out;              // (M, N), rows out_stride floats apart
    int64_t out_stride;
    const float* bias;       // (N,) or null
    int threads;
};

// out[r, :] = dequantize(W[index[r]]) (index null: row r), rows out_stride floats apart.
struct DequantArgs {
    const uint8_t* w;
    const int64_t* index;
    int64_t rows, K, row_bytes;
    float* out;
    int64_t out_stride;
    int threads;
};

// Each returns false when it has no kernel for ``qtype`` (a GGML type id).
struct KernelTable {
    const char* name;
    bool (*gemv)(int qtype, const GemvArgs&);
    bool (*dequant)(int qtype, const DequantArgs&);
};

namespace generic { extern const KernelTable table; }
namespace avx2 { extern const KernelTable table; }      // x86-64 only
namespace avx512 { extern const KernelTable table; }    // x86-64 only

}  // namespace oxide_cpu
