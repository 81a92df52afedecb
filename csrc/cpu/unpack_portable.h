// Byte-level primitives of the block unpackers, in plain C++ (the portable build). unpack_avx2.h
// gives the same functions with AVX2 intrinsics; quant_formats.h includes one of the two.
// Every function writes int8 quants; n is the number of source bytes.
#pragma once

#include <cstdint>

namespace {

// lo[j] = (src[j] & 15) - bias, hi[j] = (src[j] >> 4) - bias, for j < n (n = 16 or 32).
inline void split_nibbles(const uint8_t* src, int n, int bias, int8_t* lo, int8_t* hi) {
    for (int j = 0; j < n; ++j) {
        lo[j] = int8_t((src[j] & 0xf) - bias);
        hi[j] = int8_t((src[j] >> 4) - bias);
    }
}

// As split_nibbles with bias 0, each nibble then mapped through the 16-entry table.
inline void split_nibbles_lut(const uint8_t* src, int n, const int8_t* table, int8_t* lo, int8_t* hi) {
    for (int j = 0; j < n; ++j) {
        lo[j] = table[src[j] & 0xf];
        hi[j] = table[src[j] >> 4];
    }
}

// Q5_0 / Q5_1: q[j] = (nibble j + 16 * bit j of the little-endian 32-bit mask) - bias, j < 32, where
// nibbles 0..15 are the low halves of qs[0..15] and nibbles 16..31 their high halves.
inline void unpack_5bit(const uint8_t* mask, const uint8_t* qs, int bias, int8_t* q) {
    split_nibbles(qs, 16, 0, q, q + 16);
    for (int j = 0; j < 32; ++j) q[j] = int8_t(q[j] + (((mask[j / 8] >> (j % 8)) & 1) << 4) - bias);
}

// q[l] += 16 * bit k of bits[l], l < 32 (Q5_K's fifth bits, one bit plane per 32-weight sub-block).
inline void add_bit_plane(const uint8_t* bits, int k, int8_t* q) {
    for (int l = 0; l < 32; ++l) q[l] = int8_t(q[l] + (((bits[l] >> k) & 1) << 4));
}

// Q6_K, one half of 128 weights: low 4 bits from l4[0..63], high 2 bits from h2[0..31], minus 32.
inline void q6k_half(const uint8_t* l4, const uint8_t* h2, int8_t* out) {
    for (int l = 0; l < 32; ++l) {
        out[l] = int8_t(((l4[l] & 0xf) | ((h2[l] & 3) << 4)) - 32);
        out[l + 32] = int8_t(((l4[l + 32] & 0xf) | (((h2[l] >> 2) & 3) << 4)) - 32);
        out[l + 64] = int8_t(((l4[l] >> 4) | (((h2[l] >> 4) & 3) << 4)) - 32);
        out[l + 96] = int8_t(((l4[l + 32] >> 4) | (((h2[l] >> 6) & 3) << 4)) - 32);
    }
}

}  // namespace
