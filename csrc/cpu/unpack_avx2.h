// AVX2 versions of the byte-level primitives of unpack_portable.h (same names, same results),
// for the AVX2 and AVX-512 translation units, which include <immintrin.h> and target AVX2 first.
#pragma once

#include <cstdint>

namespace {

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void store16(int8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
inline void store32(int8_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

inline void split_nibbles(const uint8_t* src, int n, int bias, int8_t* lo, int8_t* hi) {
    if (n == 32) {
        const __m256i m = _mm256_set1_epi8(0xf), b = _mm256_set1_epi8(char(bias)), v = load32(src);
        store32(lo, _mm256_sub_epi8(_mm256_and_si256(v, m), b));
        store32(hi, _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), m), b));
        return;
    }
    const __m128i m = _mm_set1_epi8(0xf), b = _mm_set1_epi8(char(bias)), v = load16(src);
    store16(lo, _mm_sub_epi8(_mm_and_si128(v, m), b));
    store16(hi, _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), m), b));
}

inline void split_nibbles_lut(const uint8_t* src, int n, const int8_t* table, int8_t* lo, int8_t* hi) {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(table)), m = _mm_set1_epi8(0xf);
    for (int j = 0; j < n; j += 16) {
        const __m128i v = load16(src + j);
        store16(lo + j, _mm_shuffle_epi8(t, _mm_and_si128(v, m)));
        store16(hi + j, _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(v, 4), m)));
    }
}

// The 32 quants of a 32-weight block as one register: the low nibbles of qs[0..15], then their high
// nibbles, minus bias (Q4_0) ...
inline __m256i quants_nibbles(const uint8_t* qs, int bias) {
    const __m128i v = load16(qs), m = _mm_set1_epi8(0xf);
    const __m256i nibbles = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
    return _mm256_sub_epi8(nibbles, _mm256_set1_epi8(char(bias)));
}

// ... mapped through a 16-entry table (IQ4_NL) ...
inline __m256i quants_nibbles_lut(const uint8_t* qs, const int8_t* table) {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(table)), v = load16(qs), m = _mm_set1_epi8(0xf);
    return _mm256_set_m128i(_mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(v, 4), m)),
                            _mm_shuffle_epi8(t, _mm_and_si128(v, m)));
}

// ... or with a fifth bit from a little-endian 32-bit mask, bit j for weight j (Q5_0, Q5_1).
inline __m256i quants_5bit(const uint8_t* mask, const uint8_t* qs, int bias) {
    uint32_t bits;
    std::memcpy(&bits, mask, 4);
    // Byte j takes mask byte j / 8, keeps bit j % 8, and becomes 16 where it is set.
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)),
        _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i select = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    const __m256i fifth = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select),
                                           _mm256_set1_epi8(16));
    return _mm256_sub_epi8(_mm256_or_si256(quants_nibbles(qs, 0), fifth), _mm256_set1_epi8(char(bias)));
}

inline void unpack_5bit(const uint8_t* mask, const uint8_t* qs, int bias, int8_t* q) {
    store32(q, quants_5bit(mask, qs, bias));
}

inline void add_bit_plane(const uint8_t* bits, int k, int8_t* q) {
    const __m256i plane = _mm256_and_si256(_mm256_srl_epi16(load32(bits), _mm_cvtsi32_si128(k)), _mm256_set1_epi8(1));
    store32(q, _mm256_add_epi8(load32(reinterpret_cast<const uint8_t*>(q)), _mm256_slli_epi16(plane, 4)));
}

inline void q6k_half(const uint8_t* l4, const uint8_t* h2, int8_t* out) {
    const __m256i m4 = _mm256_set1_epi8(0xf), m2 = _mm256_set1_epi8(3), bias = _mm256_set1_epi8(32);
    const __m256i a = load32(l4), b = load32(l4 + 32), h = load32(h2);
    auto high = [&](int shift) { return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, shift), m2), 4); };
    store32(out, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(a, m4), high(0)), bias));
    store32(out + 32, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(b, m4), high(2)), bias));
    store32(out + 64, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), high(4)), bias));
    store32(out + 96, _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4), high(6)), bias));
}

}  // namespace
