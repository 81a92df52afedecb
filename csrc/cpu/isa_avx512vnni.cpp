// AVX-512 VNNI build of the quantized GEMV: integer dot products, exact up to the activations' last
// digit. Chosen at run time when the CPU has AVX-512 F/BW/VL and VNNI (Ice Lake, Sapphire Rapids, Zen 4).
//
// Each 32-value block of an activation row, with s = max|x| / 127, is written as three int8 digits:
//     x = s * (hi + mid / 128 + lo / 128^2) + e,   |hi| <= 127, |mid|, |lo| <= 64,   |e| <= 3e-7 max|x|
// (hi = round(x / s), mid and lo round the remainders scaled by 128), which keeps about 22 bits of each
// value against the 24 of float32. A weight block supplies unsigned codes c = q + bias in [0, 255]
// (units_avx2.h), and vpdpbusd sums four code-digit products per 32-bit lane:
//     L = ((c . hi) * 128 + c . mid) * 128 + c . lo         |L| <= 4 * 255 * (127 * 128^2 + 64 * 128 + 64) < 2^31
// exactly, so that  sum(w * x) = sum over lanes of scale * (s / 128^2) * L  +  offset * (sum of x),
// the last term (mins, and -bias * scale) once per 16 weights against the sums of the digit form of x.
// Against the float builds this trades three conversions and two multiplies per 16 weights for three
// integer instructions per 64.
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
// Eight activation rows per unpacked weight block (32 vector registers hold their sums beside the block's
// codes and scales), and eight per pass over the weights: eight rows' digits (about 2.5 KiB each at
// K = 640) stay in L1 while a weight row meets them. On Gemma 3 270M's layer matrices with 8 or 16 rows
// this took 25-35% less time than 4 and 16 (the output head, bound by its arithmetic, did not change).
#define OXIDE_ROW_TILE 8
#define OXIDE_MAX_ROWS 8
#include "quant_formats.h"
#include "units_avx2.h"

namespace oxide_cpu {
namespace avx512vnni {
namespace {

#include "common_avx512.h"

constexpr int kSegment = 64;           // weights per integer step: one register of codes
constexpr float kDigitBase = 128.f;    // hi, mid, lo are base-128 digits

// K rounded up to whole chunks (256 weights: a super-block, or eight blocks), so that the last chunk of
// a row reads only prepared (zero) digits, scales and sums.
inline int64_t padded(int64_t K) { return (K + 255) / 256 * 256; }

// Row m's prepared form: padded(K) / 64 segments of 192 bytes (the 64 hi digits, then mid, then lo);
// per segment 16 lane scales (lanes 0-7: s / 128^2 of its first 32-block, 8-15: of its second);
// per 16 values the sum of the digit form of x.
struct RowView {
    const int8_t* digits;
    const float* lane_scales;
    const float* sums;
};

// Digits 3 bytes per value, lane scales 4 bytes per 4 values, sums 4 bytes per 16: each a multiple of 64.
inline size_t row_bytes(int64_t K) { return size_t(padded(K)) * 4 + size_t(padded(K)) / 4; }

inline size_t scratch_bytes(int64_t M, int64_t K) { return size_t(M) * row_bytes(K); }

inline RowView row_view(const Activations& x, int64_t m) {
    const int64_t P = padded(x.K);
    const unsigned char* row = x.scratch + size_t(m) * row_bytes(x.K);
    return {reinterpret_cast<const int8_t*>(row), reinterpret_cast<const float*>(row + 3 * P),
            reinterpret_cast<const float*>(row + 4 * P)};
}

inline __m128i digits_of(__m512 v) { return _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)); }
inline __m512 rounded(__m512 v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

// Writes 16 values' digits at hi, hi + 64, hi + 128 and returns the integer sum of their digit form
// (hi * 128^2 + mid * 128 + lo) over the 16.
inline int split16(__m512 y, int8_t* hi) {
    const __m512 base = _mm512_set1_ps(kDigitBase);
    const __m512 h = rounded(y);
    const __m512 r1 = _mm512_mul_ps(_mm512_sub_ps(y, h), base);   // exact: |y - h| <= 1/2
    const __m512 m = rounded(r1);
    const __m512 l = rounded(_mm512_mul_ps(_mm512_sub_ps(r1, m), base));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(hi), digits_of(h));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(hi + kSegment), digits_of(m));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(hi + 2 * kSegment), digits_of(l));
    const __m512i whole = _mm512_add_epi32(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_slli_epi32(_mm512_cvtps_epi32(h), 7), _mm512_cvtps_epi32(m)), 7),
        _mm512_cvtps_epi32(l));
    return _mm512_reduce_add_epi32(whole);
}

inline void prepare_rows(const Activations& x, int64_t m0, int64_t m1) {
    const int64_t P = padded(x.K);
    for (int64_t m = m0; m < m1; ++m) {
        unsigned char* row = x.scratch + size_t(m) * row_bytes(x.K);
        int8_t* digits = reinterpret_cast<int8_t*>(row);
        float* lane_scales = reinterpret_cast<float*>(row + 3 * P);
        float* sums = reinterpret_cast<float*>(row + 4 * P);
        const float* values = x.x + m * x.stride;
        for (int64_t i = 0; i < P / 32; ++i) {   // 32-value blocks
            int8_t* hi = digits + 3 * kSegment * (i / 2) + 32 * (i % 2);
            float* lanes = lane_scales + 16 * (i / 2) + 8 * (i % 2);
            const __m512 a = i < x.K / 32 ? _mm512_loadu_ps(values + 32 * i) : _mm512_setzero_ps();
            const __m512 b = i < x.K / 32 ? _mm512_loadu_ps(values + 32 * i + 16) : _mm512_setzero_ps();
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            const bool nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
            const float s = amax / 127.f;
            if (nan || !(amax <= 3.4028235e38f) || s == 0.f) {
                // NaN or infinite values make the outputs they meet non-finite, as in float arithmetic; a
                // block that is zero (or too small for its scale to be a float) adds nothing
                const float lane = nan ? __builtin_nanf("") : (s == 0.f ? 0.f : __builtin_inff());
                for (int k = 0; k < 3; ++k) std::memset(hi + k * kSegment, 0, 32);
                for (int k = 0; k < 8; ++k) lanes[k] = lane;
                sums[2 * i] = sums[2 * i + 1] = lane;
                continue;
            }
            const __m512 divisor = _mm512_set1_ps(s);
            const float digit_scale = s / (kDigitBase * kDigitBase);
            sums[2 * i] = digit_scale * float(split16(_mm512_div_ps(a, divisor), hi));
            sums[2 * i + 1] = digit_scale * float(split16(_mm512_div_ps(b, divisor), hi + 16));
            for (int k = 0; k < 8; ++k) lanes[k] = digit_scale;
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

// Codes of the 32-weight blocks a and b (b may repeat a: at a row's odd end the digits there are zero).
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

// Per activation row: the running sum (one FMA per 64 weights, far apart enough not to wait on each
// other) and the offset terms (16 groups per vector).
struct Acc {
    __m512 sum;
    __m512 offsets;
};

inline void acc_zero(Acc& a) { a.sum = a.offsets = _mm512_setzero_ps(); }

inline float acc_total(const Acc& a) { return _mm512_reduce_add_ps(_mm512_add_ps(a.sum, a.offsets)); }

template <class F, int R>
inline void dot_units(const uint8_t* wrow, int64_t nblocks, const RowView* rows, Acc* acc) {
    constexpr int kPerChunk = F::kBlock == 32 ? 8 : 1;   // blocks per 256 weights
    const __m512i lane_group = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 sum[R];
    for (int r = 0; r < R; ++r) sum[r] = acc[r].sum;
    BlockScales bs;
    for (int64_t b0 = 0, chunk = 0; b0 < nblocks; b0 += kPerChunk, ++chunk) {
        const uint8_t* blocks = wrow + b0 * F::kBytes;
        const int nb = nblocks - b0 < kPerChunk ? int(nblocks - b0) : kPerChunk;
        if constexpr (F::kBlock == 32) {
            small_block_scales<F>(blocks, nb, bs);
        } else {
            Units<F>::scales(blocks, bs);
        }
        const __m512 scales = join(bs.scale[0], bs.scale[1]);
        // Segment j of the chunk: units 2j and 2j + 1 (groups 4j .. 4j + 3, four lanes each).
        auto segment = [&](__m512i codes, int j) {
            const __m512 w = _mm512_permutexvar_ps(_mm512_add_epi32(lane_group, _mm512_set1_epi32(4 * j)), scales);
            const int64_t seg = 4 * chunk + j;
            for (int r = 0; r < R; ++r) {
                const int8_t* d = rows[r].digits + 3 * kSegment * seg;
                __m512i L = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, _mm512_load_si512(d));
                L = _mm512_dpbusd_epi32(_mm512_slli_epi32(L, 7), codes, _mm512_load_si512(d + kSegment));
                L = _mm512_dpbusd_epi32(_mm512_slli_epi32(L, 7), codes, _mm512_load_si512(d + 2 * kSegment));
                const __m512 lane_scale = _mm512_mul_ps(w, _mm512_load_ps(rows[r].lane_scales + 16 * seg));
                sum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(L), lane_scale, sum[r]);
            }
        };
        if constexpr (F::kBlock == 32) {
            for (int i = 0; i < nb; i += 2) {
                const uint8_t* a = blocks + i * F::kBytes;
                segment(pair_codes<F>(a, i + 1 < nb ? a + F::kBytes : a), i / 2);
            }
        } else {
            __m256i first = _mm256_setzero_si256();
            Units<F>::template each<true>(blocks, [&](__m256i codes, int u) {
                if (u & 1) {
                    segment(_mm512_inserti64x4(_mm512_castsi256_si512(first), codes, 1), u / 2);
                } else {
                    first = codes;
                }
            });
        }
        const __m512 offsets = join(bs.offset[0], bs.offset[1]);   // every type has mins or a bias to undo
        for (int r = 0; r < R; ++r)
            acc[r].offsets = _mm512_fmadd_ps(offsets, _mm512_load_ps(rows[r].sums + 16 * chunk), acc[r].offsets);
    }
    for (int r = 0; r < R; ++r) acc[r].sum = sum[r];
}

}  // namespace

#include "quant_kernels.inc"

const KernelTable table = {"avx512vnni", scratch_bytes, gemv_any, dequant_any};

}  // namespace avx512vnni
}  // namespace oxide_cpu

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
