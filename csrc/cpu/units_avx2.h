// Every block type as a sequence of 32-weight units held in registers, for the AVX2 and AVX-512
// GEMV: Units<F>::each(block, fn) calls fn(unit, u) for u = 0 .. kBlock / 32 - 1, where weight i of
// unit u is scale[i / 16] * q[i] + offset[i / 16] (the same values as F::unpack writes to memory,
// which the portable build uses). kSharedScale: both halves of every unit have the same scale. Included after quant_formats.h by isa_avx2.cpp and isa_avx512.cpp.
#pragma once

#include <cstdint>

namespace {

struct Unit {
    __m256i q;               // 32 int8 quants
    float scale[2], offset[2];
};

inline __m256i low_nibbles(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(0xf)); }
inline __m256i high_nibbles(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0xf)); }
// (bits of each byte of v from position k, masked to `mask`), for a bit field inside every byte.
inline __m256i byte_field(__m256i v, int k, int mask) {
    return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(k)), _mm256_set1_epi8(char(mask)));
}

inline Unit scaled(__m256i q, float s, float o = 0.f) { return Unit{q, {s, s}, {o, o}}; }

template <class F> struct Units;

template <> struct Units<Q4_0> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) { fn(scaled(quants_nibbles(b + 2, 8), half_to_float(b)), 0); }
};
template <> struct Units<Q4_1> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        fn(scaled(quants_nibbles(b + 4, 0), half_to_float(b), half_to_float(b + 2)), 0);
    }
};
template <> struct Units<Q5_0> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) { fn(scaled(quants_5bit(b + 2, b + 6, 16), half_to_float(b)), 0); }
};
template <> struct Units<Q5_1> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        fn(scaled(quants_5bit(b + 4, b + 8, 0), half_to_float(b), half_to_float(b + 2)), 0);
    }
};
template <> struct Units<Q8_0> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) { fn(scaled(load32(b + 2), half_to_float(b)), 0); }
};
template <> struct Units<IQ4_NL> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        fn(scaled(quants_nibbles_lut(b + 2, kIQ4Values), half_to_float(b)), 0);
    }
};

// Q2_K / Q3_K: unit u covers groups 2u, 2u + 1: bytes 32h .. 32h + 31 of qs at bits 2s (h = u / 4, s = u % 4).
template <> struct Units<Q2_K> {
    static constexpr bool kSharedScale = false;   // a scale per 16
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const uint8_t* scales = b;
        const float d = half_to_float(b + 80), dmin = half_to_float(b + 82);
        for (int u = 0; u < 8; ++u) {
            const __m256i q = byte_field(load32(b + 16 + 32 * (u / 4)), 2 * (u % 4), 3);
            const uint8_t s0 = scales[2 * u], s1 = scales[2 * u + 1];
            fn(Unit{q, {d * float(s0 & 0xf), d * float(s1 & 0xf)}, {-dmin * float(s0 >> 4), -dmin * float(s1 >> 4)}}, u);
        }
    }
};
template <> struct Units<Q3_K> {
    static constexpr bool kSharedScale = false;   // a scale per 16
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const uint8_t* sc = b + 96;
        const float d = half_to_float(b + 108);
        const __m256i hmask = load32(b);
        auto scale = [&](int g) {
            const int lo4 = g < 8 ? (sc[g] & 0xf) : (sc[g - 8] >> 4);
            const int hi2 = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
            return d * float((lo4 | (hi2 << 4)) - 32);
        };
        for (int u = 0; u < 8; ++u) {
            const int h = u / 4, s = u % 4;
            const __m256i low = byte_field(load32(b + 32 + 32 * h), 2 * s, 3);
            const __m256i high = byte_field(hmask, 4 * h + s, 1);                      // 1 where the bit is set
            const __m256i q = _mm256_sub_epi8(_mm256_add_epi8(low, _mm256_slli_epi16(high, 2)), _mm256_set1_epi8(4));
            fn(Unit{q, {scale(2 * u), scale(2 * u + 1)}, {0.f, 0.f}}, u);
        }
    }
};

// Q4_K / Q5_K: unit 2c + k is nibble k (low, high) of bytes 32c .. 32c + 31, with pair 2c + k's scale and min.
template <> struct Units<Q4_K> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const float d = half_to_float(b), dmin = half_to_float(b + 2);
        for (int c = 0; c < 4; ++c) {
            const __m256i v = load32(b + 16 + 32 * c);
            int sc, mn;
            scale_min_k4(b + 4, 2 * c, sc, mn);
            fn(scaled(low_nibbles(v), d * float(sc), -dmin * float(mn)), 2 * c);
            scale_min_k4(b + 4, 2 * c + 1, sc, mn);
            fn(scaled(high_nibbles(v), d * float(sc), -dmin * float(mn)), 2 * c + 1);
        }
    }
};
template <> struct Units<Q5_K> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const float d = half_to_float(b), dmin = half_to_float(b + 2);
        const __m256i qh = load32(b + 16);
        for (int c = 0; c < 4; ++c) {
            const __m256i v = load32(b + 48 + 32 * c);
            int sc, mn;
            scale_min_k4(b + 4, 2 * c, sc, mn);
            const __m256i lo = _mm256_or_si256(low_nibbles(v), _mm256_slli_epi16(byte_field(qh, 2 * c, 1), 4));
            fn(scaled(lo, d * float(sc), -dmin * float(mn)), 2 * c);
            scale_min_k4(b + 4, 2 * c + 1, sc, mn);
            const __m256i hi = _mm256_or_si256(high_nibbles(v), _mm256_slli_epi16(byte_field(qh, 2 * c + 1, 1), 4));
            fn(scaled(hi, d * float(sc), -dmin * float(mn)), 2 * c + 1);
        }
    }
};

// Q6_K: in half h, unit 4h + k takes 4 bits of ql[64h + 32 (k & 1) ..] (high nibble when k >= 2) and
// the 2 bits of qh[32h ..] at 2k, minus 32; its groups use scales 8h + 2k and 8h + 2k + 1.
template <> struct Units<Q6_K> {
    static constexpr bool kSharedScale = false;   // a scale per 16
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
        const float d = half_to_float(b + 208);
        const __m256i bias = _mm256_set1_epi8(32);
        for (int h = 0; h < 2; ++h) {
            const __m256i a = load32(b + 64 * h), c = load32(b + 64 * h + 32), hq = load32(b + 128 + 32 * h);
            const __m256i four[4] = {low_nibbles(a), low_nibbles(c), high_nibbles(a), high_nibbles(c)};
            for (int k = 0; k < 4; ++k) {
                const __m256i q = _mm256_sub_epi8(_mm256_or_si256(four[k], _mm256_slli_epi16(byte_field(hq, 2 * k, 3), 4)), bias);
                const int g = 8 * h + 2 * k;
                fn(Unit{q, {d * float(sc[g]), d * float(sc[g + 1])}, {0.f, 0.f}}, 4 * h + k);
            }
        }
    }
};

// IQ4_XS: unit j is sub-block j: IQ4_NL's table on bytes 16j .. 16j + 15, scale d * (6-bit ls - 32).
template <> struct Units<IQ4_XS> {
    static constexpr bool kSharedScale = true;
    template <class Fn> static void each(const uint8_t* b, Fn&& fn) {
        const float d = half_to_float(b);
        uint16_t scales_h;
        std::memcpy(&scales_h, b + 2, 2);
        for (int j = 0; j < 8; ++j) {
            const int ls = ((b[4 + j / 2] >> (4 * (j % 2))) & 0xf) | (((scales_h >> (2 * j)) & 3) << 4);
            fn(scaled(quants_nibbles_lut(b + 8 + 16 * j, kIQ4Values), d * float(ls - 32)), j);
        }
    }
};

}  // namespace
