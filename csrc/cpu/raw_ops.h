// The raw-buffer entry points of oxide._cpu, as Python calls them: addresses as integers, sizes and
// strides in elements, the thread count last. module.cpp and layer_ops.cpp define them and bind each
// to Python; step_program.cpp binds each a second time, to record a call into a StepProgram that
// replays it later with the same arguments. The Python wrappers (oxide/ops/cpu/) check every argument
// before an address reaches here.
#pragma once

#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace oxide_cpu::raw {

using Dims3 = std::array<int64_t, 3>;   // sizes or strides of three leading dimensions
using Dims4 = std::array<int64_t, 4>;

// A group of quantized matrices that share their input (q, k and v; gate and up), prepared once: the
// GEMV writes matrix j's outputs to columns [column_j, column_j + N_j) of one (M, sum N) output.
class GemvPlan {
public:
    using Matrix = std::tuple<int, std::uintptr_t, int64_t, int64_t, std::uintptr_t>;   // qtype, w, N, row_bytes, bias

    GemvPlan(const std::vector<Matrix>& matrices, int64_t K);
    int64_t width() const { return width_; }
    // out (M, width) = x (M, K) against every matrix; rows x_stride / out_stride floats apart.
    void run(std::uintptr_t x, int64_t M, int64_t x_stride, std::uintptr_t out, int64_t out_stride, int threads) const;

private:
    std::vector<GemvArgs> mats_;
    std::vector<int64_t> columns_;
    int64_t K_, width_ = 0;
};

// plan.run(...), as a free function (what Python calls, and what a StepProgram records).
void gemv(const GemvPlan& plan, std::uintptr_t x, int64_t M, int64_t x_stride, std::uintptr_t out, int64_t out_stride,
          int threads);
void dequantize_rows(int qtype, std::uintptr_t w, std::uintptr_t index, int64_t rows, int64_t K, int64_t row_bytes,
                     std::uintptr_t out, int64_t out_stride, int threads);

void rms_norm(std::uintptr_t x, const Dims3& shape, const Dims3& stride, int64_t n, std::uintptr_t weight,
              std::uintptr_t out, double eps, int threads);
void add_rms_norm(std::uintptr_t x, const Dims3& x_stride, std::uintptr_t residual, const Dims3& r_stride,
                  const Dims3& shape, int64_t n, std::uintptr_t weight, std::uintptr_t sum, std::uintptr_t normed,
                  double eps, int threads);
void rope_cos_sin(std::uintptr_t positions, int64_t T, std::uintptr_t inv_freq, int64_t half, double scale,
                  std::uintptr_t cos, std::uintptr_t sin, int threads);
void rope(std::uintptr_t x, const Dims3& shape, const Dims3& stride, int64_t hd, std::uintptr_t cos,
          std::uintptr_t sin, std::uintptr_t out, int threads);
void kv_store(std::uintptr_t k, const Dims3& k_stride, std::uintptr_t v, const Dims3& v_stride, int64_t n_kv,
              int64_t T, int64_t k_dim, int64_t v_dim, std::uintptr_t positions, std::uintptr_t cache_k,
              std::uintptr_t cache_v, std::uintptr_t cache_pos, int64_t slots, int threads);
void attention(std::uintptr_t q, const Dims4& q_shape, const Dims3& q_stride, std::uintptr_t k, const Dims3& k_shape,
               const Dims3& k_stride, std::uintptr_t v, const Dims3& v_stride, std::uintptr_t q_pos,
               std::uintptr_t k_pos, std::uintptr_t out, double scale, int64_t window, double softcap, int threads);
// Row b of k, v (1, Hkv, B, d) into sequence b's cache at positions[b].
void kv_store_rows(std::uintptr_t k, const Dims3& k_stride, std::uintptr_t v, const Dims3& v_stride, int64_t n_kv,
                   int64_t B, int64_t k_dim, int64_t v_dim, std::uintptr_t positions,
                   const std::vector<std::uintptr_t>& cache_k, const std::vector<std::uintptr_t>& cache_v,
                   const std::vector<std::uintptr_t>& cache_pos, const std::vector<int64_t>& slots, int threads);
// Row b of q (1, H, B, hd) over its own keys k[b], v[b] (k_len[b] of them, positions at k_pos[b]); out (B, H, hd).
void attention_rows(std::uintptr_t q, const Dims4& q_shape, const Dims3& q_stride, const std::vector<std::uintptr_t>& k,
                    const std::vector<std::uintptr_t>& v, const std::vector<std::uintptr_t>& k_pos,
                    const std::vector<int64_t>& k_len, int64_t Hkv, const Dims3& k_stride, const Dims3& v_stride,
                    std::uintptr_t q_pos, std::uintptr_t out, double scale, int64_t window, double softcap,
                    int threads);
void gated_activation(std::uintptr_t gate, int64_t gate_stride, std::uintptr_t up, int64_t up_stride,
                      std::uintptr_t out, int64_t rows, int64_t n, int act, int threads);
void add(std::uintptr_t a, std::uintptr_t b, std::uintptr_t out, int64_t n, int threads);
void scale(std::uintptr_t x, std::uintptr_t out, int64_t n, double factor, int threads);
void softcap(std::uintptr_t x, std::uintptr_t out, int64_t n, double cap, int threads);

}  // namespace oxide_cpu::raw
