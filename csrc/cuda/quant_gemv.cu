// The quantized GEMV: y (M, N) = x (M, K) @ dequantize(W (N, K))^T (+ bias), M <= 8, reading GGML blocks as
// stored (the layouts of ggml's block structs, as csrc/cpu/quant_formats.h documents them).
//
// One warp per output row n. Every type is cut into units of 32 weights, two groups of 16 that each have
// one scale and one offset (weight = scale * q + offset): 8 units per 256-weight super-block, 1 per
// 32-weight block. Lane i takes units i, i + 32, ... of the row, so a warp covers 4 super-blocks per step
// and each byte of the row is read by one lane (Q2_K/Q3_K/Q6_K lanes share a few bytes of high bits or
// scales); a unit's 16-byte runs are read with the widest loads the type's block alignment allows (128-bit
// for Q4_K/Q5_K, 32-bit for Q2_K, 16-bit for the rest). Each group contributes
// scale * sum(q * x) + offset * sum(x) per activation row, in float32; the lanes' sums meet by shuffles
// and lane m writes row m.
#include "common.cuh"
#include "launchers.h"

#include <string>

namespace oxide_cuda {
namespace {

constexpr int kWarpsPerBlock = 8;   // rows of W per thread block

// A unit: two groups of 16 weights, each at pos[g] within its block; weight l of group g is
// scale[g] * q[g][l] + offset[g].
struct Unit {
    float q[2][16];
    float scale[2], offset[2];
    int pos[2];
};

// 16 bytes at p as four little-endian words, loaded kAlign bytes at a time (p is kAlign-aligned).
template <int kAlign>
__device__ __forceinline__ void load_words(const uint8_t* p, uint32_t (&w)[4]) {
    if constexpr (kAlign >= 16) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
        w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
    } else if constexpr (kAlign >= 4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = __ldg(reinterpret_cast<const unsigned int*>(p) + i);
    } else {
        static_assert(kAlign == 2, "GGML blocks are at least 2-byte aligned");
        const unsigned short* s = reinterpret_cast<const unsigned short*>(p);
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = uint32_t(__ldg(s + 2 * i)) | (uint32_t(__ldg(s + 2 * i + 1)) << 16);
    }
}

__device__ __forceinline__ int byte_at(const uint32_t (&w)[4], int l) { return (w[l >> 2] >> (8 * (l & 3))) & 0xff; }

__device__ __forceinline__ int byte_of(const uint8_t* p) { return __ldg(p); }

// Q4_0: d (f16), qs[16]; weight l = d * (lo(qs[l]) - 8), weight l + 16 = d * (hi(qs[l]) - 8).
struct Q4_0 {
    static constexpr int kType = 2, kBlock = 32, kBytes = 18, kUnits = 1, kAlign = 2;
    static constexpr bool kOffset = false;
    __device__ static void decode(const uint8_t* b, int, Unit& u) {
        uint32_t w[4];
        load_words<kAlign>(b + 2, w);
#pragma unroll
        for (int l = 0; l < 16; ++l) {
            const int v = byte_at(w, l);
            u.q[0][l] = float((v & 15) - 8);
            u.q[1][l] = float((v >> 4) - 8);
        }
        u.scale[0] = u.scale[1] = load_half(b);
        u.pos[0] = 0, u.pos[1] = 16;
    }
};

// Q8_0: d (f16), qs[32] int8; weight l = d * qs[l].
struct Q8_0 {
    static constexpr int kType = 8, kBlock = 32, kBytes = 34, kUnits = 1, kAlign = 2;
    static constexpr bool kOffset = false;
    __device__ static void decode(const uint8_t* b, int, Unit& u) {
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            uint32_t w[4];
            load_words<kAlign>(b + 2 + 16 * g, w);
#pragma unroll
            for (int l = 0; l < 16; ++l) u.q[g][l] = float(int8_t(byte_at(w, l)));
            u.pos[g] = 16 * g;
        }
        u.scale[0] = u.scale[1] = load_half(b);
    }
};

// Q2_K: scales[16] (lo nibble scale, hi nibble min), qs[64], d, dmin (f16). Group g = 8h + 2s + t (half h,
// shift s, sub-half t) is bits 2s of qs[32h + 16t + l]; weight = d * sc * q - dmin * m. Unit k takes the
// 16 bytes of (h, t) = (k / 4, k % 2) at shifts s = 2 ((k / 2) % 2) and s + 1.
struct Q2_K {
    static constexpr int kType = 10, kBlock = 256, kBytes = 84, kUnits = 8, kAlign = 4;
    static constexpr bool kOffset = true;
    __device__ static void decode(const uint8_t* b, int k, Unit& u) {
        const int h = k >> 2, s0 = 2 * ((k >> 1) & 1), t = k & 1;
        uint32_t w[4];
        load_words<kAlign>(b + 16 + 32 * h + 16 * t, w);
        const float d = load_half(b + 80), dmin = load_half(b + 82);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            const int s = s0 + g, group = 8 * h + 2 * s + t;
#pragma unroll
            for (int l = 0; l < 16; ++l) u.q[g][l] = float((byte_at(w, l) >> (2 * s)) & 3);
            const int sc = byte_of(b + group);
            u.scale[g] = d * float(sc & 15);
            u.offset[g] = -dmin * float(sc >> 4);
            u.pos[g] = 16 * group;
        }
    }
};

// Q3_K: hmask[32], qs[64], scales[12] (16 six-bit scales, biased by 32), d (f16). Group g as in Q2_K, minus
// 4 where bit 4h + s of hmask[16t + l] is clear; weight = d * scale * q.
struct Q3_K {
    static constexpr int kType = 11, kBlock = 256, kBytes = 110, kUnits = 8, kAlign = 2;
    static constexpr bool kOffset = false;
    __device__ static void decode(const uint8_t* b, int k, Unit& u) {
        const int h = k >> 2, s0 = 2 * ((k >> 1) & 1), t = k & 1;
        uint32_t w[4], high[4];
        load_words<kAlign>(b + 32 + 32 * h + 16 * t, w);
        load_words<kAlign>(b + 16 * t, high);
        const uint8_t* sc = b + 96;
        const float d = load_half(b + 108);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            const int s = s0 + g, group = 8 * h + 2 * s + t, bit = 4 * h + s;
#pragma unroll
            for (int l = 0; l < 16; ++l) {
                const int low = (byte_at(w, l) >> (2 * s)) & 3;
                u.q[g][l] = float(low - (((byte_at(high, l) >> bit) & 1) ? 0 : 4));
            }
            const int lo4 = group < 8 ? (byte_of(sc + group) & 15) : (byte_of(sc + group - 8) >> 4);
            const int hi2 = (byte_of(sc + 8 + group % 4) >> (2 * (group / 4))) & 3;
            u.scale[g] = d * float((lo4 | (hi2 << 4)) - 32);
            u.pos[g] = 16 * group;
        }
    }
};

// The 6-bit (scale, min) pair j of Q4_K / Q5_K, packed in the 12 bytes at s.
__device__ __forceinline__ void scale_min_k4(const uint8_t* s, int j, float d, float dmin, float& scale,
                                             float& offset) {
    int sc, mn;
    if (j < 4) {
        sc = byte_of(s + j) & 63;
        mn = byte_of(s + j + 4) & 63;
    } else {
        sc = (byte_of(s + j + 4) & 15) | ((byte_of(s + j - 4) >> 6) << 4);
        mn = (byte_of(s + j + 4) >> 4) | ((byte_of(s + j) >> 6) << 4);
    }
    scale = d * float(sc);
    offset = -dmin * float(mn);
}

// Q4_K / Q5_K: d, dmin (f16), scales[12], [Q5_K: qh[32]], qs[128]. Sub-block 2c is the low nibbles of
// qs[32c .. 32c + 31], sub-block 2c + 1 their high nibbles (Q5_K: plus bit j of qh[l] for sub-block j);
// weight = d * sc_j * q - dmin * m_j. Unit k takes the 16 bytes qs[32c + 16 half ..], c = k / 2, half = k % 2:
// their low nibbles are group 4c + half, their high nibbles group 4c + 2 + half.
template <bool kFifthBit>
struct KQuant45 {
    static constexpr int kType = kFifthBit ? 13 : 12, kBlock = 256, kBytes = kFifthBit ? 176 : 144, kUnits = 8,
                         kAlign = 16;
    static constexpr bool kOffset = true;
    __device__ static void decode(const uint8_t* b, int k, Unit& u) {
        const int c = k >> 1, half = k & 1;
        const uint8_t* qs = b + (kFifthBit ? 48 : 16);
        uint32_t w[4], high[4] = {0, 0, 0, 0};
        load_words<kAlign>(qs + 32 * c + 16 * half, w);
        if constexpr (kFifthBit) load_words<kAlign>(b + 16 + 16 * half, high);
#pragma unroll
        for (int l = 0; l < 16; ++l) {
            const int v = byte_at(w, l), hb = byte_at(high, l);
            u.q[0][l] = float((v & 15) | (((hb >> (2 * c)) & 1) << 4));
            u.q[1][l] = float((v >> 4) | (((hb >> (2 * c + 1)) & 1) << 4));
        }
        const float d = load_half(b), dmin = load_half(b + 2);
        scale_min_k4(b + 4, 2 * c, d, dmin, u.scale[0], u.offset[0]);
        scale_min_k4(b + 4, 2 * c + 1, d, dmin, u.scale[1], u.offset[1]);
        u.pos[0] = 64 * c + 16 * half;
        u.pos[1] = 64 * c + 32 + 16 * half;
    }
};
using Q4_K = KQuant45<false>;
using Q5_K = KQuant45<true>;

// Q6_K: ql[128], qh[64], scales[16] (int8), d (f16). In half h, weight 32a + l (a < 4, l < 32) is the low
// (a < 2) or high nibble of ql[64h + 32 (a % 2) + l] with bits 2a of qh[32h + l] above it, minus 32, times
// d * scales[8h + 2a + l / 16]. Unit k: h = k / 4, a = (k / 2) % 2 and a + 2, l in [16 (k % 2), + 16).
struct Q6_K {
    static constexpr int kType = 14, kBlock = 256, kBytes = 210, kUnits = 8, kAlign = 2;
    static constexpr bool kOffset = false;
    __device__ static void decode(const uint8_t* b, int k, Unit& u) {
        const int h = k >> 2, a = (k >> 1) & 1, lh = k & 1;
        uint32_t low[4], high[4];
        load_words<kAlign>(b + 64 * h + 32 * a + 16 * lh, low);
        load_words<kAlign>(b + 128 + 32 * h + 16 * lh, high);
#pragma unroll
        for (int l = 0; l < 16; ++l) {
            const int v = byte_at(low, l), hb = byte_at(high, l);
            u.q[0][l] = float(((v & 15) | (((hb >> (2 * a)) & 3) << 4)) - 32);
            u.q[1][l] = float(((v >> 4) | (((hb >> (2 * a + 4)) & 3) << 4)) - 32);
        }
        const float d = load_half(b + 208);
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            const int aa = a + 2 * g, group = 8 * h + 2 * aa + lh;
            u.scale[g] = d * float(int8_t(byte_of(b + 192 + group)));
            u.pos[g] = 128 * h + 32 * aa + 16 * lh;
        }
    }
};

template <class Q, class T, int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp, 2)   // <= 128 registers: no spills
    gemv_kernel(const uint8_t* __restrict__ w, int64_t N, int64_t blocks_per_row, int64_t row_bytes,
                const T* __restrict__ x, int rows, int64_t x_stride, const T* __restrict__ bias, T* __restrict__ y,
                int64_t y_stride) {
    const int lane = threadIdx.x % kWarp;
    const int64_t n = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
    if (n >= N) return;   // the whole warp leaves together
    const uint8_t* row = w + n * row_bytes;
    const int64_t units = blocks_per_row * Q::kUnits;
    float acc[kRows];
#pragma unroll
    for (int m = 0; m < kRows; ++m) acc[m] = 0.0f;

    for (int64_t unit = lane; unit < units; unit += kWarp) {
        const int64_t block = unit / Q::kUnits;
        Unit u;
        Q::decode(row + block * Q::kBytes, int(unit % Q::kUnits), u);
        const T* xb = x + block * Q::kBlock;
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
            if (m >= rows) break;
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                float xs[16];
                load16(xb + m * x_stride + u.pos[g], xs);
                float dot = 0.0f, sum = 0.0f;
#pragma unroll
                for (int l = 0; l < 16; ++l) {
                    dot = fmaf(u.q[g][l], xs[l], dot);
                    if constexpr (Q::kOffset) sum += xs[l];
                }
                acc[m] = fmaf(u.scale[g], dot, acc[m]);
                if constexpr (Q::kOffset) acc[m] = fmaf(u.offset[g], sum, acc[m]);
            }
        }
    }

    float mine = 0.0f;   // lane m keeps row m's total
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
        const float total = warp_sum(acc[m]);
        if (lane == m) mine = total;
    }
    if (lane < rows) {
        if (bias != nullptr) mine += to_float(bias[n]);
        y[lane * y_stride + n] = from_float<T>(mine);
    }
}

template <class Q, class T, int kRows>
void launch_rows(const GemvArgs& a) {
    const int64_t grid = (a.N + kWarpsPerBlock - 1) / kWarpsPerBlock;
    gemv_kernel<Q, T, kRows><<<dim3(unsigned(grid)), kWarpsPerBlock * kWarp, 0, reinterpret_cast<cudaStream_t>(a.stream)>>>(
        reinterpret_cast<const uint8_t*>(a.w), a.N, a.K / Q::kBlock, a.row_bytes, reinterpret_cast<const T*>(a.x),
        int(a.M), a.x_stride, reinterpret_cast<const T*>(a.bias), reinterpret_cast<T*>(a.y), a.y_stride);
}

template <class Q, class T>
void launch_dtype(const GemvArgs& a) {
    require(a.w % Q::kAlign == 0, "quant_gemv: the weight's address is not " + std::to_string(Q::kAlign) +
                                      "-byte aligned");
    require(a.x % 16 == 0 && (a.x_stride * int64_t(sizeof(T))) % 16 == 0,
            "quant_gemv: x's address and row stride must be multiples of 16 bytes");
    require(a.K % Q::kBlock == 0 && a.row_bytes == a.K / Q::kBlock * Q::kBytes,
            "quant_gemv: K=" + std::to_string(a.K) + " and row_bytes=" + std::to_string(a.row_bytes) +
                " do not match the type's blocks");
    // Kernels for up to 1, 4 and 8 rows (each stops at the actual count): fewer instantiations to compile.
    if (a.M == 1) launch_rows<Q, T, 1>(a);
    else if (a.M <= 4) launch_rows<Q, T, 4>(a);
    else launch_rows<Q, T, 8>(a);
}

template <class Q>
void launch_type(const GemvArgs& a) {
    switch (a.dtype) {
        case kFloat32: return launch_dtype<Q, float>(a);
        case kFloat16: return launch_dtype<Q, __half>(a);
        case kBFloat16: return launch_dtype<Q, __nv_bfloat16>(a);
        default: throw std::invalid_argument("quant_gemv: unknown dtype code " + std::to_string(a.dtype));
    }
}

}  // namespace

std::vector<std::pair<int, int>> gemv_types() {
    return {{Q4_0::kType, Q4_0::kAlign}, {Q8_0::kType, Q8_0::kAlign}, {Q2_K::kType, Q2_K::kAlign},
            {Q3_K::kType, Q3_K::kAlign}, {Q4_K::kType, Q4_K::kAlign}, {Q5_K::kType, Q5_K::kAlign},
            {Q6_K::kType, Q6_K::kAlign}};
}

void quant_gemv(const GemvArgs& a) {
    require(a.M >= 1 && a.M <= kGemvMaxRows, "quant_gemv: M=" + std::to_string(a.M) + " must lie in [1, 8]");
    require(a.N >= 1 && a.K >= 1 && a.x_stride >= a.K && a.y_stride >= a.N, "quant_gemv: bad sizes or strides");
    require(a.w != 0 && a.x != 0 && a.y != 0, "quant_gemv: null address");
    switch (a.qtype) {
        case Q4_0::kType: launch_type<Q4_0>(a); break;
        case Q8_0::kType: launch_type<Q8_0>(a); break;
        case Q2_K::kType: launch_type<Q2_K>(a); break;
        case Q3_K::kType: launch_type<Q3_K>(a); break;
        case Q4_K::kType: launch_type<Q4_K>(a); break;
        case Q5_K::kType: launch_type<Q5_K>(a); break;
        case Q6_K::kType: launch_type<Q6_K>(a); break;
        default: throw std::invalid_argument("quant_gemv: no kernel for GGML type " + std::to_string(a.qtype));
    }
    check_launch("quant_gemv");
}

}  // namespace oxide_cuda
