// AVX-512 VNNI build of the quantized GEMV: int8 activations against the weights' integer codes. Chosen at
// run time when the CPU has AVX-512 F/BW/VL and VNNI (Ice Lake, Sapphire Rapids, Zen 4).
//
// Activations are quantized as llama.cpp's CPU backend quantizes them (its Q8_0): each 32-value block b
// of a row becomes
//     s_b = max|x_b| / 127,   q_k = round(x_k / s_b)  (ties to even),   |q_k| <= 127
// so x_k is taken as s_b * q_k, within s_b / 2 (oxide.ops.reference.q8_activations is the specification).
// A weight block supplies unsigned codes c = q + bias in [0, 255] with a scale d_g and an offset o_g per
// group g of 16 weights (units_avx2.h): weight = d_g * c + o_g. Group g of a 256-weight chunk then adds
//     f = o_g * Q_g + float(I_g) * d_g,    T_g = f * s_b + T_g         (each step rounded once, fused)
// to one of 16 running sums T_g (one per group position in a chunk, chunk after chunk), with I_g the exact
// integer sum of c * q over the group and Q_g the sum of its q; the output is the sum of the 16 T_g,
// pairwise: (g, g + 8), then (g, g + 4), (g, g + 2), (g, g + 1).
//
// The 16 sums are the 16 lanes of one register. A chunk's codes are regrouped so that lane g of four
// registers holds group g (register t: its codes 4t .. 4t + 3), and the activations are stored regrouped
// the same way, so four vpdpbusd give a chunk's 16 I_g at once, and every further step is one vector
// operation. Up to 16 activation rows meet each regrouped chunk. An output depends on its own activation
// row alone, in a fixed order: a sequence's logits are the same alone or in a batch, with any thread count.
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <cstdint>
#include <cstring>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#endif

#define OXIDE_F16C 1
#define OXIDE_UNPACK_AVX2 1
// Every activation row of a pass (up to 16) meets each unpacked weight chunk: a row needs one register of
// sums, beside the chunk's four registers of codes and its scales and offsets.
#define OXIDE_ROW_TILE 16
#define OXIDE_MAX_ROWS 16
#include "quant_formats.h"
#include "units_avx2.h"

namespace oxide_cpu {
namespace avx512vnni {
namespace {

#include "common_avx512.h"

constexpr int kUnit = 32;    // weights per block of activations (and per unit of the weights)
constexpr int kChunk = 256;  // weights per chunk: a super-block, or eight blocks: 16 groups

// K rounded up to whole chunks, so that a row's prepared form covers every group a chunk may read.
inline int64_t padded(int64_t K) { return (K + kChunk - 1) / kChunk * kChunk; }

// Row m's prepared form, per chunk: 256 quants regrouped (byte 64t + 4g + e: quant 4t + e of group g),
// then Q_g and s_b (of g's block) per group.
struct RowView {
    const int8_t* quants;
    const float* group_sums;
    const float* group_scales;
};

inline size_t row_bytes(int64_t K) { return size_t(padded(K)) * 3 / 2; }   // a multiple of 64

inline size_t scratch_bytes(int64_t M, int64_t K) { return size_t(M) * row_bytes(K); }

inline RowView row_view(const Activations& x, int64_t m) {
    const int64_t P = padded(x.K);
    const unsigned char* row = x.scratch + size_t(m) * row_bytes(x.K);
    const float* sums = reinterpret_cast<const float*>(row + P);
    return {reinterpret_cast<const int8_t*>(row), sums, sums + P / kGroup};
}

// Writes the quants round(y) of group g (16 values) regrouped into its chunk's quants, returns their sum.
inline int quantize_group(__m512 y, int8_t* chunk_quants, int g) {
    const __m512i v = _mm512_cvtps_epi32(y);   // the default rounding: to nearest, ties to even
    const __m128i q = _mm512_cvtepi32_epi8(v);
    int32_t words[4];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(words), q);
    for (int t = 0; t < 4; ++t) std::memcpy(chunk_quants + 64 * t + 4 * g, words + t, 4);
    return _mm512_reduce_add_epi32(v);
}

inline void prepare_rows(const Activations& x, int64_t m0, int64_t m1) {
    const int64_t P = padded(x.K);
    for (int64_t m = m0; m < m1; ++m) {
        const RowView view = row_view(x, m);
        int8_t* quants = const_cast<int8_t*>(view.quants);
        float* sums = const_cast<float*>(view.group_sums);
        float* scales = const_cast<float*>(view.group_scales);
        const float* values = x.x + m * x.stride;
        for (int64_t i = 0; i < P / kUnit; ++i) {   // 32-value blocks: groups 2i, 2i + 1
            int8_t* chunk_quants = quants + kChunk * (i / 8);
            const int g = 2 * int(i % 8);
            const bool inside = i < x.K / kUnit;
            const __m512 a = inside ? _mm512_loadu_ps(values + kUnit * i) : _mm512_setzero_ps();
            const __m512 b = inside ? _mm512_loadu_ps(values + kUnit * i + 16) : _mm512_setzero_ps();
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            const bool nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
            const float s = amax / 127.f;
            if (nan || !(amax <= 3.4028235e38f) || s == 0.f) {
                // NaN or infinite values make the outputs they meet non-finite (a NaN scale, or 0 * inf), as
                // in float arithmetic; a block that is zero, or too small for its scale to be a float, adds nothing
                const __m512 zero = _mm512_setzero_ps();
                quantize_group(zero, chunk_quants, g);
                quantize_group(zero, chunk_quants, g + 1);
                sums[2 * i] = sums[2 * i + 1] = 0.f;
                scales[2 * i] = scales[2 * i + 1] = nan ? __builtin_nanf("") : (s == 0.f ? 0.f : __builtin_inff());
                continue;
            }
            const __m512 divisor = _mm512_set1_ps(s);
            sums[2 * i] = float(quantize_group(_mm512_div_ps(a, divisor), chunk_quants, g));
            sums[2 * i + 1] = float(quantize_group(_mm512_div_ps(b, divisor), chunk_quants, g + 1));
            scales[2 * i] = scales[2 * i + 1] = s;
        }
    }
}

// --- weight codes, 64 at a time -------------------------------------------------------------------

// The 16 bytes of nibbles at a and at b as 64 codes: a's low nibbles, a's high, b's low, b's high.
inline __m512i nibble_pairs(const uint8_t* a, const uint8_t* b) {
    const __m512i bytes = _mm512_inserti64x4(_mm512_broadcast_i32x4(load16(a)), _mm256_broadcastsi128_si256(load16(b)), 1);
    const __m512i shifts = _mm512_set_epi64(0x0004000400040004, 0x0004000400040004, 0, 0, 0x0004000400040004,
                                            0x0004000400040004, 0, 0);
    return _mm512_and_si512(_mm512_srlv_epi16(bytes, shifts), _mm512_set1_epi8(0xf));
}

// Adds 16 to the codes whose bit is set in the two 32-bit masks at a and b (Q5_0 / Q5_1's fifth bit).
inline __m512i with_fifth_bits(__m512i codes, const uint8_t* a, const uint8_t* b) {
    const __mmask64 set = _cvtu64_mask64(uint64_t(load_u32(a)) | uint64_t(load_u32(b)) << 32);
    return _mm512_mask_add_epi8(codes, set, codes, _mm512_set1_epi8(16));
}

// Codes of the 32-weight blocks a and b (b may repeat a: at a row's odd end the quants there are zero).
template <class F> __m512i pair_codes(const uint8_t* a, const uint8_t* b);
template <> __m512i pair_codes<Q4_0>(const uint8_t* a, const uint8_t* b) { return nibble_pairs(a + 2, b + 2); }
template <> __m512i pair_codes<Q4_1>(const uint8_t* a, const uint8_t* b) { return nibble_pairs(a + 4, b + 4); }
template <> __m512i pair_codes<Q5_0>(const uint8_t* a, const uint8_t* b) {
    return with_fifth_bits(nibble_pairs(a + 6, b + 6), a + 2, b + 2);
}
template <> __m512i pair_codes<Q5_1>(const uint8_t* a, const uint8_t* b) {
    return with_fifth_bits(nibble_pairs(a + 8, b + 8), a + 4, b + 4);
}
template <> __m512i pair_codes<Q8_0>(const uint8_t* a, const uint8_t* b) {
    const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(load32(a + 2)), load32(b + 2), 1);
    return _mm512_xor_si512(q, _mm512_set1_epi8(char(0x80)));
}
template <> __m512i pair_codes<IQ4_NL>(const uint8_t* a, const uint8_t* b) {
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(load16(reinterpret_cast<const uint8_t*>(kIQ4Codes))),
                               nibble_pairs(a + 2, b + 2));
}

// --- the dot product --------------------------------------------------------------------------------

struct Acc {
    __m512 T;   // lane g: group position g
};

inline void acc_zero(Acc& a) { a.T = _mm512_setzero_ps(); }

// The pairs (i, i + 8), (i, i + 4), (i, i + 2), (i, i + 1) of the header.
inline float acc_total(const Acc& a) {
    const __m512 eight = _mm512_add_ps(a.T, _mm512_shuffle_f32x4(a.T, a.T, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m256 low8 = _mm512_castps512_ps256(eight);
    const __m128 four = _mm_add_ps(_mm256_castps256_ps128(low8), _mm256_extractf128_ps(low8, 1));
    const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)));
}

// A chunk's four 64-code segments (segment s: groups 4s .. 4s + 3, 16 codes each) regrouped in place:
// afterwards lane g of v[t] holds codes 4t .. 4t + 3 of group g.
inline void regroup(__m512i (&v)[4]) {
    // within each register, dword t of every 128 bits into 128 bits t
    const __m512i within = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (int s = 0; s < 4; ++s) v[s] = _mm512_permutexvar_epi32(within, v[s]);
    // then 128 bits t of register s into 128 bits s of register t
    const __m512i a = _mm512_shuffle_i64x2(v[0], v[1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i b = _mm512_shuffle_i64x2(v[2], v[3], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i c = _mm512_shuffle_i64x2(v[0], v[1], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i d = _mm512_shuffle_i64x2(v[2], v[3], _MM_SHUFFLE(3, 2, 3, 2));
    v[0] = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    v[1] = _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    v[2] = _mm512_shuffle_i64x2(c, d, _MM_SHUFFLE(2, 0, 2, 0));
    v[3] = _mm512_shuffle_i64x2(c, d, _MM_SHUFFLE(3, 1, 3, 1));
}

// acc[r] += dequantize(wrow) . x[r] for R activation rows, a chunk at a time.
template <class F, int R>
inline void dot_units(const uint8_t* wrow, int64_t nblocks, const RowView* rows, Acc* acc) {
    constexpr int kPerChunk = F::kBlock == kUnit ? 8 : 1;   // blocks per chunk
    for (int64_t b0 = 0, chunk = 0; b0 < nblocks; b0 += kPerChunk, ++chunk) {
        const uint8_t* blocks = wrow + b0 * F::kBytes;
        __m512i codes[4];   // segment s: units 2s, 2s + 1
        BlockScales bs;
        if constexpr (F::kBlock == kUnit) {
            const int nb = nblocks - b0 < kPerChunk ? int(nblocks - b0) : kPerChunk;
            small_block_scales<F>(blocks, nb, bs);   // zero past nb, where the quants are zero too
            for (int i = 0; i < 8; i += 2) {
                const uint8_t* a = blocks + i * F::kBytes;
                codes[i / 2] = i < nb ? pair_codes<F>(a, i + 1 < nb ? a + F::kBytes : a) : _mm512_setzero_si512();
            }
        } else {
            Units<F>::scales(blocks, bs);
            __m256i first = _mm256_setzero_si256();
            Units<F>::template each<true>(blocks, [&](__m256i unit, int u) {
                if (u & 1) {
                    codes[u / 2] = _mm512_inserti64x4(_mm512_castsi256_si512(first), unit, 1);
                } else {
                    first = unit;
                }
            });
        }
        regroup(codes);
        const __m512 scales = join(bs.scale[0], bs.scale[1]), offsets = join(bs.offset[0], bs.offset[1]);
        for (int r = 0; r < R; ++r) {
            const int8_t* q = rows[r].quants + kChunk * chunk;
            __m512i I = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes[0], _mm512_load_si512(q));
            for (int t = 1; t < 4; ++t) I = _mm512_dpbusd_epi32(I, codes[t], _mm512_load_si512(q + 64 * t));
            const __m512 f = _mm512_fmadd_ps(offsets, _mm512_load_ps(rows[r].group_sums + kGroup * chunk),
                                             _mm512_mul_ps(_mm512_cvtepi32_ps(I), scales));
            acc[r].T = _mm512_fmadd_ps(f, _mm512_load_ps(rows[r].group_scales + kGroup * chunk), acc[r].T);
        }
    }
}

}  // namespace

#include "quant_kernels.inc"

const KernelTable table = {"avx512vnni", "q8_0", scratch_bytes, gemv_any, dequant_any};

}  // namespace avx512vnni
}  // namespace oxide_cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
