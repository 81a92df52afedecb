// Sampling the next token on the device, in one block of 1024 threads, with no sort of the vocabulary.
//
// Semantics (oxide.sampling's chain: Penalties, TopK, TopP, MinP, Temperature, then the inverse-CDF draw):
// - penalties, for ids with count c > 0 when counts are given: l <- (l <= 0 ? l * repeat : l / repeat)
//   - (c * frequency + presence), each step rounded to float32 as the reference's tensor ops round it;
// - temperature == 0: the first maximum of the penalised logits (a NaN counts as the largest);
// - else top-k (0 < k < V: exactly k, ties at the cut lowest ids first), top-p (p < 1: in the order of
//   descending logit, ties lowest id first, keep a token while the softmax mass before it is < p), min-p
//   (keep l >= l_max + log(min_p)), then weights exp((l - l_max) / temperature); the draw takes, over the
//   survivors in ascending id order, the first id whose cumulative weight exceeds u times the total.
//
// How: every stage keeps a prefix of one total order (descending logit, then ascending id), so the survivors
// are described by a Cut (a key and, within that key, the last id kept) and the stages meet as the
// strictest cut. Logits are compared through their order-preserving 32-bit image (key_of). Top-k's k-th
// largest key is found by a 4-level radix select (histograms of 8-bit digits, most significant first);
// top-p's cut by the same select over softmax masses instead of counts. Masses and draw weights are fixed
// point (exp(.) * 2^32 as a 64-bit integer): their sums are exact and independent of the order in which the
// threads add them, so a draw is reproducible. The draw (and the cut within a run of equal logits) is a
// search for the first id whose inclusive prefix sum exceeds a target: 1024 segment sums, one block scan,
// then one warp scanning the segment that holds the target. Penalised logits are recomputed from the inputs
// in each pass (2 reads per id, from L2) rather than stored: a 262,144-id vocabulary does not fit in shared
// memory.
#include "common.cuh"
#include "launchers.h"

#include <cmath>
#include <cstdint>
#include <string>

namespace oxide_cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / kWarp;
constexpr int kBins = 256;
constexpr float kFixedOne = 4294967296.0f;   // 2^32: weight 1 in fixed point
constexpr int64_t kAllIds = INT64_MAX;
using u64 = unsigned long long;

struct Options {
    float temperature, top_p, log_min_p, repeat, frequency, presence;
    int64_t top_k;
    bool top_p_on, min_p_on;
};

// The penalised logits, recomputed on demand.
struct Vocab {
    const float* logits;
    const int* counts;   // null: no penalties
    int64_t V;
    float repeat, frequency, presence;

    __device__ float logit(int64_t i) const {
        float l = __ldg(logits + i);
        if (counts != nullptr) {
            const int c = __ldg(counts + i);
            if (c > 0) {   // separate roundings (no fused multiply-add), as the reference's tensor ops
                const float scaled = l <= 0.0f ? __fmul_rn(l, repeat) : __fdiv_rn(l, repeat);
                l = __fsub_rn(scaled, __fadd_rn(__fmul_rn(float(c), frequency), presence));
            }
        }
        return l;
    }
};

// The order-preserving image of a float: a > b iff key_of(a) > key_of(b); -0 and +0 share a key, NaN is the largest.
__device__ __forceinline__ uint32_t key_of(float f) {
    if (f != f) return 0xffffffffu;
    const uint32_t bits = __float_as_uint(f + 0.0f);   // -0 + 0 = +0
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float value_of(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// e in [0, 1] as fixed point (NaN: 0).
__device__ __forceinline__ u64 fixed(float e) { return e >= 0.0f ? __float2ull_rz(e * kFixedOne) : 0ull; }

// Survivors: ids with key > key, or key == key and id <= index.
struct Cut {
    uint32_t key;
    int64_t index;
    __device__ bool keeps(uint32_t k, int64_t i) const { return k > key || (k == key && i <= index); }
    __device__ Cut stricter(Cut o) const { return (o.key > key || (o.key == key && o.index < index)) ? o : *this; }
};

struct Shared {
    u64 hist[kBins];
    u64 stage[kWarps][kWarp];
    u64 warp_vals[kWarps];
    u64 result[4];
};

__device__ __forceinline__ int lane_id() { return threadIdx.x % kWarp; }
__device__ __forceinline__ int warp_id() { return threadIdx.x / kWarp; }

__device__ __forceinline__ u64 warp_max(u64 v) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

__device__ __forceinline__ u64 warp_inclusive_sum(u64 v) {
    const int lane = lane_id();
#pragma unroll
    for (int offset = 1; offset < kWarp; offset *= 2) {
        const u64 t = __shfl_up_sync(kFullMask, v, offset);
        if (lane >= offset) v += t;
    }
    return v;
}

// The block's sum (kSum) or maximum of v, in every thread.
template <bool kSum>
__device__ u64 block_reduce(u64 v, Shared& sh) {
    v = kSum ? warp_sum(v) : warp_max(v);
    if (lane_id() == 0) sh.warp_vals[warp_id()] = v;
    __syncthreads();
    if (warp_id() == 0) {
        v = sh.warp_vals[lane_id()];
        v = kSum ? warp_sum(v) : warp_max(v);
        if (lane_id() == 0) sh.result[0] = v;
    }
    __syncthreads();
    v = sh.result[0];
    __syncthreads();
    return v;
}

// The sum of the v of the threads before this one; total: the block's sum.
__device__ u64 block_exclusive_sum(u64 v, u64& total, Shared& sh) {
    const u64 inclusive = warp_inclusive_sum(v);
    if (lane_id() == kWarp - 1) sh.warp_vals[warp_id()] = inclusive;
    __syncthreads();
    if (warp_id() == 0) sh.warp_vals[lane_id()] = warp_inclusive_sum(sh.warp_vals[lane_id()]);
    __syncthreads();
    const u64 before = warp_id() > 0 ? sh.warp_vals[warp_id() - 1] : 0;
    total = sh.warp_vals[kWarps - 1];
    __syncthreads();
    return before + inclusive - v;
}

// Calls f(i, penalised logit, key) for every id, in rounds of one id per thread (uniform trip count, so f may
// use warp collectives).
template <class F>
__device__ void for_each_id(const Vocab& v, F f) {
    for (int64_t base = 0; base < v.V; base += kThreads) {
        const int64_t i = base + threadIdx.x;
        const bool in = i < v.V;
        const float l = in ? v.logit(i) : 0.0f;
        f(in, i, l, key_of(l));
    }
}

// hist[bin] += w for the active lanes; lanes with the same bin add once, through their leader.
__device__ void warp_add(Shared& sh, uint32_t bin, u64 w, bool active) {
    const unsigned live = __ballot_sync(kFullMask, active);
    if (!active) return;
    const unsigned peers = __match_any_sync(live, bin);
    u64* stage = sh.stage[warp_id()];
    stage[lane_id()] = w;
    __syncwarp(live);
    if (lane_id() == __ffs(peers) - 1) {
        u64 sum = 0;
        for (unsigned rest = peers; rest != 0; rest &= rest - 1) sum += stage[__ffs(rest) - 1];
        atomicAdd(&sh.hist[bin], sum);
    }
    __syncwarp(live);
}

struct Selected {
    uint32_t key;   // the selected key
    u64 above;      // the weight of keys above it
    u64 at;         // the weight of ids at that key
};

// Radix select over weights w(i, l, key) >= 0: the largest key t whose weight at or above it reaches need
// (need >= 1 and at most the total weight), and the weights above and at t.
template <class W>
__device__ Selected radix_select(const Vocab& v, u64 need, W weight, Shared& sh) {
    uint32_t prefix = 0;
    u64 above = 0, at = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < kBins; b += kThreads) sh.hist[b] = 0;
        if (threadIdx.x == 0) sh.result[0] = 0, sh.result[1] = 0, sh.result[2] = 0;
        __syncthreads();
        for_each_id(v, [&](bool in, int64_t i, float l, uint32_t key) {
            const bool match = in && (shift == 24 || (key >> (shift + 8)) == prefix);
            const u64 w = match ? weight(i, l, key) : 0;
            warp_add(sh, (key >> shift) & 0xff, w, w != 0);
        });
        __syncthreads();
        if (warp_id() == 0) {   // lane j looks at bins 255 - 8j down to 248 - 8j
            const int lane = lane_id();
            u64 mine = 0;
            for (int j = 0; j < 8; ++j) mine += sh.hist[kBins - 1 - 8 * lane - j];
            const u64 inclusive = warp_inclusive_sum(mine);
            u64 running = inclusive - mine;
            const u64 wanted = need - above;
            if (running < wanted && wanted <= inclusive) {
                for (int j = 0; j < 8; ++j) {
                    const int b = kBins - 1 - 8 * lane - j;
                    if (running + sh.hist[b] >= wanted) {
                        sh.result[0] = b, sh.result[1] = running, sh.result[2] = sh.hist[b];
                        break;
                    }
                    running += sh.hist[b];
                }
            }
        }
        __syncthreads();
        prefix = (prefix << 8) | uint32_t(sh.result[0]);
        above += sh.result[1];
        at = sh.result[2];
        __syncthreads();
    }
    return {prefix, above, at};
}

// The first id whose inclusive prefix sum of w(i, l, key) exceeds target(total), or -1 if none does.
template <class W, class T>
__device__ int64_t first_exceeding(const Vocab& v, W weight, T target_of, Shared& sh) {
    const int lane = lane_id(), warp = warp_id();
    const int64_t segment = (v.V + kThreads - 1) / kThreads;   // thread s holds segment s's sum
    auto weight_at = [&](int64_t i) -> u64 {
        const float l = v.logit(i);
        return weight(i, l, key_of(l));
    };
    u64 mine = 0;
    for (int j = 0; j < kWarp; ++j) {   // the warp sums its 32 segments one by one, reading them coalesced
        const int64_t lo = int64_t(warp * kWarp + j) * segment, hi = min(v.V, lo + segment);
        u64 part = 0;
        for (int64_t i = lo + lane; i < hi; i += kWarp) part += weight_at(i);
        part = warp_sum(part);
        if (lane == j) mine = part;
    }
    u64 total;
    const u64 before = block_exclusive_sum(mine, total, sh);
    const u64 target = target_of(total);
    if (target >= total) return -1;
    if (before <= target && target < before + mine) sh.result[0] = threadIdx.x, sh.result[1] = before;
    if (threadIdx.x == 0) sh.result[2] = ~0ull;   // -1 unless the walk finds the id
    __syncthreads();
    const int64_t lo = int64_t(sh.result[0]) * segment, hi = min(v.V, lo + segment);
    u64 running = sh.result[1];
    __syncthreads();
    if (warp == 0) {
        for (int64_t base = lo; base < hi; base += kWarp) {
            const int64_t i = base + lane;
            const u64 inclusive = warp_inclusive_sum(i < hi ? weight_at(i) : 0);
            const unsigned hit = __ballot_sync(kFullMask, running + inclusive > target);
            if (hit != 0) {
                if (lane == __ffs(hit) - 1) sh.result[2] = u64(i);
                break;
            }
            running += __shfl_sync(kFullMask, inclusive, kWarp - 1);
        }
    }
    __syncthreads();
    const int64_t found = int64_t(sh.result[2]);
    __syncthreads();
    return found;
}

// The id of the n-th (from 0) id in ascending order with key == key that the cut keeps.
__device__ int64_t nth_tie(const Vocab& v, Cut cut, uint32_t key, u64 n, Shared& sh) {
    return first_exceeding(
        v, [=](int64_t i, float, uint32_t k) -> u64 { return k == key && cut.keeps(k, i) ? 1 : 0; },
        [=](u64) { return n; }, sh);
}

// What the kernel writes when the logits allow no draw (oxide.ops.reference.SAMPLE_NAN / SAMPLE_NO_FINITE).
constexpr int64_t kSampleNaN = -1;
constexpr int64_t kSampleNoFinite = -2;

__global__ void __launch_bounds__(kThreads, 1) sample_kernel(Vocab v, Options o, const float* u_ptr, int64_t* out) {
    __shared__ Shared sh;

    // The first maximum: the largest (key, -id); and whether any logit is NaN.
    u64 best = 0, any_nan = 0;
    for_each_id(v, [&](bool in, int64_t i, float l, uint32_t key) {
        if (in) {
            best = max(best, (u64(key) << 32) | (0xffffffffu - uint32_t(i)));
            any_nan |= isnan(l) ? 1 : 0;
        }
    });
    best = block_reduce<false>(best, sh);
    any_nan = block_reduce<false>(any_nan, sh);
    const int64_t first_max = int64_t(0xffffffffu - uint32_t(best & 0xffffffffu));
    const float l_max = value_of(uint32_t(best >> 32));
    if (!(o.temperature > 0.0f) || any_nan || !isfinite(l_max)) {
        // greedy (a NaN counts as the largest); or no draw: the reference's codes, which the Sampler raises on
        if (threadIdx.x == 0) *out = !(o.temperature > 0.0f) ? first_max : any_nan ? kSampleNaN : kSampleNoFinite;
        return;
    }

    Cut cut{0, kAllIds};
    if (o.top_k > 0 && o.top_k < v.V) {
        const Selected s = radix_select(v, u64(o.top_k), [](int64_t, float, uint32_t) -> u64 { return 1; }, sh);
        const u64 ties = u64(o.top_k) - s.above;   // ids kept at the k-th largest key
        cut = {s.key, s.at > ties ? nth_tie(v, cut, s.key, ties - 1, sh) : kAllIds};
    }
    if (o.top_p_on) {
        const Cut k = cut;
        const auto mass = [=](int64_t i, float l, uint32_t key) -> u64 {
            return k.keeps(key, i) ? fixed(expf(__fsub_rn(l, l_max))) : 0;
        };
        u64 total = 0;
        for_each_id(v, [&](bool in, int64_t i, float l, uint32_t key) { total += in ? mass(i, l, key) : 0; });
        total = block_reduce<true>(total, sh);
        // Keep an id while the mass before it is < p * total: up to the first whose inclusive mass >= need.
        const u64 need = max(1ull, u64(ceil(double(o.top_p) * double(total))));
        const Selected s = radix_select(v, need, mass, sh);
        const u64 each = max(1ull, fixed(expf(__fsub_rn(value_of(s.key), l_max))));   // the mass of one id at that key
        const u64 ties = (need - s.above + each - 1) / each;
        cut = cut.stricter({s.key, s.at > ties * each ? nth_tie(v, k, s.key, ties - 1, sh) : kAllIds});
    }
    if (o.min_p_on) cut = cut.stricter({key_of(__fadd_rn(l_max, o.log_min_p)), kAllIds});

    const Cut kept = cut;
    const float temperature = o.temperature, u = __ldg(u_ptr);
    const int64_t pick = first_exceeding(
        v,
        [=](int64_t i, float l, uint32_t key) -> u64 {
            return kept.keeps(key, i) ? fixed(expf(__fdiv_rn(__fsub_rn(l, l_max), temperature))) : 0;
        },
        [=](u64 total) -> u64 {   // the first cumulative weight > u * total, clamped to the last weighted id
            const double t = floor(double(u) * double(total));
            return t > 0.0 ? min(u64(t), total - 1) : 0;
        },
        sh);
    if (threadIdx.x == 0) *out = pick >= 0 ? pick : first_max;
}

}  // namespace

void sample(const SampleArgs& a) {
    require(a.V >= 1 && a.V <= INT32_MAX, "sample: the vocabulary size " + std::to_string(a.V) +
                                              " must lie in [1, 2^31)");
    require(a.logits != 0 && a.u != 0 && a.out != 0, "sample: null address");
    require(a.temperature >= 0.0f && a.top_k >= 0 && a.top_p > 0.0f && a.top_p <= 1.0f && a.min_p >= 0.0f &&
                a.min_p <= 1.0f && a.repeat_penalty > 0.0f,
            "sample: options out of range");
    const Vocab vocab{reinterpret_cast<const float*>(a.logits), reinterpret_cast<const int*>(a.counts), a.V,
                      a.repeat_penalty, a.frequency_penalty, a.presence_penalty};
    const Options options{a.temperature, a.top_p, a.min_p > 0.0f ? float(std::log(double(a.min_p))) : 0.0f,
                          a.repeat_penalty, a.frequency_penalty, a.presence_penalty, a.top_k, a.top_p < 1.0f,
                          a.min_p > 0.0f};
    sample_kernel<<<1, kThreads, 0, reinterpret_cast<cudaStream_t>(a.stream)>>>(
        vocab, options, reinterpret_cast<const float*>(a.u), reinterpret_cast<int64_t*>(a.out));
    check_launch("sample");
}

}  // namespace oxide_cuda
