// The float32 layer ops of oxide._cpu (see layer_ops.h): argument checks, threading and bindings.
// oxide/ops/reference.py is the specification; the inner loops are in layer_kernels.inc, compiled
// once per instruction set (layer_isa_*.cpp), and the table used is chosen once at load time.
//
// Conventions, as in module.cpp: tensors arrive as addresses (integers) plus sizes and strides in
// elements; the last dimension of every input is contiguous (stride 1; the Python wrapper copies
// otherwise) and every output is a fresh contiguous buffer. A tensor's leading dimensions are given
// as three sizes and three strides (the wrapper pads with size-1 dims), so strided views such as a
// (B, H, T, hd) transpose of a (B, T, H, hd) projection, or a slice of the KV cache, are read in place.
#include "layer_ops.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "layer_kernels.h"
#include "raw_ops.h"

namespace py = pybind11;

namespace {

using oxide_cpu::Attn;
using oxide_cpu::Dims3;
using oxide_cpu::LayerKernels;

// The best kernel table this CPU runs, or the one OXIDE_CPU_ISA names (generic | avx2 | avx512 |
// avx512vnni, which has no integer work here and takes the avx512 layer ops; the Python side has already
// refused a name the CPU cannot run), as module.cpp picks the quantized ones.
const LayerKernels& choose_kernels() {
    const char* env = std::getenv("OXIDE_CPU_ISA");
    const std::string wanted = env ? env : "";
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl");
    if (avx512 && (wanted.empty() || wanted == "avx512" || wanted == "avx512vnni")) return oxide_cpu::avx512::layer_kernels;
    if (avx2 && (wanted.empty() || wanted == "avx2" || wanted == "avx512")) return oxide_cpu::avx2::layer_kernels;
#endif
    return oxide_cpu::generic::layer_kernels;
}

const LayerKernels& kernels() {
    static const LayerKernels& chosen = choose_kernels();
    return chosen;
}

template <class T>
T* ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

void check(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kParallelElements = 1 << 15;   // below this much work a call stays on one thread

// Threads for `work` elements spread over `items` independent pieces (rows).
int threads_for(int threads, int64_t work, int64_t items) {
    if (work < kParallelElements) return 1;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, items)));
}

// Element offset of row r, numbered over the three leading dims (the last varying fastest).
inline int64_t row_offset(int64_t r, const Dims3& shape, const Dims3& stride) {
    const int64_t i2 = r % shape[2];
    const int64_t rest = r / shape[2];
    return (rest / shape[1]) * stride[0] + (rest % shape[1]) * stride[1] + i2 * stride[2];
}

void check_rows(const Dims3& shape, const Dims3& stride, int64_t n, const char* op) {
    for (int i = 0; i < 3; ++i)
        check(shape[i] >= 1 && stride[i] >= 0, std::string(op) + ": bad leading sizes or strides");
    check(n >= 1, std::string(op) + ": the last dimension must not be empty");
}

// Runs body(begin, end) over [0, n) in equal contiguous parts, one per thread.
template <class F>
void split_range(int64_t n, int threads, F body) {
    const int nt = threads_for(threads, n, n);
    const int64_t part = (n + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int i = 0; i < nt; ++i) {
        const int64_t begin = std::min(n, i * part), end = std::min(n, begin + part);
        if (end > begin) body(begin, end);
    }
}

// ---------------------------------------------------------------------------------------------
// Attention.
//
// For each query row (b, h, t): s_j = scale * q . k_j (then cap * tanh(s_j / cap) if softcap > 0)
// over the keys j it may see (0 <= q_pos[t] - k_pos[j], and < window if window > 0), then
// out = sum_j softmax(s)_j v_j. Query head h reads kv head h / G with G = H / Hkv.
//
// Work is split into units (b, kv head, t, key chunk). A unit handles the G query heads that share
// its kv head together, so each key and value row is read from memory once for all of them. The keys are
// cut into chunks of kKeyChunk from the first, whatever the number of query rows or threads; each unit
// leaves per query head its chunk's max score m, l = sum exp(s - m) and acc = sum exp(s - m) v, and
// the chunks are merged in order: out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c, M = max_c m_c.
// A query row's arithmetic is then the same in a prefill chunk, alone in a decode step, in a batch of
// sequences (attention_rows) or with another thread count (keys it may not see add exact zeros, and a
// chunk with none it may see is skipped), so its output is too, bit for bit.
// A query row that may see no key at all gets NaN, as the reference's softmax over all -inf gives.

constexpr int64_t kKeyChunk = 256;   // keys per unit: a decode step over 2048 keys is 8 units per kv head

// Merges the n_split chunk records of (b, kv head kh, t) into the G output rows (out: contiguous (B, H, T, hd)).
void merge_chunks(const Attn& a, int64_t b, int64_t kh, int64_t t, int64_t n_split, const float* parts, float* out) {
    const int64_t hd = a.hd, G = a.G, record = hd + 2;
    for (int64_t g = 0; g < G; ++g) {
        float* o = out + ((b * a.H + kh * G + g) * a.T + t) * hd;
        float m = -kInf;
        for (int64_t c = 0; c < n_split; ++c) m = std::max(m, parts[(c * G + g) * record]);
        if (m == -kInf) {   // no key allowed: the reference's softmax gives NaN
            std::fill(o, o + hd, std::numeric_limits<float>::quiet_NaN());
            continue;
        }
        std::fill(o, o + hd, 0.f);
        float l = 0.f;
        for (int64_t c = 0; c < n_split; ++c) {
            const float* rec = parts + (c * G + g) * record;
            if (rec[0] == -kInf) continue;
            const float w = std::exp(rec[0] - m);
            l += w * rec[1];
            for (int64_t i = 0; i < hd; ++i) o[i] += w * rec[2 + i];
        }
        const float inv_l = 1.f / l;
        for (int64_t i = 0; i < hd; ++i) o[i] *= inv_l;
    }
}

// The index of the first largest of n contiguous values (a NaN counts as the largest), as torch.argmax.
int64_t argmax(std::uintptr_t x, int64_t n) {
    check(n > 0, "argmax: no values");
    return kernels().argmax(ptr<const float>(x), n);
}

}  // namespace

namespace oxide_cpu::raw {

// ---------------------------------------------------------------------------------------------
// Norms, rope and the elementwise ops.

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight, rows r over the leading dims.
void rms_norm(std::uintptr_t x, const Dims3& shape, const Dims3& stride, int64_t n, std::uintptr_t weight,
              std::uintptr_t out, double eps, int threads) {
    check_rows(shape, stride, n, "rms_norm");
    const int64_t rows = shape[0] * shape[1] * shape[2];
    const auto row = kernels().rms_norm_row;
    const float* xp = ptr<const float>(x);
    const int nt = threads_for(threads, rows * n, rows);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r)
        row(xp + row_offset(r, shape, stride), ptr<const float>(weight), ptr<float>(out) + r * n, n,
            static_cast<float>(eps));
}

// sum = x + residual; normed = rms_norm(sum, weight, eps). Both outputs contiguous (rows, n).
void add_rms_norm(std::uintptr_t x, const Dims3& x_stride, std::uintptr_t residual, const Dims3& r_stride,
                  const Dims3& shape, int64_t n, std::uintptr_t weight, std::uintptr_t sum, std::uintptr_t normed,
                  double eps, int threads) {
    check_rows(shape, x_stride, n, "add_rms_norm");
    check_rows(shape, r_stride, n, "add_rms_norm");
    const int64_t rows = shape[0] * shape[1] * shape[2];
    const auto row = kernels().add_rms_norm_row;
    const int nt = threads_for(threads, rows * n, rows);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r)
        row(ptr<const float>(x) + row_offset(r, shape, x_stride), ptr<const float>(residual) + row_offset(r, shape, r_stride),
            ptr<const float>(weight), ptr<float>(sum) + r * n, ptr<float>(normed) + r * n, n, static_cast<float>(eps));
}

// Half-split rotary embedding of x: (B, H, T, hd), given as leading shape (B, H, T) and hd, with
// cos/sin (T, hd/2) contiguous: out[:h] = x1 cos - x2 sin, out[h:] = x2 cos + x1 sin.
void rope(std::uintptr_t x, const Dims3& shape, const Dims3& stride, int64_t hd, std::uintptr_t cos,
          std::uintptr_t sin, std::uintptr_t out, int threads) {
    check_rows(shape, stride, hd, "rope");
    check(hd % 2 == 0, "rope: head_dim must be even");
    const int64_t half = hd / 2, T = shape[2];
    const int64_t rows = shape[0] * shape[1] * T;
    const auto row = kernels().rope_row;
    const int nt = threads_for(threads, rows * hd, rows);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = r % T;
        row(ptr<const float>(x) + row_offset(r, shape, stride), ptr<const float>(cos) + t * half,
            ptr<const float>(sin) + t * half, ptr<float>(out) + r * hd, half);
    }
}

// out = act(gate) * up over rows of n elements (gate and up rows gate_stride and up_stride floats apart,
// so that the two halves of a fused gate-up projection are read in place; out contiguous);
// act 0: silu, 1: gelu (tanh form), 2: gelu (erf).
void gated_activation(std::uintptr_t gate, int64_t gate_stride, std::uintptr_t up, int64_t up_stride,
                      std::uintptr_t out, int64_t rows, int64_t n, int act, int threads) {
    check(rows >= 0 && n >= 0 && gate_stride >= n && up_stride >= n && act >= 0 && act <= 2 && threads >= 1,
          "gated_activation: bad sizes, strides, activation or threads");
    const auto kernel = kernels().gated;
    const float* g = ptr<const float>(gate);
    const float* u = ptr<const float>(up);
    float* o = ptr<float>(out);
    if (rows == 1) {   // decode: the one row shared out among the threads
        split_range(n, threads, [&](int64_t begin, int64_t end) { kernel(g + begin, u + begin, o + begin, end - begin, act); });
        return;
    }
    const int nt = threads_for(threads, rows * n, rows);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r) kernel(g + r * gate_stride, u + r * up_stride, o + r * n, n, act);
}

// out = cap * tanh(x / cap) over n contiguous elements.
void softcap(std::uintptr_t x, std::uintptr_t out, int64_t n, double cap, int threads) {
    check(n >= 0 && cap > 0 && threads >= 1, "softcap: bad size, cap or threads");
    const auto kernel = kernels().softcap;
    split_range(n, threads, [&](int64_t begin, int64_t end) {
        kernel(ptr<const float>(x) + begin, ptr<float>(out) + begin, end - begin, static_cast<float>(cap));
    });
}

// out = a + b over n contiguous elements (the residual add).
void add(std::uintptr_t a, std::uintptr_t b, std::uintptr_t out, int64_t n, int threads) {
    check(n >= 0 && threads >= 1, "add: bad size or threads");
    const float* ap = ptr<const float>(a);
    const float* bp = ptr<const float>(b);
    float* o = ptr<float>(out);
    split_range(n, threads, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) o[i] = ap[i] + bp[i];
    });
}

// out = x * float32(factor) over n contiguous elements (the embedding multiplier).
void scale(std::uintptr_t x, std::uintptr_t out, int64_t n, double factor, int threads) {
    check(n >= 0 && threads >= 1, "scale: bad size or threads");
    const float f = static_cast<float>(factor);
    const float* xp = ptr<const float>(x);
    float* o = ptr<float>(out);
    split_range(n, threads, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) o[i] = xp[i] * f;
    });
}

// The rotary tables for T positions: angle = float32(positions[t]) * inv_freq[i] in float32, then
// cos[t, i] = cos(angle), sin[t, i] = sin(angle), each times float32(scale) unless scale is 1; (T, half)
// each, contiguous.
void rope_cos_sin(std::uintptr_t positions, int64_t T, std::uintptr_t inv_freq, int64_t half, double scale,
                  std::uintptr_t cos, std::uintptr_t sin, int threads) {
    check(T >= 0 && half >= 1 && threads >= 1, "rope_cos_sin: bad sizes or threads");
    const int64_t* pos = ptr<const int64_t>(positions);
    const float* freq = ptr<const float>(inv_freq);
    const float factor = static_cast<float>(scale);
    const bool scaled = scale != 1.0;
    const int nt = threads_for(threads, T * half, T);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        const float p = static_cast<float>(pos[t]);
        for (int64_t i = 0; i < half; ++i) {
            const float angle = p * freq[i];
            const float c = std::cos(angle), s = std::sin(angle);
            ptr<float>(cos)[t * half + i] = scaled ? c * factor : c;
            ptr<float>(sin)[t * half + i] = scaled ? s * factor : s;
        }
    }
}

// Stores T new keys and values of a cache of (1, n_kv, slots, k_dim) keys and (1, n_kv, slots, v_dim)
// values (a latent cache stores two widths): position p goes to slot p % slots
// (a full cache has a slot per position; a sliding window's ring reuses the oldest), its key row
// (0, h, t) read at k + h*k_stride[1] + t*k_stride[2] (values likewise), and cache_pos[slot] = p.
// Positions are read from memory, so a recorded call stores each step's token where it belongs.
// When T > slots the later positions overwrite the earlier ones, keeping the last `slots`.
void kv_store(std::uintptr_t k, const Dims3& k_stride, std::uintptr_t v, const Dims3& v_stride, int64_t n_kv,
              int64_t T, int64_t k_dim, int64_t v_dim, std::uintptr_t positions, std::uintptr_t cache_k,
              std::uintptr_t cache_v, std::uintptr_t cache_pos, int64_t slots, int threads) {
    check(n_kv >= 1 && T >= 0 && k_dim >= 1 && v_dim >= 1 && slots >= 1 && threads >= 1,
          "kv_store: bad sizes or threads");
    const int64_t* pos = ptr<const int64_t>(positions);
    for (int64_t t = 0; t < T; ++t) check(pos[t] >= 0, "kv_store: negative position");
    const int nt = threads_for(threads, n_kv * T * (k_dim + v_dim), n_kv);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t h = 0; h < n_kv; ++h) {
        for (int64_t t = 0; t < T; ++t) {
            const int64_t slot = pos[t] % slots;
            std::copy_n(ptr<const float>(k) + h * k_stride[1] + t * k_stride[2], k_dim,
                        ptr<float>(cache_k) + (h * slots + slot) * k_dim);
            std::copy_n(ptr<const float>(v) + h * v_stride[1] + t * v_stride[2], v_dim,
                        ptr<float>(cache_v) + (h * slots + slot) * v_dim);
        }
    }
    for (int64_t t = 0; t < T; ++t) ptr<int64_t>(cache_pos)[pos[t] % slots] = pos[t];
}

// Row b of k (1, Hkv, B, k_dim) and v into sequence b's cache (cache_k[b], cache_v[b], cache_pos[b], slots[b]
// slots) at positions[b]: kv_store for each row, in one call (a batched decode step's stores).
void kv_store_rows(std::uintptr_t k, const Dims3& k_stride, std::uintptr_t v, const Dims3& v_stride, int64_t n_kv,
                   int64_t B, int64_t k_dim, int64_t v_dim, std::uintptr_t positions,
                   const std::vector<std::uintptr_t>& cache_k, const std::vector<std::uintptr_t>& cache_v,
                   const std::vector<std::uintptr_t>& cache_pos, const std::vector<int64_t>& slots, int threads) {
    check(static_cast<int64_t>(cache_k.size()) == B && static_cast<int64_t>(cache_v.size()) == B &&
              static_cast<int64_t>(cache_pos.size()) == B && static_cast<int64_t>(slots.size()) == B,
          "kv_store_rows: one cache per row");
    for (int64_t b = 0; b < B; ++b)
        kv_store(k + static_cast<std::uintptr_t>(b * k_stride[2]) * sizeof(float), k_stride,
                 v + static_cast<std::uintptr_t>(b * v_stride[2]) * sizeof(float), v_stride, n_kv, 1, k_dim, v_dim,
                 positions + static_cast<std::uintptr_t>(b) * sizeof(int64_t), cache_k[b], cache_v[b], cache_pos[b],
                 slots[b], threads);
}

// Attention, as described above merge_chunks.

void attention(std::uintptr_t q, const Dims4& q_shape, const Dims3& q_stride, std::uintptr_t k,
               const Dims3& k_shape, const Dims3& k_stride, std::uintptr_t v, const Dims3& v_stride,
               std::uintptr_t q_pos, std::uintptr_t k_pos, std::uintptr_t out, double scale, int64_t window,
               double softcap, int threads) {
    const int64_t B = q_shape[0], H = q_shape[1], T = q_shape[2], hd = q_shape[3];
    const int64_t Hkv = k_shape[1], S = k_shape[2];
    check(B >= 1 && H >= 1 && T >= 1 && hd >= 1 && S >= 1 && Hkv >= 1 && threads >= 1,
          "attention: sizes and threads must be positive");
    check(k_shape[0] == B && H % Hkv == 0, "attention: k/v must be (B, Hkv, S, hd) with H a multiple of Hkv");
    for (int i = 0; i < 3; ++i)
        check(q_stride[i] >= 0 && k_stride[i] >= 0 && v_stride[i] >= 0, "attention: negative stride");
    check(softcap >= 0, "attention: softcap must be >= 0");
    const Attn a{ptr<const float>(q), q_stride, ptr<const float>(k), k_stride, ptr<const float>(v), v_stride,
                 ptr<const int64_t>(q_pos), ptr<const int64_t>(k_pos), B, H, Hkv, T, S, hd, H / Hkv,
                 static_cast<float>(scale), static_cast<float>(softcap), window};

    // Units are handed out dynamically, so that a thread the OS schedules late holds up one small chunk.
    const int64_t rows = B * Hkv * T;   // units before splitting keys
    const int64_t chunk = std::min(S, kKeyChunk), n_split = (S + chunk - 1) / chunk;
    const int64_t units = rows * n_split, record = hd + 2;
    const int nt = static_cast<int>(std::min<int64_t>(threads, units));
    std::vector<float> scratch(static_cast<size_t>(nt) * a.G * chunk);   // each thread's scores
    std::vector<float> parts(static_cast<size_t>(units) * a.G * record);  // each unit's records
    const auto attend_chunk = kernels().attend_chunk;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#ifdef _OPENMP
        float* scores = scratch.data() + static_cast<size_t>(omp_get_thread_num()) * a.G * chunk;
#else
        float* scores = scratch.data();
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t row = u / n_split, c = u % n_split;   // row = (b * Hkv + kh) * T + t
            const int64_t t = row % T, kh = (row / T) % Hkv, b = row / (T * Hkv);
            const int64_t s0 = c * chunk, s1 = std::min(S, s0 + chunk);
            attend_chunk(a, b, kh, t, s0, s1, scores, parts.data() + static_cast<size_t>(u) * a.G * record);
        }
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t t = row % T, kh = (row / T) % Hkv, b = row / (T * Hkv);
            merge_chunks(a, b, kh, t, n_split, parts.data() + static_cast<size_t>(row) * n_split * a.G * record,
                         ptr<float>(out));
        }
    }
}

// Attention of B query rows, row b over its own keys: q (1, H, B, hd) strided, row b's keys and values at
// k[b], v[b] ((1, Hkv, S_b, hd), the strides k_stride / v_stride shared by every row), positions at
// k_pos[b]; q_pos (B,). out (B, H, hd) contiguous. Row b computes as attention() does for it alone.
void attention_rows(std::uintptr_t q, const Dims4& q_shape, const Dims3& q_stride, const std::vector<std::uintptr_t>& k,
                    const std::vector<std::uintptr_t>& v, const std::vector<std::uintptr_t>& k_pos,
                    const std::vector<int64_t>& k_len, int64_t Hkv, const Dims3& k_stride, const Dims3& v_stride,
                    std::uintptr_t q_pos, std::uintptr_t out, double scale, int64_t window, double softcap,
                    int threads) {
    const int64_t H = q_shape[1], B = q_shape[2], hd = q_shape[3];
    check(q_shape[0] == 1 && B >= 1 && H >= 1 && hd >= 1 && Hkv >= 1 && H % Hkv == 0 && threads >= 1,
          "attention_rows: q must be (1, H, B, hd) with H a multiple of Hkv");
    check(static_cast<int64_t>(k.size()) == B && static_cast<int64_t>(v.size()) == B &&
              static_cast<int64_t>(k_pos.size()) == B && static_cast<int64_t>(k_len.size()) == B,
          "attention_rows: one key set per row");
    for (int i = 0; i < 3; ++i)
        check(q_stride[i] >= 0 && k_stride[i] >= 0 && v_stride[i] >= 0, "attention_rows: negative stride");
    check(softcap >= 0, "attention_rows: softcap must be >= 0");
    std::vector<Attn> per_row;   // row b as attention() sees a call of its own: B = T = 1
    std::vector<int64_t> first_unit(B + 1, 0), first_record(B + 1, 0);
    for (int64_t b = 0; b < B; ++b) {
        check(k_len[b] >= 1, "attention_rows: every row needs keys");
        per_row.push_back(Attn{ptr<const float>(q) + b * q_stride[2], q_stride, ptr<const float>(k[b]), k_stride,
                               ptr<const float>(v[b]), v_stride, ptr<const int64_t>(q_pos) + b,
                               ptr<const int64_t>(k_pos[b]), 1, H, Hkv, 1, k_len[b], hd, H / Hkv,
                               static_cast<float>(scale), static_cast<float>(softcap), window});
        const int64_t n_split = (k_len[b] + kKeyChunk - 1) / kKeyChunk;
        first_unit[b + 1] = first_unit[b] + Hkv * n_split;
    }
    const int64_t units = first_unit[B], G = H / Hkv, record = hd + 2;
    const int nt = static_cast<int>(std::min<int64_t>(threads, units));
    std::vector<float> scratch(static_cast<size_t>(nt) * G * kKeyChunk);
    std::vector<float> parts(static_cast<size_t>(units) * G * record);
    const auto attend_chunk = kernels().attend_chunk;

#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#ifdef _OPENMP
        float* scores = scratch.data() + static_cast<size_t>(omp_get_thread_num()) * G * kKeyChunk;
#else
        float* scores = scratch.data();
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t b = std::upper_bound(first_unit.begin(), first_unit.end(), u) - first_unit.begin() - 1;
            const Attn& a = per_row[b];
            const int64_t n_split = (a.S + kKeyChunk - 1) / kKeyChunk, local = u - first_unit[b];
            const int64_t kh = local / n_split, c = local % n_split;
            const int64_t s0 = c * kKeyChunk, s1 = std::min(a.S, s0 + kKeyChunk);
            attend_chunk(a, 0, kh, 0, s0, s1, scores, parts.data() + static_cast<size_t>(u) * G * record);
        }
#pragma omp for schedule(static)
        for (int64_t row = 0; row < B * Hkv; ++row) {
            const int64_t b = row / Hkv, kh = row % Hkv;
            const Attn& a = per_row[b];
            const int64_t n_split = (a.S + kKeyChunk - 1) / kKeyChunk;
            merge_chunks(a, 0, kh, 0, n_split, parts.data() + static_cast<size_t>(first_unit[b] + kh * n_split) * G * record,
                         ptr<float>(out) + b * H * hd);
        }
    }
}

}  // namespace oxide_cpu::raw

void bind_layer_ops(py::module_& m) {
    m.def("layer_isa", [] { return std::string(kernels().name); },
          "The instruction set of the layer-op kernels (chosen once, at first use; OXIDE_CPU_ISA overrides).");
    using namespace oxide_cpu::raw;
    m.def("rms_norm", &rms_norm, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("shape"),
          py::arg("stride"), py::arg("n"), py::arg("weight"), py::arg("out"), py::arg("eps"), py::arg("threads"),
          "out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight; rows over three strided leading dims.");
    m.def("add_rms_norm", &add_rms_norm, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("x_stride"),
          py::arg("residual"), py::arg("residual_stride"), py::arg("shape"), py::arg("n"), py::arg("weight"),
          py::arg("sum"), py::arg("normed"), py::arg("eps"), py::arg("threads"),
          "sum = x + residual; normed = rms_norm(sum, weight, eps).");
    m.def("rope", &rope, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("shape"), py::arg("stride"),
          py::arg("head_dim"), py::arg("cos"), py::arg("sin"), py::arg("out"), py::arg("threads"),
          "Half-split rotary embedding: out[:h] = x1 cos - x2 sin, out[h:] = x2 cos + x1 sin.");
    m.def("attention", &attention, py::call_guard<py::gil_scoped_release>(), py::arg("q"), py::arg("q_shape"),
          py::arg("q_stride"), py::arg("k"), py::arg("k_shape"), py::arg("k_stride"), py::arg("v"),
          py::arg("v_stride"), py::arg("q_pos"), py::arg("k_pos"), py::arg("out"), py::arg("scale"),
          py::arg("window"), py::arg("softcap"), py::arg("threads"),
          "Causal grouped-query attention over explicit positions, optional sliding window and soft-cap.");
    m.def("gated_activation", &gated_activation, py::call_guard<py::gil_scoped_release>(), py::arg("gate"),
          py::arg("gate_stride"), py::arg("up"), py::arg("up_stride"), py::arg("out"), py::arg("rows"), py::arg("n"),
          py::arg("act"), py::arg("threads"),
          "out = act(gate) * up over rows (strided inputs, contiguous out); act 0: silu, 1: gelu (tanh approximation), 2: gelu (erf).");
    m.def("argmax", &argmax, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("n"),
          "Index of the first largest of n float32 values; a NaN counts as the largest (torch.argmax).");
    m.def("add", &add, py::call_guard<py::gil_scoped_release>(), py::arg("a"), py::arg("b"), py::arg("out"),
          py::arg("n"), py::arg("threads"), "out = a + b.");
    m.def("scale", &scale, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("out"), py::arg("n"),
          py::arg("factor"), py::arg("threads"), "out = x * float32(factor).");
    m.def("rope_cos_sin", &rope_cos_sin, py::call_guard<py::gil_scoped_release>(), py::arg("positions"), py::arg("T"),
          py::arg("inv_freq"), py::arg("half"), py::arg("scale"), py::arg("cos"), py::arg("sin"), py::arg("threads"),
          "scale times cos/sin (T, half) of the angles float32(positions[t]) * inv_freq[i].");
    m.def("attention_rows", &attention_rows, py::call_guard<py::gil_scoped_release>(), py::arg("q"), py::arg("q_shape"),
          py::arg("q_stride"), py::arg("k"), py::arg("v"), py::arg("k_pos"), py::arg("k_len"), py::arg("n_kv"),
          py::arg("k_stride"), py::arg("v_stride"), py::arg("q_pos"), py::arg("out"), py::arg("scale"),
          py::arg("window"), py::arg("softcap"), py::arg("threads"),
          "Attention of B query rows, each over its own sequence's keys, in one call; row b as attention() alone.");
    m.def("kv_store_rows", &kv_store_rows, py::call_guard<py::gil_scoped_release>(), py::arg("k"), py::arg("k_stride"),
          py::arg("v"), py::arg("v_stride"), py::arg("n_kv"), py::arg("B"), py::arg("k_dim"), py::arg("v_dim"),
          py::arg("positions"), py::arg("cache_k"), py::arg("cache_v"), py::arg("cache_pos"), py::arg("slots"),
          py::arg("threads"), "Row b's key and value into sequence b's cache at positions[b], for every row.");
    m.def("kv_store", &kv_store, py::call_guard<py::gil_scoped_release>(), py::arg("k"), py::arg("k_stride"),
          py::arg("v"), py::arg("v_stride"), py::arg("n_kv"), py::arg("T"), py::arg("k_dim"), py::arg("v_dim"),
          py::arg("positions"),
          py::arg("cache_k"), py::arg("cache_v"), py::arg("cache_pos"), py::arg("slots"), py::arg("threads"),
          "Stores T keys and values at slots positions[t] % slots of a (1, n_kv, slots, k_dim / v_dim) cache.");
    m.def("softcap", &softcap, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("out"), py::arg("n"),
          py::arg("cap"), py::arg("threads"), "out = cap * tanh(x / cap).");
}
