// GGML block formats, each unpacked to one common form: int8 quants with a float scale and offset
// per group of 16 weights, so that weight i of a block is  scale[i / 16] * q[i] + offset[i / 16].
//
// The portable build dots this form from memory; the AVX2 and AVX-512 builds form the same values
// in registers, 32 weights at a time (units_avx2.h). Every supported type fits the unpacked form: the 32-weight types have one scale (and min) for two groups,
// Q4_K/Q5_K/IQ4_XS one per 32 weights, Q2_K/Q3_K/Q6_K one per 16. Layouts follow ggml's block
// structs (ggml-common.h); the tests check every type against gguf-py's dequantizer.
//
// This header is included by each instruction-set translation unit (csrc/cpu/isa_*.cpp), which
// compiles the same plain C++ loops for its own target; everything here has internal linkage so
// that no function compiled for AVX2 can be picked by the linker for the portable path.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(OXIDE_UNPACK_AVX2)
#include "unpack_avx2.h"
#else
#include "unpack_portable.h"
#endif

namespace {

constexpr int kGroup = 16;   // weights per (scale, offset) pair in the unpacked form

inline float half_to_float(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
#if defined(OXIDE_F16C)
    return _cvtsh_ss(h);   // the including unit targets F16C and defines OXIDE_F16C
#endif
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0x1f) {                       // inf / nan
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {                   // normal
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {                   // zero
        bits = sign;
    } else {                                      // subnormal: renormalise
        exponent = 113;
        while (!(mantissa & 0x400)) {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

constexpr int8_t kIQ4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// --- 32-weight blocks ---------------------------------------------------------------------------

// Q4_0: d (f16), 16 bytes of nibbles; weight j = d * (lo(j) - 8), weight j + 16 = d * (hi(j) - 8).
struct Q4_0 {
    static constexpr int kBlock = 32, kBytes = 18;
    static constexpr bool kOffset = false;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float*) {
        split_nibbles(b + 2, 16, 8, q, q + 16);
        scale[0] = scale[1] = half_to_float(b);
    }
};

// Q4_1: d, m (f16), 16 bytes of nibbles; weight = d * q + m.
struct Q4_1 {
    static constexpr int kBlock = 32, kBytes = 20;
    static constexpr bool kOffset = true;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
        split_nibbles(b + 4, 16, 0, q, q + 16);
        scale[0] = scale[1] = half_to_float(b);
        offset[0] = offset[1] = half_to_float(b + 2);
    }
};

// Q5_0 / Q5_1: as Q4_0 / Q4_1 with a fifth bit per weight in a 32-bit mask: see unpack_5bit.
struct Q5_0 {
    static constexpr int kBlock = 32, kBytes = 22;
    static constexpr bool kOffset = false;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float*) {
        unpack_5bit(b + 2, b + 6, 16, q);
        scale[0] = scale[1] = half_to_float(b);
    }
};

struct Q5_1 {
    static constexpr int kBlock = 32, kBytes = 24;
    static constexpr bool kOffset = true;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
        unpack_5bit(b + 4, b + 8, 0, q);
        scale[0] = scale[1] = half_to_float(b);
        offset[0] = offset[1] = half_to_float(b + 2);
    }
};

// Q8_0: d (f16), 32 int8 weights.
struct Q8_0 {
    static constexpr int kBlock = 32, kBytes = 34;
    static constexpr bool kOffset = false;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float*) {
        std::memcpy(q, b + 2, 32);
        scale[0] = scale[1] = half_to_float(b);
    }
};

// IQ4_NL: d (f16), 16 bytes of nibbles indexing a fixed non-linear table.
struct IQ4_NL {
    static constexpr int kBlock = 32, kBytes = 18;
    static constexpr bool kOffset = false;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float*) {
        split_nibbles_lut(b + 2, 16, kIQ4Values, q, q + 16);
        scale[0] = scale[1] = half_to_float(b);
    }
};

// --- 256-weight super-blocks (K-quants) ---------------------------------------------------------

// Q2_K: scales[16] (lo nibble scale, hi nibble min), qs[64], d, dmin (f16).
// Group g = 8h + 2s + t (half h, shift s, sub-half t) reads byte 32h + 16t + l at bits 2s.
struct Q2_K {
    static constexpr int kBlock = 256, kBytes = 84;
    static constexpr bool kOffset = true;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
        const uint8_t* scales = b;
        const uint8_t* qs = b + 16;
        const float d = half_to_float(b + 80), dmin = half_to_float(b + 82);
        for (int g = 0; g < 16; ++g) {
            const int h = g / 8, s = (g / 2) % 4, t = g % 2;
            const uint8_t* src = qs + 32 * h + 16 * t;
            for (int l = 0; l < 16; ++l) q[16 * g + l] = int8_t((src[l] >> (2 * s)) & 3);
            scale[g] = d * float(scales[g] & 0xf);
            offset[g] = -dmin * float(scales[g] >> 4);
        }
    }
};

// Q3_K: hmask[32], qs[64], scales[12] (16 six-bit scales, biased by 32), d (f16).
// Weight = d * scale * (2-bit quant - (high bit clear ? 4 : 0)); same group walk as Q2_K.
struct Q3_K {
    static constexpr int kBlock = 256, kBytes = 110;
    static constexpr bool kOffset = false;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float*) {
        const uint8_t* hmask = b;
        const uint8_t* qs = b + 32;
        const uint8_t* sc = b + 96;
        const float d = half_to_float(b + 108);
        for (int g = 0; g < 16; ++g) {
            const int h = g / 8, s = (g / 2) % 4, t = g % 2;
            const uint8_t* src = qs + 32 * h + 16 * t;
            const uint8_t* high = hmask + 16 * t;
            const int bit = 4 * h + s;
            for (int l = 0; l < 16; ++l) {
                const int low = (src[l] >> (2 * s)) & 3;
                q[16 * g + l] = int8_t(low - (((high[l] >> bit) & 1) ? 0 : 4));
            }
            const int lo4 = g < 8 ? (sc[g] & 0xf) : (sc[g - 8] >> 4);
            const int hi2 = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
            scale[g] = d * float((lo4 | (hi2 << 4)) - 32);
        }
    }
};

// The 6-bit (scale, min) pair j of Q4_K / Q5_K, packed in 12 bytes.
inline void scale_min_k4(const uint8_t* s, int j, int& sc, int& mn) {
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// The per-16 scales and offsets of a Q4_K / Q5_K block: sub-block j's (d * sc_j, -dmin * m_j), twice.
inline void k4_scales(const uint8_t* scales, float d, float dmin, float* scale, float* offset) {
    for (int j = 0; j < 8; ++j) {
        int sc, mn;
        scale_min_k4(scales, j, sc, mn);
        scale[2 * j] = scale[2 * j + 1] = d * float(sc);
        offset[2 * j] = offset[2 * j + 1] = -dmin * float(mn);
    }
}

// Q4_K: d, dmin (f16), scales[12], qs[128]; 32-weight sub-block 2c uses the low nibbles of bytes
// 32c..32c+31, sub-block 2c+1 their high nibbles. Weight = d * sc * q - dmin * m.
struct Q4_K {
    static constexpr int kBlock = 256, kBytes = 144;
    static constexpr bool kOffset = true;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
        const float d = half_to_float(b), dmin = half_to_float(b + 2);
        const uint8_t* scales = b + 4;
        const uint8_t* qs = b + 16;
        for (int c = 0; c < 4; ++c) split_nibbles(qs + 32 * c, 32, 0, q + 64 * c, q + 64 * c + 32);
        k4_scales(scales, d, dmin, scale, offset);
    }
};

// Q5_K: d, dmin, scales[12], qh[32], qs[128]; as Q4_K plus a fifth bit: sub-block j takes bit j of qh[l].
struct Q5_K {
    static constexpr int kBlock = 256, kBytes = 176;
    static constexpr bool kOffset = true;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
        const float d = half_to_float(b), dmin = half_to_float(b + 2);
        const uint8_t* scales = b + 4;
        const uint8_t* qh = b + 16;
        const uint8_t* qs = b + 48;
        for (int c = 0; c < 4; ++c) {
            split_nibbles(qs + 32 * c, 32, 0, q + 64 * c, q + 64 * c + 32);
            add_bit_plane(qh, 2 * c, q + 64 * c);
            add_bit_plane(qh, 2 * c + 1, q + 64 * c + 32);
        }
        k4_scales(scales, d, dmin, scale, offset);
    }
};

// Q6_K: ql[128], qh[64], scales[16] (int8), d (f16). In half h, weight 32a + l (a = 0..3) takes
// 4 bits of ql[64h + l + 32 (a & 1)] (high nibble when a >= 2) and 2 bits of qh[32h + l] at 2a.
struct Q6_K {
    static constexpr int kBlock = 256, kBytes = 210;
    static constexpr bool kOffset = false;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float*) {
        const uint8_t* ql = b;
        const uint8_t* qh = b + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
        const float d = half_to_float(b + 208);
        q6k_half(ql, qh, q);
        q6k_half(ql + 64, qh + 32, q + 128);
        for (int g = 0; g < 16; ++g) scale[g] = d * float(sc[g]);
    }
};

// IQ4_XS: d (f16), scales_h (u16), scales_l[4], qs[128]; sub-block j has the 6-bit scale
// (lo nibble j of scales_l) | (bits 2j of scales_h) << 4, biased by 32, and IQ4_NL's table.
struct IQ4_XS {
    static constexpr int kBlock = 256, kBytes = 136;
    static constexpr bool kOffset = false;
    static void unpack(const uint8_t* b, int8_t* q, float* scale, float*) {
        const float d = half_to_float(b);
        uint16_t scales_h;
        std::memcpy(&scales_h, b + 2, 2);
        const uint8_t* scales_l = b + 4;
        const uint8_t* qs = b + 8;
        for (int j = 0; j < 8; ++j) {
            split_nibbles_lut(qs + 16 * j, 16, kIQ4Values, q + 32 * j, q + 32 * j + 16);
            const int ls = ((scales_l[j / 2] >> (4 * (j % 2))) & 0xf) | (((scales_h >> (2 * j)) & 3) << 4);
            scale[2 * j] = scale[2 * j + 1] = d * float(ls - 32);
        }
    }
};

}  // namespace
