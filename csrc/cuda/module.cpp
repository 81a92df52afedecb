// oxide._cuda: the CUDA kernels' bindings. Addresses, sizes, strides, dtype codes and the stream are plain
// integers, so this file needs neither CUDA's nor torch's headers (it compiles with any C++17 compiler and
// pybind11); the Python side (oxide/ops/cuda_kernels.py) checks devices, dtypes, shapes and alignment first.
// Bad arguments raise ValueError, a failed launch RuntimeError. Launches are asynchronous; the GIL is released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "launchers.h"

namespace py = pybind11;
using oxide_cuda::GemvArgs;
using oxide_cuda::SampleArgs;

namespace {

void quant_gemv(int qtype, std::uintptr_t w, std::int64_t N, std::int64_t K, std::int64_t row_bytes, std::uintptr_t x,
                std::int64_t M, std::int64_t x_stride, int dtype, std::uintptr_t bias, std::uintptr_t y,
                std::int64_t y_stride, std::uintptr_t stream) {
    oxide_cuda::quant_gemv(GemvArgs{qtype, w, N, K, row_bytes, x, M, x_stride, dtype, bias, y, y_stride, stream});
}

void sample(std::uintptr_t logits, std::uintptr_t counts, std::uintptr_t u, std::uintptr_t out, std::int64_t V,
            float temperature, std::int64_t top_k, float top_p, float min_p, float repeat_penalty,
            float frequency_penalty, float presence_penalty, std::uintptr_t stream) {
    oxide_cuda::sample(SampleArgs{logits, counts, u, out, V, temperature, top_p, min_p, repeat_penalty,
                                  frequency_penalty, presence_penalty, top_k, stream});
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "oxide's CUDA kernels (raw device addresses; see oxide.ops.cuda_kernels)";
    m.attr("gemv_max_rows") = oxide_cuda::kGemvMaxRows;
    m.def("gemv_types", &oxide_cuda::gemv_types,
          "(GGML type id, byte alignment its weights need) for each type quant_gemv serves.");
    m.def("quant_gemv", &quant_gemv, py::call_guard<py::gil_scoped_release>(), py::arg("qtype"), py::arg("w"),
          py::arg("N"), py::arg("K"), py::arg("row_bytes"), py::arg("x"), py::arg("M"), py::arg("x_stride"),
          py::arg("dtype"), py::arg("bias"), py::arg("y"), py::arg("y_stride"), py::arg("stream"),
          "y[m, n] = x[m, :] . dequantize(W[n, :]) (+ bias[n]) for m < M <= 8; dtype 0 f32, 1 f16, 2 bf16 "
          "(x, bias, y); bias 0: none; strides in elements; float32 accumulation.");
    m.def("sample", &sample, py::call_guard<py::gil_scoped_release>(), py::arg("logits"), py::arg("counts"),
          py::arg("u"), py::arg("out"), py::arg("V"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
          py::arg("min_p"), py::arg("repeat_penalty"), py::arg("frequency_penalty"), py::arg("presence_penalty"),
          py::arg("stream"),
          "out[()] = the sampled id of logits (V,) f32 with counts (V,) i32 (0: no penalties) and u () f32 "
          "uniform in [0, 1), all device addresses (semantics: csrc/cuda/sample.cu).");
}
