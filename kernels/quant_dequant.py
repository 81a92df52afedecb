"""GGML blocks dequantized in registers, for the Triton matmuls: :func:`dequant_tile`.

A quantized (N, K) matrix is its GGUF bytes, uint8 (N, row_bytes): each row is K / BLOCK blocks of
TYPE_SIZE bytes, read here as stored. :func:`dequant_tile` builds the float32 tile
``W[offs_n, k0:k0 + BLOCK_K]`` as (BLOCK_N, BLOCK_K / GROUP, GROUP), GROUP being the run of weights that
share one scale (16 or 32, :data:`GROUP`): a group's scale fields are loaded and decoded once, as a
(BLOCK_N, BLOCK_K / GROUP, 1) tensor that broadcasts over its weights, and each weight loads the byte
that holds its bits. f16 fields are two byte loads joined and bitcast. The formulas are those of the
reference dequantizers, :mod:`oxide.quant.dequant` (one helper per type here, named alike), which
document each layout; the float32 arithmetic may differ from them by an fma's rounding.
"""

from __future__ import annotations

import triton
import triton.language as tl

from oxide.quant import GGMLType
from oxide.quant.dequant import IQ4_VALUES

# QTYPE codes: the GGML type ids, as constexprs the kernels may read.
Q4_0 = tl.constexpr(int(GGMLType.Q4_0))
Q4_1 = tl.constexpr(int(GGMLType.Q4_1))
Q5_0 = tl.constexpr(int(GGMLType.Q5_0))
Q5_1 = tl.constexpr(int(GGMLType.Q5_1))
Q8_0 = tl.constexpr(int(GGMLType.Q8_0))
Q2_K = tl.constexpr(int(GGMLType.Q2_K))
Q3_K = tl.constexpr(int(GGMLType.Q3_K))
Q4_K = tl.constexpr(int(GGMLType.Q4_K))
Q5_K = tl.constexpr(int(GGMLType.Q5_K))
Q6_K = tl.constexpr(int(GGMLType.Q6_K))
IQ4_NL = tl.constexpr(int(GGMLType.IQ4_NL))
IQ4_XS = tl.constexpr(int(GGMLType.IQ4_XS))

# Weights that share one scale: a tile's BLOCK_K must be a multiple of its type's group.
GROUP: dict[GGMLType, int] = {
    GGMLType.Q4_0: 32, GGMLType.Q4_1: 32, GGMLType.Q5_0: 32, GGMLType.Q5_1: 32, GGMLType.Q8_0: 32,
    GGMLType.Q2_K: 16, GGMLType.Q3_K: 16, GGMLType.Q4_K: 32, GGMLType.Q5_K: 32, GGMLType.Q6_K: 16,
    GGMLType.IQ4_NL: 32, GGMLType.IQ4_XS: 32,
}
TYPES: frozenset[GGMLType] = frozenset(GROUP)


def _packed(values: tuple[int, ...]) -> int:
    """Eight int8 values as one little-endian signed 64-bit word (entry i in byte i)."""
    return int.from_bytes(bytes(v & 0xFF for v in values), "little", signed=True)


# IQ4_VALUES, the non-linear 4-bit grid of IQ4_NL/IQ4_XS, held in two 64-bit constants.
IQ4_LOW = tl.constexpr(_packed(IQ4_VALUES[:8]))
IQ4_HIGH = tl.constexpr(_packed(IQ4_VALUES[8:]))


@triton.jit
def _u8(ptr, mask):
    """Bytes at ``ptr`` as int32 (0 where masked)."""
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _s8(byte):
    """A byte value 0..255 read as a two's-complement int8."""
    return (byte ^ 128) - 128


@triton.jit
def _f16(ptr, mask):
    """The little-endian f16 at ``ptr``, widened to float32 (0 where masked)."""
    low = tl.load(ptr, mask=mask, other=0).to(tl.uint16)
    high = tl.load(ptr + 1, mask=mask, other=0).to(tl.uint16)
    return (low | (high << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _iq4(index):
    """``IQ4_VALUES[index]`` as float32, for indices 0..15: byte ``index % 8`` of one of two words."""
    word = tl.where(index < 8, IQ4_LOW, IQ4_HIGH)
    byte = ((word >> ((index & 7) * 8).to(tl.int64)) & 0xFF).to(tl.int32)
    return _s8(byte).to(tl.float32)


@triton.jit
def _locate(row, k0, K, mask_n, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr,
            TYPE_SIZE: tl.constexpr):
    """Where the weights of the tile lie: ``blk`` (BN, G, 1), each group's block; ``jg`` (1, G, 1), the group's
    first position in its block; ``j`` (1, G, GROUP), each weight's position in its block; ``mask`` (BN, G, 1)
    (rows past N, groups past K). ``row`` (BN, 1, 1) points at each row's first block."""
    first = k0 + tl.arange(0, BLOCK_K // GROUP) * GROUP             # (G,) first column of each group
    blk = row + (first // BLOCK * TYPE_SIZE)[None, :, None]         # (BN, G, 1)
    jg = (first % BLOCK)[None, :, None]                             # (1, G, 1)
    j = jg + tl.arange(0, GROUP)[None, None, :]                     # (1, G, GROUP)
    mask = mask_n[:, None, None] & (first < K)[None, :, None]       # (BN, G, 1)
    return blk, jg, j, mask


@triton.jit
def _nibble(blk, qs: tl.constexpr, j, mask):
    """4-bit value of weight j of a 32-weight run at byte ``qs``: low nibbles of its 16 bytes, then high."""
    return (_u8(blk + qs + j % 16, mask) >> (j % 32 // 16 * 4)) & 15


@triton.jit
def _q5_high(blk, qh: tl.constexpr, j, mask):
    """Bit j of the little-endian u32 at byte ``qh`` (Q5_0/Q5_1's fifth bits)."""
    return (_u8(blk + qh + j // 8, mask) >> (j % 8)) & 1


@triton.jit
def _crumb(blk, qs: tl.constexpr, j, mask):
    """2-bit value of weight j of a 256-weight Q2_K/Q3_K block: bits 2s..2s+1 of byte qs + 32h + l for
    j = 128h + 32s + l."""
    return (_u8(blk + qs + j // 128 * 32 + j % 32, mask) >> (j % 128 // 32 * 2)) & 3


@triton.jit
def _q4_0(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = d * (q - 8)``."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 32, 18)
    d = _f16(blk, mask)
    return d * (_nibble(blk, 2, j, mask) - 8).to(tl.float32)


@triton.jit
def _q4_1(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = d * q + m``."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 32, 20)
    d, m = _f16(blk, mask), _f16(blk + 2, mask)
    return d * _nibble(blk, 4, j, mask).to(tl.float32) + m


@triton.jit
def _q5_0(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = d * (q - 16)``, q = nibble | fifth bit << 4."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 32, 22)
    d = _f16(blk, mask)
    q = _nibble(blk, 6, j, mask) | (_q5_high(blk, 2, j, mask) << 4)
    return d * (q - 16).to(tl.float32)


@triton.jit
def _q5_1(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = d * q + m``, q = nibble | fifth bit << 4."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 32, 24)
    d, m = _f16(blk, mask), _f16(blk + 2, mask)
    q = _nibble(blk, 8, j, mask) | (_q5_high(blk, 4, j, mask) << 4)
    return d * q.to(tl.float32) + m


@triton.jit
def _q8_0(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = q * d``, q int8."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 32, 34)
    d = _f16(blk, mask)
    return _s8(_u8(blk + 2 + j, mask)).to(tl.float32) * d


@triton.jit
def _q2_k(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = (d * sc) * q - dmin * m``, sc and m the nibbles of scale byte j // 16."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 16, 256, 84)
    scale = _u8(blk + jg // 16, mask)                                  # (BN, G, 1)
    dl = _f16(blk + 80, mask) * (scale & 15).to(tl.float32)
    ml = _f16(blk + 82, mask) * (scale >> 4).to(tl.float32)
    return dl * _crumb(blk, 16, j, mask).to(tl.float32) - ml


@triton.jit
def _q3_k(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = (d * (sc - 32)) * q``, q = 2-bit value - 4 unless bit j // 32 of hmask[j % 32] is set."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 16, 256, 110)
    i = jg // 16                                                       # (1, G, 1) scale index
    low = (_u8(blk + 96 + i % 8, mask) >> (i // 8 * 4)) & 15
    high = (_u8(blk + 104 + i % 4, mask) >> (i // 4 * 2)) & 3
    dl = _f16(blk + 108, mask) * ((low | (high << 4)) - 32).to(tl.float32)
    hbit = (_u8(blk + j % 32, mask) >> (j // 32)) & 1
    return dl * (_crumb(blk, 32, j, mask) + 4 * hbit - 4).to(tl.float32)


@triton.jit
def _k_scale_min(blk, jg, mask):
    """Q4_K/Q5_K sub-block g = jg // 32: ``(d * sc[g], dmin * m[g])`` from the 12 packed bytes at 4 (see
    :func:`oxide.quant.dequant._k_scale_min`)."""
    g = jg // 32
    a = _u8(blk + 4 + g % 4, mask)
    b = _u8(blk + 8 + g % 4, mask)
    c = _u8(blk + 12 + g % 4, mask)
    sc = tl.where(g < 4, a & 63, (c & 15) | ((a >> 6) << 4))
    m = tl.where(g < 4, b & 63, (c >> 4) | ((b >> 6) << 4))
    return _f16(blk, mask) * sc.to(tl.float32), _f16(blk + 2, mask) * m.to(tl.float32)


@triton.jit
def _q4_k(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = (d * sc) * q - dmin * m``; sub-block g's nibbles: byte chunk g // 2, low for even g."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 256, 144)
    dl, ml = _k_scale_min(blk, jg, mask)
    g = j // 32
    q = (_u8(blk + 16 + g // 2 * 32 + j % 32, mask) >> (g % 2 * 4)) & 15
    return dl * q.to(tl.float32) - ml


@triton.jit
def _q5_k(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = (d * sc) * q - dmin * m``; q = Q4_K's nibble | bit g of qh[j % 32] << 4."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 256, 176)
    dl, ml = _k_scale_min(blk, jg, mask)
    g = j // 32
    low = (_u8(blk + 48 + g // 2 * 32 + j % 32, mask) >> (g % 2 * 4)) & 15
    high = (_u8(blk + 16 + j % 32, mask) >> g) & 1
    return dl * (low | (high << 4)).to(tl.float32) - ml


@triton.jit
def _q6_k(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = (d * sc) * (q - 32)``; j = 128h + r: nibble r // 64 of ql[64h + r % 64] | bits 2(r // 32)..
    of qh[32h + r % 32] << 4; sc int8 at 192 + j // 16."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 16, 256, 210)
    dl = _f16(blk + 208, mask) * _s8(_u8(blk + 192 + jg // 16, mask)).to(tl.float32)
    h = j // 128
    r = j % 128
    low = (_u8(blk + h * 64 + r % 64, mask) >> (r // 64 * 4)) & 15
    high = (_u8(blk + 128 + h * 32 + r % 32, mask) >> (r // 32 * 2)) & 3
    return dl * ((low | (high << 4)) - 32).to(tl.float32)


@triton.jit
def _iq4_nl(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = d * IQ4_VALUES[q]``, q ordered as Q4_0."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 32, 18)
    return _f16(blk, mask) * _iq4(_nibble(blk, 2, j, mask))


@triton.jit
def _iq4_xs(row, k0, K, mask_n, BLOCK_K: tl.constexpr):
    """``w = (d * sc) * IQ4_VALUES[q]``; sub-block i = j // 32: sc = nibble i % 2 of byte 4 + i // 2 | bits
    2i.. of the u16 at 2 << 4, minus 32; q from bytes 8 + 16i, ordered as Q4_0."""
    blk, jg, j, mask = _locate(row, k0, K, mask_n, BLOCK_K, 32, 256, 136)
    i = jg // 32
    low = (_u8(blk + 4 + i // 2, mask) >> (i % 2 * 4)) & 15
    high = (_u8(blk + 2 + i // 4, mask) >> (i % 4 * 2)) & 3
    dl = _f16(blk, mask) * ((low | (high << 4)) - 32).to(tl.float32)
    return dl * _iq4(_nibble(blk + 8 + jg // 2, 0, j, mask))


@triton.jit
def dequant_tile(w_ptr, row_stride, offs_n, mask_n, k0, K, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """The float32 tile ``W[offs_n, k0:k0 + BLOCK_K]`` (BLOCK_N, BLOCK_K) of the ``QTYPE`` matrix whose row n
    starts at byte ``w_ptr + n * row_stride``; 0 for rows outside ``mask_n`` and columns >= K (K a whole
    number of blocks; k0 and BLOCK_K multiples of the type's :data:`GROUP`)."""
    row = w_ptr + (offs_n.to(tl.int64) * row_stride)[:, None, None]    # (BN, 1, 1)
    if QTYPE == Q4_0:
        w = _q4_0(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q4_1:
        w = _q4_1(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q5_0:
        w = _q5_0(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q5_1:
        w = _q5_1(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q8_0:
        w = _q8_0(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q2_K:
        w = _q2_k(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q3_K:
        w = _q3_k(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q4_K:
        w = _q4_k(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q5_K:
        w = _q5_k(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == Q6_K:
        w = _q6_k(row, k0, K, mask_n, BLOCK_K)
    elif QTYPE == IQ4_NL:
        w = _iq4_nl(row, k0, K, mask_n, BLOCK_K)
    else:
        tl.static_assert(QTYPE == IQ4_XS, "dequant_tile: unsupported QTYPE")
        w = _iq4_xs(row, k0, K, mask_n, BLOCK_K)
    return tl.reshape(w, (BLOCK_N, BLOCK_K))                            # (BN, G, GROUP) -> (BN, BLOCK_K)
