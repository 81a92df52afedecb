// StepProgram: the calls into this module that one decode step of a model makes, recorded once and
// replayed for each later step without returning to Python.
//
// oxide/ops/cpu/program.py records: while the model's own Python forward runs one decode step, every
// call it makes into oxide._cpu is made as usual and also appended here, with the same arguments
// (addresses of the step's activations, of the weights and of the KV cache, sizes, the thread
// count). A replay repeats the calls in order. What changes from step to step is read from memory by
// the calls themselves: the token id and its position are written into the step's input buffers
// before a replay, kv_store puts keys at the slot their position names, rope_cos_sin computes the
// angles of the position, and an attention over a cache (recorded by attention_over_cache) attends to
// as many keys as the position implies. So the model has one definition, its Python forward, and a
// replay is that forward without Python's cost per op.
#include "step_program.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "raw_ops.h"

namespace py = pybind11;

namespace {

using namespace oxide_cpu::raw;

class StepProgram {
public:
    void push(const char* name, std::function<void()> call) {
        names_.emplace_back(name);
        calls_.push_back(std::move(call));
    }
    void keep(py::object owner) { kept_.push_back(std::move(owner)); }
    size_t size() const { return calls_.size(); }

    void run() const {
        for (const auto& call : calls_) call();
    }

    // run(), timing each call: (function name, seconds) in order, for profiles.
    std::vector<std::pair<std::string, double>> run_timed() const {
        std::vector<std::pair<std::string, double>> times;
        for (size_t i = 0; i < calls_.size(); ++i) {
            const auto start = std::chrono::steady_clock::now();
            calls_[i]();
            const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
            times.emplace_back(names_[i], took.count());
        }
        return times;
    }

private:
    std::vector<std::function<void()>> calls_;
    std::vector<std::string> names_;
    std::vector<py::object> kept_;   // the GEMV plans that recorded calls use
};

// A method recording a call of F named `name`, with the arguments it is given (copied: sizes, strides
// and addresses).
template <auto F>
struct Record;

template <class... A, void (*F)(A...)>
struct Record<F> {
    static auto as(const char* name) {
        return [name](StepProgram& program, A... args) { program.push(name, [=] { F(args...); }); };
    }
};

void record_gemv(StepProgram& program, py::object plan, std::uintptr_t x, int64_t M, int64_t x_stride,
                 std::uintptr_t out, int64_t out_stride, int threads) {
    const GemvPlan* prepared = plan.cast<const GemvPlan*>();
    program.keep(std::move(plan));
    program.push("gemv", [=] { prepared->run(x, M, x_stride, out, out_stride, threads); });
}

// attention(...) over the first slots of a KV cache of `slots` slots that holds positions 0.. in order
// (a sliding window's ring: the last `slots` of them): at replay it attends to
// min(q_pos[T - 1] + 1, slots) keys, however many the recorded call had.
void record_attention_over_cache(StepProgram& program, int64_t slots, std::uintptr_t q, const Dims4& q_shape,
                                 const Dims3& q_stride, std::uintptr_t k, const Dims3& k_shape, const Dims3& k_stride,
                                 std::uintptr_t v, const Dims3& v_stride, std::uintptr_t q_pos, std::uintptr_t k_pos,
                                 std::uintptr_t out, double scale, int64_t window, double softcap, int threads) {
    program.push("attention", [=] {
        Dims3 keys = k_shape;
        const int64_t last = reinterpret_cast<const int64_t*>(q_pos)[q_shape[2] - 1];
        keys[2] = std::min(last + 1, slots);
        attention(q, q_shape, q_stride, k, keys, k_stride, v, v_stride, q_pos, k_pos, out, scale, window, softcap,
                  threads);
    });
}

}  // namespace

void bind_step_program(py::module_& m) {
    py::class_<StepProgram>(m, "StepProgram",
                            "Calls into oxide._cpu recorded once (each method records the module function of its "
                            "name, with its arguments) and replayed in order by run().")
        .def(py::init<>())
        .def("__len__", &StepProgram::size)
        .def("run", &StepProgram::run, py::call_guard<py::gil_scoped_release>(), "Replays every recorded call.")
        .def("run_timed", &StepProgram::run_timed, py::call_guard<py::gil_scoped_release>(),
             "Replays every recorded call, returning (function name, seconds) for each.")
        .def("gemv", &record_gemv)
        .def("dequantize_rows", Record<&dequantize_rows>::as("dequantize_rows"))
        .def("rms_norm", Record<&rms_norm>::as("rms_norm"))
        .def("add_rms_norm", Record<&add_rms_norm>::as("add_rms_norm"))
        .def("rope_cos_sin", Record<&rope_cos_sin>::as("rope_cos_sin"))
        .def("rope", Record<&rope>::as("rope"))
        .def("kv_store", Record<&kv_store>::as("kv_store"))
        .def("attention", Record<&attention>::as("attention"))
        .def("attention_over_cache", &record_attention_over_cache,
             "attention(...) whose key count is taken at replay from the query's position (capped at slots).")
        .def("gated_activation", Record<&gated_activation>::as("gated_activation"))
        .def("add", Record<&add>::as("add"))
        .def("scale", Record<&scale>::as("scale"))
        .def("softcap", Record<&softcap>::as("softcap"));
}
