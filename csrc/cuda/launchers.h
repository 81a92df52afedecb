// The CUDA launchers as the bindings (module.cpp, plain C++) see them: addresses and the stream as integers,
// so this header needs neither CUDA's nor torch's. Bad arguments throw std::invalid_argument, a failed launch
// std::runtime_error (pybind11 makes them ValueError and RuntimeError). The launch is asynchronous on the
// given stream (a cudaStream_t as an integer; 0 is the legacy default stream).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace oxide_cuda {

// y[m, n] = sum_k x[m, k] * dequantize(W)[n, k] (+ bias[n]) for m < M <= kGemvMaxRows, n < N.
// W: N rows of row_bytes bytes of GGML blocks of type qtype (GGML ids: 2 Q4_0, 8 Q8_0, 10 Q2_K, 11 Q3_K,
// 12 Q4_K, 13 Q5_K, 14 Q6_K); x, bias, y: dtype (0 float32, 1 float16, 2 bfloat16), strides in elements;
// bias 0: none. Accumulates in float32.
struct GemvArgs {
    int qtype;
    std::uintptr_t w;
    std::int64_t N, K, row_bytes;
    std::uintptr_t x;
    std::int64_t M, x_stride;
    int dtype;
    std::uintptr_t bias, y;
    std::int64_t y_stride;
    std::uintptr_t stream;
};

constexpr std::int64_t kGemvMaxRows = 8;

void quant_gemv(const GemvArgs& args);

// GGML type ids quant_gemv serves, and the address alignment (bytes) it needs of each type's weights.
std::vector<std::pair<int, int>> gemv_types();

// The sampling options (see csrc/cuda/sample.cu for the exact semantics).
struct SampleArgs {
    std::uintptr_t logits;   // (V,) float32
    std::uintptr_t counts;   // (V,) int32 occurrences in the penalty window; 0: no penalties
    std::uintptr_t u;        // () float32 uniform in [0, 1)
    std::uintptr_t out;      // () int64: the chosen id
    std::int64_t V;
    float temperature, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty;
    std::int64_t top_k;
    std::uintptr_t stream;
};

void sample(const SampleArgs& args);

}  // namespace oxide_cuda
