// oxide._cpu: the compiled CPU core. Functions take raw buffers (addresses as integers, sizes and
// strides in elements) so the module needs neither torch headers nor a matching torch ABI; the
// Python side (oxide/ops/cpu/) checks shapes, dtypes and contiguity before calling. Each call
// releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"
#include "layer_ops.h"
#include "raw_ops.h"
#include "step_program.h"

namespace py = pybind11;
using oxide_cpu::KernelTable;
using oxide_cpu::Activations;
using oxide_cpu::DequantArgs;
using oxide_cpu::GemvArgs;
using oxide_cpu::raw::GemvPlan;

namespace {

std::vector<const KernelTable*> supported_tables() {
    std::vector<const KernelTable*> found;
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const bool avx512 =
        __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    if (avx512 && __builtin_cpu_supports("avx512vnni")) found.push_back(&oxide_cpu::avx512vnni::table);
    if (avx512) found.push_back(&oxide_cpu::avx512::table);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        found.push_back(&oxide_cpu::avx2::table);
#endif
    found.push_back(&oxide_cpu::generic::table);
    return found;   // best first
}

const KernelTable* g_table = nullptr;

const KernelTable& table() { return *g_table; }

void set_isa(const std::string& name) {
    for (const KernelTable* t : supported_tables()) {
        if (name == t->name) {
            g_table = t;
            return;
        }
    }
    throw std::invalid_argument("instruction set '" + name + "' is not supported by this CPU or build");
}

std::vector<std::string> isas() {
    std::vector<std::string> names;
    for (const KernelTable* t : supported_tables()) names.emplace_back(t->name);
    return names;
}

template <class T>
T* ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

void check(bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(what);
}

// size bytes of 64-byte-aligned scratch for this thread, kept from call to call (the GEMV's prepared activations).
unsigned char* scratch(size_t size) {
    thread_local std::vector<unsigned char> buffer;
    if (buffer.size() < size + 64) buffer.resize(size + 64);
    const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(buffer.data());
    return buffer.data() + ((64 - address % 64) % 64);
}

}  // namespace

namespace oxide_cpu::raw {

GemvPlan::GemvPlan(const std::vector<Matrix>& matrices, int64_t K) : K_(K) {
    check(K > 0 && K % 16 == 0 && !matrices.empty(), "GemvPlan: bad sizes");
    for (const auto& [qtype, w, N, row_bytes, bias] : matrices) {
        check(N > 0 && row_bytes > 0, "GemvPlan: bad matrix sizes");
        mats_.push_back({qtype, ptr<const uint8_t>(w), N, row_bytes, nullptr, 0, ptr<const float>(bias)});
        columns_.push_back(width_);
        width_ += N;
    }
}

void GemvPlan::run(std::uintptr_t x, int64_t M, int64_t x_stride, std::uintptr_t out, int64_t out_stride,
                   int threads) const {
    check(M >= 0 && x_stride >= K_ && out_stride >= width_ && threads >= 1, "GemvPlan.run: bad sizes");
    thread_local std::vector<GemvArgs> mats;   // this call's copy, with the output addresses: reused, not reallocated
    mats.assign(mats_.begin(), mats_.end());
    for (size_t j = 0; j < mats.size(); ++j) {
        mats[j].out = ptr<float>(out) + columns_[j];
        mats[j].out_stride = out_stride;
    }
    const Activations acts{ptr<const float>(x), M, K_, x_stride, threads, scratch(table().scratch_bytes(M, K_))};
    check(table().gemv(acts, mats.data(), static_cast<int>(mats.size())), "qmatmul: no kernel for this GGML type");
}

void gemv(const GemvPlan& plan, std::uintptr_t x, int64_t M, int64_t x_stride, std::uintptr_t out, int64_t out_stride,
          int threads) {
    plan.run(x, M, x_stride, out, out_stride, threads);
}

void dequantize_rows(int qtype, std::uintptr_t w, std::uintptr_t index, int64_t rows, int64_t K, int64_t row_bytes,
                     std::uintptr_t out, int64_t out_stride, int threads) {
    check(rows >= 0 && K > 0 && K % 16 == 0 && out_stride >= K && threads >= 1, "dequantize_rows: bad sizes");
    DequantArgs args{ptr<const uint8_t>(w), ptr<const int64_t>(index), rows, K, row_bytes, ptr<float>(out), out_stride,
                     threads};
    check(table().dequant(qtype, args), "dequantize_rows: no kernel for this GGML type");
}

}  // namespace oxide_cpu::raw

PYBIND11_MODULE(_cpu, m) {
    m.doc() = "oxide's compiled CPU core (raw-buffer kernels; see oxide.ops.cpu)";
    g_table = supported_tables().front();
    m.def("isas", &isas, "Instruction sets this CPU and build can run, best first.");
    m.def("isa", [] { return std::string(table().name); }, "The instruction set in use.");
    m.def("activations", [] { return std::string(table().activations); },
          "How the GEMV of the instruction set in use takes its activations: 'float32', or 'q8_0' (each 32 values "
          "rounded to int8 with one scale, as llama.cpp's CPU backend does; oxide.ops.reference.q8_activations).");
    m.def("set_isa", &set_isa, py::arg("name"), "Use another supported instruction set (tests, benchmarks).");
    m.def("quant_types", [] { return std::vector<int>{2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23}; },
          "GGML type ids with kernels.");
#ifdef _OPENMP
    m.attr("openmp") = true;
#else
    m.attr("openmp") = false;
#endif
    py::class_<GemvPlan>(m, "GemvPlan", "Quantized matrices sharing their input, prepared for the GEMV.")
        .def(py::init<const std::vector<GemvPlan::Matrix>&, int64_t>(),
             py::arg("matrices"), py::arg("K"),
             "matrices: (qtype, w, N, row_bytes, bias) each, addresses as integers (bias 0: none).")
        .def_property_readonly("width", &GemvPlan::width, "Output columns: the sum of the matrices' N.")
        .def("run", &GemvPlan::run, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("M"),
             py::arg("x_stride"), py::arg("out"), py::arg("out_stride"), py::arg("threads"),
             "out[m, column_j + n] = x[m, :] . dequantize(W_j[n, :]) (+ bias_j[n]); f32, one parallel region.");
    m.def("gemv", &oxide_cpu::raw::gemv, py::call_guard<py::gil_scoped_release>(), py::arg("plan"), py::arg("x"), py::arg("M"),
          py::arg("x_stride"), py::arg("out"), py::arg("out_stride"), py::arg("threads"), "plan.run(...), as a function.");
    m.def("dequantize_rows", &oxide_cpu::raw::dequantize_rows, py::call_guard<py::gil_scoped_release>(),
          py::arg("qtype"), py::arg("w"), py::arg("index"), py::arg("rows"), py::arg("K"), py::arg("row_bytes"),
          py::arg("out"), py::arg("out_stride"), py::arg("threads"),
          "out[r, :] = dequantize(W[index[r], :]) (index 0: row r), f32.");
    bind_layer_ops(m);
    bind_step_program(m);
}
