// The float32 layer ops of oxide._cpu; see layer_ops.h. oxide/ops/reference.py is the specification.
//
// Conventions, as in module.cpp: tensors arrive as addresses (integers) plus sizes and strides in
// elements; the last dimension of every input is contiguous (stride 1; the Python wrapper copies
// otherwise) and every output is a fresh contiguous buffer. A tensor's leading dimensions are given
// as three sizes and three strides (the wrapper pads with size-1 dims), so strided views such as a
// (B, H, T, hd) transpose of a (B, T, H, hd) projection are read in place.
//
// The code is plain C++ that -O3 vectorises for the baseline target (SSE2 on x86-64). Reductions
// are written with 16 independent lanes so the compiler can keep several vector accumulators.
// The attention kernel, which does most of the arithmetic, is also compiled for AVX2+FMA and
// AVX-512 (function-level `target` attributes) and the variant is chosen at run time from the CPU's
// features and OXIDE_CPU_ISA, as module.cpp chooses the quantized kernels.
#include "layer_ops.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define OXIDE_X86_VARIANTS 1   // AVX2 and AVX-512 builds of the attention kernel, picked at run time
#endif
#if defined(__GNUC__) || defined(__clang__)
#define OXIDE_INLINE inline __attribute__((always_inline))   // so the ISA variants inline the helpers
#else
#define OXIDE_INLINE inline
#endif

namespace py = pybind11;

namespace {

using Dims3 = std::array<int64_t, 3>;   // sizes or strides of the three leading dimensions

template <class T>
T* ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

void check(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
}

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kParallelElements = 1 << 15;   // below this much work a call stays on one thread

// Threads for `work` elements spread over `items` independent pieces.
int threads_for(int threads, int64_t work, int64_t items) {
    if (work < kParallelElements) return 1;
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, items)));
}

// ---------------------------------------------------------------------------------------------
// Elementwise math, branch-free so that loops calling it vectorise.

// exp(x) in float32 to about 2 ulp: exp(x) = 2^n exp(r) with n = round(x / ln 2) and
// r = x - n ln 2 in [-ln2/2, ln2/2], where exp(r) is its degree-7 Taylor polynomial (error < 6e-9).
// Below -87.3 the result is 0 (exp underflows to denormals there); above 88 it is +inf.
OXIDE_INLINE float exp_f32(float x) {
    constexpr float kLog2e = 1.44269504088896341f;
    constexpr float kLn2Hi = 0.693145751953125f;          // few mantissa bits: n * kLn2Hi is exact
    constexpr float kLn2Lo = 1.42860682030941723212e-6f;  // ln 2 - kLn2Hi
    constexpr float kRound = 12582912.f;                  // 1.5 * 2^23: adding it rounds to an integer
    const float xc = std::min(std::max(x, -87.3f), 88.f);
    const float n = (xc * kLog2e + kRound) - kRound;
    const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
    const float p = 1.f + r * (1.f + r * (1.f / 2 + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 +
                    r * (1.f / 720 + r * (1.f / 5040)))))));
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;   // 2^n as a float's bit pattern
    float two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    const float y = p * two_n;
    return x < -87.3f ? 0.f : (x > 88.f ? kInf : y);
}

// tanh(x) in float32 to a few ulp: the odd Taylor series x - x^3/3 + 2x^5/15 - ... (to x^11) for
// |x| < 0.3, else sign(x) (1 - 2 / (exp(2|x|) + 1)).
OXIDE_INLINE float tanh_f32(float x) {
    const float a = std::fabs(x);
    const float x2 = x * x;
    const float series = x + x * x2 * (-1.f / 3 + x2 * (2.f / 15 + x2 * (-17.f / 315 + x2 * (62.f / 2835 +
                         x2 * (-1382.f / 155925)))));
    const float large = std::copysign(1.f - 2.f / (exp_f32(2.f * a) + 1.f), x);
    return a < 0.3f ? series : large;
}

// silu(g) = g * sigmoid(g) = g / (1 + exp(-g)).
OXIDE_INLINE float silu(float g) { return g / (1.f + exp_f32(-g)); }

// gelu_tanh(g) = g/2 (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3); computed as the equal
// g / (1 + exp(-2u)), which has no cancellation where tanh(u) is near -1.
OXIDE_INLINE float gelu_tanh(float g) {
    constexpr float kSqrt2OverPi = 0.79788456080286535588f;
    const float u = kSqrt2OverPi * (g + 0.044715f * g * g * g);
    return g / (1.f + exp_f32(-2.f * u));
}

// gelu(g) = g/2 (1 + erf(g / sqrt 2)), computed as the equal g/2 erfc(-g / sqrt 2), which has no
// cancellation for g << 0; the C library's erfc (not vectorised; few models use this gelu).
inline float gelu_erf(float g) { return 0.5f * g * std::erfc(-g * 0.70710678118654752440f); }

// ---------------------------------------------------------------------------------------------
// Row helpers.

constexpr int kLanes = 16;

// sum_i a[i] * b[i], with kLanes partial sums (so the compiler can use several vector registers).
OXIDE_INLINE float dot(const float* a, const float* b, int64_t n) {
    float lane[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) lane[j] += a[i + j] * b[i + j];
    float s = 0.f;
    for (; i < n; ++i) s += a[i] * b[i];
    for (int j = 0; j < kLanes; ++j) s += lane[j];
    return s;
}

// acc[i] += p * v[i]
OXIDE_INLINE void axpy(float* acc, float p, const float* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) acc[i] += p * v[i];
}

// Element offset of row r (flat over the three leading dims, the last varying fastest).
inline int64_t row_offset(int64_t r, const Dims3& shape, const Dims3& stride) {
    const int64_t i2 = r % shape[2];
    const int64_t rest = r / shape[2];
    return (rest / shape[1]) * stride[0] + (rest % shape[1]) * stride[1] + i2 * stride[2];
}

void check_rows(const Dims3& shape, const Dims3& stride, int64_t n, const char* op) {
    for (int i = 0; i < 3; ++i) check(shape[i] >= 1 && stride[i] >= 0, std::string(op) + ": bad leading sizes or strides");
    check(n >= 1, std::string(op) + ": the last dimension must not be empty");
}

// out = x / sqrt(mean(x^2) + eps) * weight for one row of n.
inline void rms_norm_row(const float* x, const float* weight, float* out, int64_t n, float eps) {
    const float mean_square = dot(x, x, n) / static_cast<float>(n);
    const float inv_rms = 1.f / std::sqrt(mean_square + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * inv_rms) * weight[i];
}

// ---------------------------------------------------------------------------------------------
// The ops.

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight, rows r over the leading dims.
void rms_norm(std::uintptr_t x, const Dims3& shape, const Dims3& stride, int64_t n, std::uintptr_t weight,
              std::uintptr_t out, double eps, int threads) {
    check_rows(shape, stride, n, "rms_norm");
    const int64_t rows = shape[0] * shape[1] * shape[2];
    const float* xp = ptr<const float>(x);
    const float* wp = ptr<const float>(weight);
    float* op = ptr<float>(out);
    const int nt = threads_for(threads, rows * n, rows);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r)
        rms_norm_row(xp + row_offset(r, shape, stride), wp, op + r * n, n, static_cast<float>(eps));
}

// sum = x + residual; normed = rms_norm(sum, weight, eps). Both outputs contiguous (rows, n).
void add_rms_norm(std::uintptr_t x, const Dims3& x_stride, std::uintptr_t residual, const Dims3& r_stride,
                  const Dims3& shape, int64_t n, std::uintptr_t weight, std::uintptr_t sum, std::uintptr_t normed,
                  double eps, int threads) {
    check_rows(shape, x_stride, n, "add_rms_norm");
    check_rows(shape, r_stride, n, "add_rms_norm");
    const int64_t rows = shape[0] * shape[1] * shape[2];
    const float* xp = ptr<const float>(x);
    const float* rp = ptr<const float>(residual);
    const float* wp = ptr<const float>(weight);
    float* sp = ptr<float>(sum);
    float* np = ptr<float>(normed);
    const int nt = threads_for(threads, rows * n, rows);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = xp + row_offset(r, shape, x_stride);
        const float* rr = rp + row_offset(r, shape, r_stride);
        float* s = sp + r * n;
        for (int64_t i = 0; i < n; ++i) s[i] = xr[i] + rr[i];
        rms_norm_row(s, wp, np + r * n, n, static_cast<float>(eps));
    }
}

// Half-split rotary embedding of x: (B, H, T, hd) given as shape (B, H, T) + hd, with cos/sin (T, hd/2)
// contiguous: out[:h] = x1 cos - x2 sin, out[h:] = x2 cos + x1 sin, with x1, x2 = x[:h], x[h:].
void rope(std::uintptr_t x, const Dims3& shape, const Dims3& stride, int64_t hd, std::uintptr_t cos,
          std::uintptr_t sin, std::uintptr_t out, int threads) {
    check_rows(shape, stride, hd, "rope");
    check(hd % 2 == 0, "rope: head_dim must be even");
    const int64_t half = hd / 2, T = shape[2];
    const int64_t rows = shape[0] * shape[1] * T;
    const float* xp = ptr<const float>(x);
    const float* cp = ptr<const float>(cos);
    const float* sp = ptr<const float>(sin);
    float* op = ptr<float>(out);
    const int nt = threads_for(threads, rows * hd, rows);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float* x1 = xp + row_offset(r, shape, stride);
        const float* x2 = x1 + half;
        const float* c = cp + (r % T) * half;
        const float* s = sp + (r % T) * half;
        float* o = op + r * hd;
        for (int64_t i = 0; i < half; ++i) {
            o[i] = x1[i] * c[i] - x2[i] * s[i];
            o[half + i] = x2[i] * c[i] + x1[i] * s[i];
        }
    }
}

// out = act(gate) * up over n contiguous elements; act 0: silu, 1: gelu (tanh form), 2: gelu (erf).
void gated_activation(std::uintptr_t gate, std::uintptr_t up, std::uintptr_t out, int64_t n, int act, int threads) {
    check(n >= 0 && act >= 0 && act <= 2, "gated_activation: bad size or activation");
    const float* g = ptr<const float>(gate);
    const float* u = ptr<const float>(up);
    float* o = ptr<float>(out);
    const int nt = threads_for(threads, n, n);
    if (act == 0) {
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
        for (int64_t i = 0; i < n; ++i) o[i] = silu(g[i]) * u[i];
    } else if (act == 1) {
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
        for (int64_t i = 0; i < n; ++i) o[i] = gelu_tanh(g[i]) * u[i];
    } else {
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
        for (int64_t i = 0; i < n; ++i) o[i] = gelu_erf(g[i]) * u[i];
    }
}

// out = cap * tanh(x / cap) over n contiguous elements.
void softcap(std::uintptr_t x, std::uintptr_t out, int64_t n, double cap, int threads) {
    check(n >= 0 && cap > 0, "softcap: bad size or cap");
    const float* xp = ptr<const float>(x);
    float* o = ptr<float>(out);
    const float c = static_cast<float>(cap);
    const int nt = threads_for(threads, n, n);
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t i = 0; i < n; ++i) o[i] = c * tanh_f32(xp[i] / c);
}

// ---------------------------------------------------------------------------------------------
// Attention.
//
// For each query row (b, h, t): s_j = scale * q . k_j (then cap * tanh(s_j / cap) if softcap > 0)
// over the keys j it may see (0 <= q_pos[t] - k_pos[j], and < window if window > 0), then
// out = sum_j softmax(s)_j v_j. Query head h reads kv head h / G with G = H / Hkv.
//
// Work is split into units (b, kv head, t, key chunk). A unit handles the G query heads that share
// its kv head together, so each key and value row is read from memory once for all of them. For
// few query rows (decode), the keys are split into chunks across threads; each unit leaves, per
// query head, its chunk's max score m, its sum of exp(s - m) l and its sum of exp(s - m) v, and the
// chunks are then merged: out = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c with M = max_c m_c.
// A query row that may see no key at all gets NaN, as the reference's softmax over all -inf gives.

struct Attn {
    const float* q;
    Dims3 q_stride;            // over (B, H, T)
    const float* k;
    Dims3 k_stride;            // over (B, Hkv, S)
    const float* v;
    Dims3 v_stride;
    const int64_t* q_pos;      // (T,)
    const int64_t* k_pos;      // (S,)
    int64_t B, H, Hkv, T, S, hd, G;
    float scale, cap;          // cap 0: no soft-cap
    int64_t window;            // 0: none
};

constexpr int64_t kMinChunk = 64;   // fewest keys per chunk when keys are split across threads

// One unit: query heads kh*G .. kh*G+G-1 at (b, t) against keys [s0, s1). scores: G * (s1 - s0)
// floats of scratch; part: G records of (m, l, acc[hd]).
OXIDE_INLINE void attend_chunk(const Attn& a, int64_t b, int64_t kh, int64_t t, int64_t s0, int64_t s1,
                              float* scores, float* part) {
    const int64_t n = s1 - s0, hd = a.hd, G = a.G;
    const float* q0 = a.q + b * a.q_stride[0] + kh * G * a.q_stride[1] + t * a.q_stride[2];
    const int64_t qp = a.q_pos[t];
    for (int64_t j = 0; j < n; ++j) {
        const int64_t distance = qp - a.k_pos[s0 + j];
        const bool allowed = distance >= 0 && (a.window <= 0 || distance < a.window);
        if (!allowed) {
            for (int64_t g = 0; g < G; ++g) scores[g * n + j] = -kInf;
            continue;
        }
        const float* krow = a.k + b * a.k_stride[0] + kh * a.k_stride[1] + (s0 + j) * a.k_stride[2];
        for (int64_t g = 0; g < G; ++g) {
            float s = a.scale * dot(q0 + g * a.q_stride[1], krow, hd);
            if (a.cap > 0.f) s = a.cap * tanh_f32(s / a.cap);
            scores[g * n + j] = s;
        }
    }
    for (int64_t g = 0; g < G; ++g) {
        float* sg = scores + g * n;
        float* rec = part + g * (hd + 2);
        float m = -kInf;
        for (int64_t j = 0; j < n; ++j) m = std::max(m, sg[j]);
        float l = 0.f;
        if (m != -kInf) {
            for (int64_t j = 0; j < n; ++j) {
                sg[j] = exp_f32(sg[j] - m);   // -inf - m: exp_f32 gives 0
                l += sg[j];
            }
        }
        rec[0] = m;
        rec[1] = l;
        std::fill(rec + 2, rec + 2 + hd, 0.f);
    }
    for (int64_t j = 0; j < n; ++j) {
        const float* vrow = a.v + b * a.v_stride[0] + kh * a.v_stride[1] + (s0 + j) * a.v_stride[2];
        for (int64_t g = 0; g < G; ++g) {
            const float p = scores[g * n + j];
            if (p != 0.f && part[g * (hd + 2)] != -kInf) axpy(part + g * (hd + 2) + 2, p, vrow, hd);
        }
    }
}

// attend_chunk compiled for each instruction set; the table below picks one.
using AttendFn = void (*)(const Attn&, int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*);

void attend_generic(const Attn& a, int64_t b, int64_t kh, int64_t t, int64_t s0, int64_t s1, float* sc, float* p) {
    attend_chunk(a, b, kh, t, s0, s1, sc, p);
}
#ifdef OXIDE_X86_VARIANTS
__attribute__((target("avx2,fma,f16c")))
void attend_avx2(const Attn& a, int64_t b, int64_t kh, int64_t t, int64_t s0, int64_t s1, float* sc, float* p) {
    attend_chunk(a, b, kh, t, s0, s1, sc, p);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
void attend_avx512(const Attn& a, int64_t b, int64_t kh, int64_t t, int64_t s0, int64_t s1, float* sc, float* p) {
    attend_chunk(a, b, kh, t, s0, s1, sc, p);
}
#endif

// The best variant the CPU runs, or the one OXIDE_CPU_ISA names (generic | avx2 | avx512; the Python
// side has already refused a name the CPU cannot run). Chosen once.
AttendFn choose_attend() {
    const char* wanted = std::getenv("OXIDE_CPU_ISA");
    const std::string want = wanted ? wanted : "";
#ifdef OXIDE_X86_VARIANTS
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
                        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx512 && (want.empty() || want == "avx512")) return attend_avx512;
    if (avx2 && (want.empty() || want == "avx2" || want == "avx512")) return attend_avx2;
#endif
    return attend_generic;
}

const AttendFn attend = choose_attend();

// Merges the chunks' records of one (b, kv head, t) into out rows (contiguous (B, H, T, hd)).
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
            axpy(o, w, rec + 2, hd);
        }
        const float inv_l = 1.f / l;
        for (int64_t i = 0; i < hd; ++i) o[i] *= inv_l;
    }
}

void attention(std::uintptr_t q, const std::array<int64_t, 4>& q_shape, const Dims3& q_stride, std::uintptr_t k,
               const Dims3& k_shape, const Dims3& k_stride, std::uintptr_t v, const Dims3& v_stride,
               std::uintptr_t q_pos, std::uintptr_t k_pos, std::uintptr_t out, double scale, int64_t window,
               double softcap, int threads) {
    const int64_t B = q_shape[0], H = q_shape[1], T = q_shape[2], hd = q_shape[3];
    const int64_t Hkv = k_shape[1], S = k_shape[2];
    check(B >= 1 && H >= 1 && T >= 1 && hd >= 1 && S >= 1 && Hkv >= 1 && threads >= 1,
          "attention: sizes must be positive");
    check(k_shape[0] == B && H % Hkv == 0, "attention: k/v must be (B, Hkv, S, hd) with H a multiple of Hkv");
    for (int i = 0; i < 3; ++i)
        check(q_stride[i] >= 0 && k_stride[i] >= 0 && v_stride[i] >= 0, "attention: negative stride");
    check(softcap >= 0, "attention: softcap must be >= 0");
    Attn a{ptr<const float>(q), q_stride, ptr<const float>(k), k_stride, ptr<const float>(v), v_stride,
           ptr<const int64_t>(q_pos), ptr<const int64_t>(k_pos), B, H, Hkv, T, S, hd, H / Hkv,
           static_cast<float>(scale), static_cast<float>(softcap), window};

    const int64_t rows = B * Hkv * T;   // units before splitting keys
    int64_t n_split = 1;
    if (rows < threads) n_split = std::min<int64_t>((threads + rows - 1) / rows, std::max<int64_t>(1, S / kMinChunk));
    const int64_t chunk = (S + n_split - 1) / n_split;
    n_split = (S + chunk - 1) / chunk;
    const int64_t units = rows * n_split;
    const int nt = static_cast<int>(std::min<int64_t>(threads, units));
    const int64_t record = hd + 2;
    std::vector<float> scratch(static_cast<size_t>(nt) * a.G * chunk);   // scores, per thread
    std::vector<float> parts(static_cast<size_t>(units) * a.G * record);
    float* op = ptr<float>(out);

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
            attend(a, b, kh, t, s0, s1, scores, parts.data() + static_cast<size_t>(u) * a.G * record);
        }
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t t = row % T, kh = (row / T) % Hkv, b = row / (T * Hkv);
            merge_chunks(a, b, kh, t, n_split, parts.data() + static_cast<size_t>(row) * n_split * a.G * record, op);
        }
    }
}

}  // namespace

void bind_layer_ops(py::module_& m) {
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
          py::arg("up"), py::arg("out"), py::arg("n"), py::arg("act"), py::arg("threads"),
          "out = act(gate) * up; act 0: silu, 1: gelu (tanh approximation), 2: gelu (erf).");
    m.def("softcap", &softcap, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("out"), py::arg("n"),
          py::arg("cap"), py::arg("threads"), "out = cap * tanh(x / cap).");
}
