// The entry points that each instruction-set build of the quantized kernels provides
// (isa_generic.cpp, isa_avx2.cpp, isa_avx512.cpp, isa_avx512vnni.cpp), and the table module.cpp picks one from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace oxide_cpu {

// The activations of a GEMV: x (M, K), rows ``stride`` floats apart, and the threads to use;
// ``scratch`` is room (64-byte aligned) for the build's prepared form of x: scratch_bytes(M, K) bytes.
struct Activations {
    const float* x;
    int64_t M, K, stride;
    int threads;
    unsigned char* scratch;
};

// One matrix of a GEMV: out[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]), W GGML-quantized, N rows of K weights.
struct GemvArgs {
    int qtype;               // GGML type id
    const uint8_t* w;        // (N, row_bytes) raw blocks
    int64_t N, row_bytes;
    float* out;              // (M, N), rows out_stride floats apart
    int64_t out_stride;
    const float* bias;       // (N,) or null
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

// Each returns false, computing nothing, when it has no kernel for a ``qtype`` (a GGML type id).
struct KernelTable {
    const char* name;
    const char* activations;   // how the GEMV takes x: "float32", or "q8_0" (int8 per 32 values, as llama.cpp)
    size_t (*scratch_bytes)(int64_t M, int64_t K);
    bool (*gemv)(const Activations& x, const GemvArgs* matrices, int count);   // one parallel region
    bool (*dequant)(int qtype, const DequantArgs&);
};

namespace generic { extern const KernelTable table; }
namespace avx2 { extern const KernelTable table; }      // x86-64 only
namespace avx512 { extern const KernelTable table; }    // x86-64 only
namespace avx512vnni { extern const KernelTable table; }    // x86-64 only

}  // namespace oxide_cpu
