// Every block type as 32-weight units held in registers, for the AVX2 and AVX-512 GEMV. Included after
// quant_formats.h by the x86 SIMD builds (isa_avx2.cpp, isa_avx512.cpp, isa_avx512vnni.cpp); everything here uses AVX2 (and F16C) only.
//
// kBias: q + kBias is the unsigned code in [0, 255] that the integer-dot build multiplies by signed int8
// activations (it forms the codes of 32-weight blocks itself, 64 at a time).
// A 32-weight block type F (F::kBlock == 32) gives one unit per block:
//     Units<F>::quants(block)                the 32 quants q
//     half_to_float(block) [, half_to_float(block + 2)]   its scale d [and offset m]
// so that weight i is d * q[i] (+ m).
// A super-block type (F::kBlock == 256) first decodes its scales, with vector operations, then gives
// its eight units:
//     Units<F>::scales(block, s)             the scale and offset of each of its 16 groups of 16 weights
//     Units<F>::each<codes>(block, fn)       fn(q, u) for u = 0 .. 7: quants, or codes when `codes`
// so that weight i of unit u is  scale(2u + i / 16) * q[i] + offset(2u + i / 16); the offsets of
// the 16 groups then cost one vector FMA against the sums of x over each 16.
// kSharedScale: both halves of every unit have the same scale (one multiply per unit, not two).
// small_block_scales gives a 32-weight type's scales in the super-block form, eight blocks at a time.
#pragma once

#include <cstdint>
#include <cstring>

namespace {

// Group g's scale and offset are lane g % 8 of scale[g / 8] and offset[g / 8]: kept in registers, since
// a wide load of what narrower stores just wrote waits for the stores to retire.
struct BlockScales {
    __m256 scale[2], offset[2];
};

// Group g's value (g < 16), in every lane.
inline __m256 group_value(const __m256 (&v)[2], int g) {
    return _mm256_permutevar8x32_ps(v[g / 8], _mm256_set1_epi32(g % 8));
}

inline __m256i low_nibbles(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0xf)); }
inline __m256i high_nibbles(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0xf)); }
// (bits of each byte of v from position k, masked to `mask`), for a bit field inside every byte.
inline __m256i byte_field(__m256i v, int k, int mask) {
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(k)), _mm256_set1_epi8(char(mask)));
}

inline uint32_t load_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// dst = factor * bytes[0..15] (groups 0-7, 8-15), the bytes read as signed or unsigned 8-bit integers.
template <bool kSigned>
inline void scaled_bytes(__m128i bytes, float factor, __m256 (&dst)[2]) {
    const __m128i upper = _mm_srli_si128(bytes, 8);
    const __m256i lo = kSigned ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
    const __m256i hi = kSigned ? _mm256_cvtepi8_epi32(upper) : _mm256_cvtepu8_epi32(upper);
    const __m256 f = _mm256_set1_ps(factor);
    dst[0] = _mm256_mul_ps(f, _mm256_cvtepi32_ps(lo));
    dst[1] = _mm256_mul_ps(f, _mm256_cvtepi32_ps(hi));
}

// dst[2j] = dst[2j + 1] = v[j]: eight values, one per 32 weights, given per group of 16.
inline void twice(__m256 v, __m256 (&dst)[2]) {
    const __m256 lo = _mm256_unpacklo_ps(v, v), hi = _mm256_unpackhi_ps(v, v);   // v0 v0 v1 v1 | v4 v4 v5 v5, ...
    dst[0] = _mm256_permute2f128_ps(lo, hi, 0x20);
    dst[1] = _mm256_permute2f128_ps(lo, hi, 0x31);
}

// dst[2j] = dst[2j + 1] = factor * bytes[j] for j < 8.
template <bool kSigned>
inline void scaled_bytes_twice(__m128i bytes, float factor, __m256 (&dst)[2]) {
    const __m256i ints = kSigned ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
    twice(_mm256_mul_ps(_mm256_set1_ps(factor), _mm256_cvtepi32_ps(ints)), dst);
}

// s.offset = -bias * s.scale: the offsets that turn codes (q + bias) back into q, for the types that have
// no offsets of their own. The signed build (quants<false>) never reads them: its kOffset is false.
inline void biased_offsets(BlockScales& s, int bias) {
    const __m256 f = _mm256_set1_ps(-float(bias));
    s.offset[0] = _mm256_mul_ps(f, s.scale[0]);
    s.offset[1] = _mm256_mul_ps(f, s.scale[1]);
}

// --- 32-weight blocks: one unit each ----------------------------------------------------------------

template <class F> struct Units;

template <> struct Units<Q4_0> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 8;
    static __m256i quants(const uint8_t* b) { return quants_nibbles(b + 2, kBias); }
};
template <> struct Units<Q4_1> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 0;
    static __m256i quants(const uint8_t* b) { return quants_nibbles(b + 4, 0); }
};
template <> struct Units<Q5_0> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 16;
    static __m256i quants(const uint8_t* b) { return quants_5bit(b + 2, b + 6, kBias); }
};
template <> struct Units<Q5_1> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 0;
    static __m256i quants(const uint8_t* b) { return quants_5bit(b + 4, b + 8, 0); }
};
template <> struct Units<Q8_0> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 128;
    static __m256i quants(const uint8_t* b) { return load32(b + 2); }
};

// IQ4_NL's table plus 128, as unsigned codes (read as bytes by quants_nibbles_lut).
constexpr uint8_t kIQ4CodeBytes[16] = {1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241};
const int8_t* const kIQ4Codes = reinterpret_cast<const int8_t*>(kIQ4CodeBytes);

template <> struct Units<IQ4_NL> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 128;
    static __m256i quants(const uint8_t* b) { return quants_nibbles_lut(b + 2, kIQ4Values); }
};

// Groups 2i and 2i + 1 of s are block i's (i < nblocks <= 8; the rest 0): scale d, offset m - kBias * d
// (m at byte 2 for the types with an offset).
template <class F>
inline void small_block_scales(const uint8_t* blocks, int nblocks, BlockScales& s) {
    auto field = [&](int at) {   // the f16 at byte `at` of each block, as eight floats, built in a register
        auto half = [&](int i) { return *reinterpret_cast<const uint16_t*>(blocks + i * F::kBytes + at); };
        __m128i v = _mm_setzero_si128();
        v = _mm_insert_epi16(v, half(0), 0);
        v = nblocks > 1 ? _mm_insert_epi16(v, half(1), 1) : v;
        v = nblocks > 2 ? _mm_insert_epi16(v, half(2), 2) : v;
        v = nblocks > 3 ? _mm_insert_epi16(v, half(3), 3) : v;
        v = nblocks > 4 ? _mm_insert_epi16(v, half(4), 4) : v;
        v = nblocks > 5 ? _mm_insert_epi16(v, half(5), 5) : v;
        v = nblocks > 6 ? _mm_insert_epi16(v, half(6), 6) : v;
        v = nblocks > 7 ? _mm_insert_epi16(v, half(7), 7) : v;
        return _mm256_cvtph_ps(v);
    };
    const __m256 d = field(0);
    __m256 offset = _mm256_mul_ps(d, _mm256_set1_ps(-float(Units<F>::kBias)));
    if constexpr (F::kOffset) offset = _mm256_add_ps(offset, field(2));
    twice(d, s.scale);
    twice(offset, s.offset);
}

// --- 256-weight super-blocks -------------------------------------------------------------------------

// Q2_K / Q3_K: unit u covers groups 2u, 2u + 1: bytes 32h .. 32h + 31 of qs at bits 2s (h = u / 4, s = u % 4).
template <> struct Units<Q2_K> {
    static constexpr bool kSharedScale = false;   // a scale per 16
    static constexpr int kBias = 0;
    static void scales(const uint8_t* b, BlockScales& s) {   // byte g: scale in the low nibble, min in the high
        const __m128i v = load16(b), m = _mm_set1_epi8(0xf);
        scaled_bytes<false>(_mm_and_si128(v, m), half_to_float(b + 80), s.scale);
        scaled_bytes<false>(_mm_and_si128(_mm_srli_epi16(v, 4), m), -half_to_float(b + 82), s.offset);
    }
    template <bool, class Fn> static void each(const uint8_t* b, Fn&& fn) {
        for (int u = 0; u < 8; ++u) fn(byte_field(load32(b + 16 + 32 * (u / 4)), 2 * (u % 4), 3), u);
    }
};
template <> struct Units<Q3_K> {
    static constexpr bool kSharedScale = false;   // a scale per 16
    static constexpr int kBias = 4;
    // Scale g: low 4 bits from byte g % 8 (high nibble when g >= 8), high 2 bits from byte 8 + g % 4 at
    // bit 2 (g / 4); minus 32. Built four groups per 32-bit word.
    static void scales(const uint8_t* b, BlockScales& s) {
        const uint32_t w0 = load_u32(b + 96), w1 = load_u32(b + 100), w2 = load_u32(b + 104), m4 = 0x0f0f0f0f, m2 = 0x03030303;
        const __m128i six = _mm_setr_epi32(int((w0 & m4) | ((w2 & m2) << 4)), int((w1 & m4) | (((w2 >> 2) & m2) << 4)),
                                           int(((w0 >> 4) & m4) | (((w2 >> 4) & m2) << 4)),
                                           int(((w1 >> 4) & m4) | (((w2 >> 6) & m2) << 4)));
        scaled_bytes<true>(_mm_sub_epi8(six, _mm_set1_epi8(32)), half_to_float(b + 108), s.scale);
        biased_offsets(s, kBias);
    }
    template <bool kCodes, class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const __m256i hmask = load32(b), bias = _mm256_set1_epi8(kCodes ? 0 : kBias);
        for (int u = 0; u < 8; ++u) {
            const int h = u / 4, k = u % 4;
            const __m256i low = byte_field(load32(b + 32 + 32 * h), 2 * k, 3);
            const __m256i high = byte_field(hmask, 4 * h + k, 1);                      // 1 where the bit is set
            fn(_mm256_sub_epi8(_mm256_add_epi8(low, _mm256_slli_epi16(high, 2)), bias), u);
        }
    }
};

// The eight 6-bit scales and mins of Q4_K / Q5_K (12 bytes): pair j < 4 is the low 6 bits of bytes j and
// j + 4; pair j >= 4 takes its low 4 bits from byte j + 4 (scale: low nibble, min: high nibble) and its
// top 2 bits from the top of bytes j - 4 and j. Scaled by d and -dmin.
inline void k4_block_scales(const uint8_t* b, BlockScales& s) {
    const uint32_t w0 = load_u32(b + 4), w1 = load_u32(b + 8), w2 = load_u32(b + 12), m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f,
                   top = 0x30303030;
    const __m128i sc = _mm_setr_epi32(int(w0 & m6), int((w2 & m4) | ((w0 >> 2) & top)), 0, 0);
    const __m128i mn = _mm_setr_epi32(int(w1 & m6), int(((w2 >> 4) & m4) | ((w1 >> 2) & top)), 0, 0);
    scaled_bytes_twice<false>(sc, half_to_float(b), s.scale);
    scaled_bytes_twice<false>(mn, -half_to_float(b + 2), s.offset);
}

// Q4_K / Q5_K: unit 2c + k is nibble k (low, high) of bytes 32c .. 32c + 31.
template <> struct Units<Q4_K> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 0;
    static void scales(const uint8_t* b, BlockScales& s) { k4_block_scales(b, s); }
    template <bool, class Fn> static void each(const uint8_t* b, Fn&& fn) {
        for (int c = 0; c < 4; ++c) {
            const __m256i v = load32(b + 16 + 32 * c);
            fn(low_nibbles(v), 2 * c);
            fn(high_nibbles(v), 2 * c + 1);
        }
    }
};
template <> struct Units<Q5_K> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 0;
    static void scales(const uint8_t* b, BlockScales& s) { k4_block_scales(b, s); }
    template <bool, class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const __m256i qh = load32(b + 16);
        for (int c = 0; c < 4; ++c) {
            const __m256i v = load32(b + 48 + 32 * c);
            fn(_mm256_or_si256(low_nibbles(v), _mm256_slli_epi16(byte_field(qh, 2 * c, 1), 4)), 2 * c);
            fn(_mm256_or_si256(high_nibbles(v), _mm256_slli_epi16(byte_field(qh, 2 * c + 1, 1), 4)), 2 * c + 1);
        }
    }
};

// Q6_K: in half h, unit 4h + k takes 4 bits of ql[64h + 32 (k & 1) ..] (high nibble when k >= 2) and
// the 2 bits of qh[32h ..] at 2k, minus 32; the 16 int8 scales are per group.
template <> struct Units<Q6_K> {
    static constexpr bool kSharedScale = false;   // a scale per 16
    static constexpr int kBias = 32;
    static void scales(const uint8_t* b, BlockScales& s) {
        scaled_bytes<true>(load16(b + 192), half_to_float(b + 208), s.scale);
        biased_offsets(s, kBias);
    }
    template <bool kCodes, class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const __m256i bias = _mm256_set1_epi8(kCodes ? 0 : kBias);
        for (int h = 0; h < 2; ++h) {
            const __m256i a = load32(b + 64 * h), c = load32(b + 64 * h + 32), hq = load32(b + 128 + 32 * h);
            const __m256i four[4] = {low_nibbles(a), low_nibbles(c), high_nibbles(a), high_nibbles(c)};
            for (int k = 0; k < 4; ++k)
                fn(_mm256_sub_epi8(_mm256_or_si256(four[k], _mm256_slli_epi16(byte_field(hq, 2 * k, 3), 4)), bias), 4 * h + k);
        }
    }
};

// IQ4_XS: unit j is sub-block j: IQ4_NL's table on bytes 16j .. 16j + 15, scale d * (6-bit ls_j - 32),
// ls_j = nibble j of scales_l | (bits 2j, 2j + 1 of scales_h) << 4.
template <> struct Units<IQ4_XS> {
    static constexpr bool kSharedScale = true;
    static constexpr int kBias = 128;
    static void scales(const uint8_t* b, BlockScales& s) {
        uint16_t scales_h;
        std::memcpy(&scales_h, b + 2, 2);
        uint64_t high = 0;
        for (int j = 0; j < 8; ++j) high |= uint64_t((scales_h >> (2 * j)) & 3) << (8 * j + 4);
        const __m128i l = _mm_cvtsi32_si128(int(load_u32(b + 4))), m = _mm_set1_epi8(0xf);
        const __m128i low = _mm_unpacklo_epi8(_mm_and_si128(l, m), _mm_and_si128(_mm_srli_epi16(l, 4), m));
        const __m128i six = _mm_or_si128(low, _mm_cvtsi64_si128(int64_t(high)));
        scaled_bytes_twice<true>(_mm_sub_epi8(six, _mm_set1_epi8(32)), half_to_float(b), s.scale);
        biased_offsets(s, kBias);
    }
    template <bool kCodes, class Fn> static void each(const uint8_t* b, Fn&& fn) {
        for (int j = 0; j < 8; ++j) fn(quants_nibbles_lut(b + 8 + 16 * j, kCodes ? kIQ4Codes : kIQ4Values), j);
    }
};

}  // namespace
