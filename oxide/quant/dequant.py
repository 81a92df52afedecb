"""Reference dequantization of GGML blocks, in vectorised PyTorch, bit-exact with gguf-py.

Every GGML type stores a tensor row as consecutive blocks of ``block_size`` weights packed
into ``type_size`` bytes (see ``oxide.quant.types``). One small function per type reads a
``(n, type_size)`` uint8 tensor of blocks and writes their weights into an
``(n, block_size)`` float32 tensor; the functions are registered in ``_DEQUANTIZERS`` and
``dequantize`` drives them over the tensor in chunks, so intermediates stay cache-sized
and there is no Python loop over blocks. All code is plain tensor ops, so it runs on CPU,
CUDA and MPS tensors alike. Bit fields are cut out of 8-byte little-endian words (one
shift and one mask handle 8 bytes at once), which beats per-byte ops on the short strided
rows of a block.

Bit-exactness: float32 operations follow ``gguf.quants`` (gguf-py) in order and rounding:
e.g. Q4_K is ``(d * sc) * q - (dmin * m)``, each product and the difference rounded on its
own (two kernels, never a fused multiply-add). Integer parts (``q - 8``, ``ql | qh << 4``
...) are small and exact, so they are formed in integer dtypes in whatever order is fastest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import Tensor

from oxide.errors import ModelFormatError
from oxide.quant.types import GGMLType, QTypeLike, block_geometry, check_nbytes, require_supported

QK_K = 256  # weights per K-quant super-block
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

# Weights dequantized per chunk: a few MiB of intermediates on CPU (cache-friendly); on
# accelerators a chunk only bounds the temporary memory.
_CHUNK_WEIGHTS_CPU = 1 << 20
_CHUNK_WEIGHTS_ACCEL = 1 << 24

_WORD_DTYPES = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


@lru_cache(maxsize=64)
def _const(values: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor (bit positions, lookup tables), made once per device."""
    return torch.tensor(values, dtype=dtype, device=device)


def reinterpret(raw: Tensor, dtype: torch.dtype) -> Tensor:
    """View bytes ``(..., k)`` as ``(..., k / itemsize)`` values of ``dtype``, copying only
    when the bytes are strided or not aligned to the element size."""
    raw = raw.contiguous()
    try:
        return raw.view(dtype)
    except RuntimeError:  # offset or (size-1 dim) stride not a multiple of the element size
        fresh = torch.empty(raw.shape, dtype=raw.dtype, device=raw.device)
        return fresh.copy_(raw).view(dtype)


def _f16(blocks: Tensor, start: int) -> Tensor:
    """The little-endian f16 at byte ``start`` of every block, widened exactly to float32."""
    return reinterpret(blocks[:, start : start + 2], torch.float16).float()  # (n, 1)


def _split(field: Tensor, shifts: Sequence[int], mask: int) -> list[Tensor]:
    """For each shift ``s``: ``(byte >> s) & mask`` of every byte of ``field`` ``(..., m)``.

    Works on the widest little-endian words that divide ``m``; the repeated byte mask
    stops bits from crossing into the neighbouring byte. Results are words; view them as
    uint8 to get the bytes back in order.
    """
    width = next(w for w in (8, 4, 2, 1) if field.shape[-1] % w == 0)
    words = reinterpret(field, _WORD_DTYPES[width])  # (..., m / width)
    wide_mask = int.from_bytes(bytes([mask]) * width, "little")
    return [(words >> s) & wide_mask if s else words & wide_mask for s in shifts]


def _nibbles(field: Tensor) -> Tensor:
    """``(..., m)`` bytes -> ``(..., 2m)`` 4-bit values: all low nibbles, then all high nibbles."""
    low, high = _split(field, (0, 4), 0x0F)
    return torch.cat((low, high), dim=-1).view(torch.uint8)


def _crumbs(field: Tensor) -> Tensor:
    """``(..., m)`` bytes -> ``(..., 4, m)``: entry ``[s, j]`` is bits ``2s..2s+1`` of byte ``j``."""
    return torch.stack(_split(field, (0, 2, 4, 6), 0x03), dim=-2).view(torch.uint8)


def _bits(field: Tensor) -> Tensor:
    """``(..., m)`` bytes -> ``(..., 8, m)``: entry ``[b, j]`` is bit ``b`` of byte ``j``."""
    return torch.stack(_split(field, range(8), 0x01), dim=-2).view(torch.uint8)


def _u32_bits(field: Tensor) -> Tensor:
    """``(n, 4)`` bytes of a little-endian u32 -> ``(n, 32)`` int32: entry ``j`` is bit ``j``."""
    word = reinterpret(field, torch.int32)  # (n, 1)
    return (word >> _const(tuple(range(32)), torch.int32, field.device)) & 1  # (n, 32)


def _lookup(table: tuple[int, ...], idx: Tensor) -> Tensor:
    """``table[idx]`` as float32 for integer indices ``(n, ...)`` (a row-wise gather, the
    fastest table lookup in PyTorch on CPU)."""
    n = idx.shape[0]
    values = _const(table, torch.float32, idx.device).expand(n, len(table))  # (n, len(table))
    return torch.gather(values, 1, idx.reshape(n, -1).long()).view(idx.shape)


def _deq_f32(blocks: Tensor, out: Tensor) -> None:
    """F32: 4 little-endian bytes per weight, copied as is."""
    out.copy_(reinterpret(blocks, torch.float32))


def _deq_f16(blocks: Tensor, out: Tensor) -> None:
    """F16: 2 bytes per weight, IEEE half widened exactly to float32."""
    out.copy_(reinterpret(blocks, torch.float16))


def _deq_bf16(blocks: Tensor, out: Tensor) -> None:
    """BF16: 2 bytes per weight, the high 16 bits of a float32 (``bits << 16``)."""
    out.copy_(reinterpret(blocks, torch.bfloat16))


def _deq_q4_0(blocks: Tensor, out: Tensor) -> None:
    """Q4_0: 32 weights in 18 bytes: f16 ``d``, then 16 bytes of 4-bit ``q``.

    Byte ``j`` holds weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble.
    ``w = d * (q - 8)``.
    """
    d = _f16(blocks, 0)  # (n, 1)
    q = _nibbles(blocks[:, 2:]).view(torch.int8) - 8  # (n, 32)
    torch.mul(q, d, out=out)


def _deq_q4_1(blocks: Tensor, out: Tensor) -> None:
    """Q4_1: 32 weights in 20 bytes: f16 ``d``, f16 ``m``, 16 bytes of 4-bit ``q``.

    Nibble order as Q4_0. ``w = (d * q) + m``.
    """
    d, m = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1)
    q = _nibbles(blocks[:, 4:])  # (n, 32)
    torch.mul(q, d, out=out).add_(m)


def _q5_values(qh: Tensor, qs: Tensor) -> Tensor:
    """5-bit values of a Q5_0/Q5_1 block as int32: nibble of ``qs`` | bit ``j`` of u32 ``qh`` << 4."""
    return _nibbles(qs) | (_u32_bits(qh) << 4)  # (n, 32)


def _deq_q5_0(blocks: Tensor, out: Tensor) -> None:
    """Q5_0: 32 weights in 22 bytes: f16 ``d``, u32 ``qh`` (bit ``j`` = bit 4 of weight ``j``),
    16 bytes of low nibbles (ordered as Q4_0). ``w = d * (q - 16)``.
    """
    d = _f16(blocks, 0)  # (n, 1)
    q = _q5_values(blocks[:, 2:6], blocks[:, 6:]) - 16  # (n, 32)
    torch.mul(q, d, out=out)


def _deq_q5_1(blocks: Tensor, out: Tensor) -> None:
    """Q5_1: 32 weights in 24 bytes: f16 ``d``, f16 ``m``, u32 ``qh``, 16 bytes of nibbles.

    5-bit ``q`` as Q5_0. ``w = (d * q) + m``.
    """
    d, m = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1)
    q = _q5_values(blocks[:, 4:8], blocks[:, 8:])  # (n, 32)
    torch.mul(q, d, out=out).add_(m)


def _deq_q8_0(blocks: Tensor, out: Tensor) -> None:
    """Q8_0: 32 weights in 34 bytes: f16 ``d``, then 32 int8 ``q``. ``w = q * d``."""
    d = _f16(blocks, 0)  # (n, 1)
    torch.mul(blocks[:, 2:].view(torch.int8), d, out=out)


def _deq_q2_k(blocks: Tensor, out: Tensor) -> None:
    """Q2_K: 256 weights in 84 bytes: 16 scale bytes, 64 bytes of 2-bit ``q``, f16 ``d``, f16 ``dmin``.

    Scale byte ``i`` covers weights ``16i..16i+15``: low nibble ``sc``, high nibble ``m``.
    Weight ``128h + 32s + l`` is bits ``2s..2s+1`` of ``q``-byte ``32h + l``.
    ``w = (d * sc) * q - (dmin * m)``.
    """
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)  # (n, 1)
    sc_m = _nibbles(blocks[:, :16]).float()  # (n, 32): 16 sc, then 16 m
    dl = (d * sc_m[:, :16]).unsqueeze(-1)  # (n, 16, 1)
    ml = (dmin * sc_m[:, 16:]).unsqueeze(-1)  # (n, 16, 1)
    q = _crumbs(blocks[:, 16:80].view(n, 2, 32)).view(n, 16, 16)  # (n, 16, 16)
    torch.mul(q, dl, out=out.view(n, 16, 16)).sub_(ml)


def _q3_k_scales(packed: Tensor) -> Tensor:
    """Sixteen 6-bit signed scales of Q3_K from 12 bytes, as float32 ``(n, 16)``.

    Scale ``i``: low 4 bits are nibble ``i // 8`` (low, then high) of byte ``i % 8``; high
    2 bits are bits ``2(i // 4)..2(i // 4)+1`` of byte ``8 + i % 4``; the stored value is
    offset by 32.
    """
    n = packed.shape[0]
    low = _nibbles(packed[:, :8])  # (n, 16)
    high = _crumbs(packed[:, 8:]).view(n, 16)  # (n, 16)
    return (low | (high << 4)).float() - 32  # (n, 16)


def _deq_q3_k(blocks: Tensor, out: Tensor) -> None:
    """Q3_K: 256 weights in 110 bytes: 32 bytes ``hmask``, 64 bytes of 2-bit ``ql``,
    12 bytes of packed 6-bit scales, f16 ``d``.

    ``ql`` is laid out as Q2_K's ``q``; weight ``32b + l`` takes bit ``b`` of ``hmask[l]``:
    ``q = ql - 4`` when that bit is clear, else ``q = ql``. Scales (minus 32) cover 16
    weights each. ``w = (d * sc) * q``.
    """
    n = blocks.shape[0]
    d = _f16(blocks, 108)  # (n, 1)
    dl = (d * _q3_k_scales(blocks[:, 96:108])).unsqueeze(-1)  # (n, 16, 1)
    ql = _crumbs(blocks[:, 32:96].view(n, 2, 32)).view(n, QK_K)  # (n, 256)
    hbit = _bits(blocks[:, :32]).view(n, QK_K)  # (n, 256)
    q = (ql | (hbit << 2)).view(torch.int8) - 4  # (n, 256)
    torch.mul(q.view(n, 16, 16), dl, out=out.view(n, 16, 16))


def _k_scale_min(packed: Tensor) -> tuple[Tensor, Tensor]:
    """Eight 6-bit scales and eight 6-bit mins of Q4_K/Q5_K from 12 bytes ``(n, 12)``.

    Bytes 0-3 (``a``), 4-7 (``b``), 8-11 (``c``). For ``j < 4``: ``sc = a & 63``,
    ``m = b & 63``; for ``j >= 4``: ``sc = (c & 15) | ((a >> 6) << 4)``,
    ``m = (c >> 4) | ((b >> 6) << 4)``. Returned as float32 ``(n, 8)`` each.
    """
    a, b, c = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]  # (n, 4) each
    sc = torch.cat((a & 63, (c & 15) | ((a >> 6) << 4)), dim=-1)  # (n, 8)
    m = torch.cat((b & 63, (c >> 4) | ((b >> 6) << 4)), dim=-1)  # (n, 8)
    return sc.float(), m.float()


def _k_sub_block_scales(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Q4_K/Q5_K per-sub-block factors ``d * sc[g]`` and ``dmin * m[g]``, each (n, 8, 1)."""
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)  # (n, 1)
    sc, m = _k_scale_min(blocks[:, 4:16])  # (n, 8)
    return (d * sc).unsqueeze(-1), (dmin * m).unsqueeze(-1)


def _deq_q4_k(blocks: Tensor, out: Tensor) -> None:
    """Q4_K: 256 weights in 144 bytes: f16 ``d``, f16 ``dmin``, 12 bytes of 6-bit scales and
    mins (see ``_k_scale_min``), 128 bytes of 4-bit ``q``.

    Sub-block ``g`` of 32 weights: byte chunk ``g // 2`` (32 bytes), low nibbles for even
    ``g``, high for odd. ``w = (d * sc[g]) * q - (dmin * m[g])``.
    """
    n = blocks.shape[0]
    dl, ml = _k_sub_block_scales(blocks)  # (n, 8, 1) each
    q = _nibbles(blocks[:, 16:].view(n, 4, 32)).view(n, 8, 32)  # (n, 8, 32)
    torch.mul(q, dl, out=out.view(n, 8, 32)).sub_(ml)


def _deq_q5_k(blocks: Tensor, out: Tensor) -> None:
    """Q5_K: 256 weights in 176 bytes: f16 ``d``, f16 ``dmin``, 12 bytes of scales and mins
    (as Q4_K), 32 bytes ``qh``, 128 bytes of low nibbles (as Q4_K).

    Weight ``32g + l`` takes bit ``g`` of ``qh[l]`` as its bit 4.
    ``w = (d * sc[g]) * q - (dmin * m[g])``.
    """
    n = blocks.shape[0]
    dl, ml = _k_sub_block_scales(blocks)  # (n, 8, 1) each
    low = _nibbles(blocks[:, 48:].view(n, 4, 32)).view(n, 8, 32)  # (n, 8, 32)
    high = _bits(blocks[:, 16:48])  # (n, 8, 32)
    torch.mul(low | (high << 4), dl, out=out.view(n, 8, 32)).sub_(ml)


def _deq_q6_k(blocks: Tensor, out: Tensor) -> None:
    """Q6_K: 256 weights in 210 bytes: 128 bytes ``ql`` (low 4 bits), 64 bytes ``qh``
    (high 2 bits), 16 int8 scales, f16 ``d``.

    Weight ``128h + 64k + j`` (``j < 64``) takes nibble ``k`` of ``ql[64h + j]``; weight
    ``128h + 32s + l`` takes bits ``2s..2s+1`` of ``qh[32h + l]`` as its bits 4-5.
    Scale ``i`` covers weights ``16i..16i+15``. ``w = (d * sc) * (q - 32)``.
    """
    n = blocks.shape[0]
    d = _f16(blocks, 208)  # (n, 1)
    sc = blocks[:, 192:208].view(torch.int8).float()  # (n, 16)
    dl = (d * sc).unsqueeze(-1)  # (n, 16, 1)
    low = _nibbles(blocks[:, :128].view(n, 2, 64)).view(n, QK_K)  # (n, 256)
    high = _crumbs(blocks[:, 128:192].view(n, 2, 32)).view(n, QK_K)  # (n, 256)
    q = (low | (high << 4)).view(torch.int8) - 32  # (n, 256)
    torch.mul(q.view(n, 16, 16), dl, out=out.view(n, 16, 16))


def _deq_iq4_nl(blocks: Tensor, out: Tensor) -> None:
    """IQ4_NL: 32 weights in 18 bytes: f16 ``d``, 16 bytes of 4-bit indices (ordered as Q4_0)
    into the non-linear table ``IQ4_VALUES``. ``w = d * IQ4_VALUES[q]``.
    """
    d = _f16(blocks, 0)  # (n, 1)
    v = _lookup(IQ4_VALUES, _nibbles(blocks[:, 2:]))  # (n, 32)
    torch.mul(v, d, out=out)


def _deq_iq4_xs(blocks: Tensor, out: Tensor) -> None:
    """IQ4_XS: 256 weights in 136 bytes: f16 ``d``, u16 ``scales_h``, 4 bytes ``scales_l``,
    128 bytes of 4-bit indices into ``IQ4_VALUES``.

    Sub-block ``i`` (32 weights): 6-bit scale = nibble ``i % 2`` of ``scales_l[i // 2]`` |
    bits ``2i..2i+1`` of ``scales_h`` << 4, minus 32; its indices are bytes ``16i..16i+15``,
    low nibbles first. ``w = (d * sc[i]) * IQ4_VALUES[q]``.
    """
    n = blocks.shape[0]
    d = _f16(blocks, 0)  # (n, 1)
    low = _nibbles(blocks[:, 4:8]).view(n, 2, 4).transpose(1, 2)  # (n, 4, 2): [byte, nibble]
    high = _crumbs(blocks[:, 2:4]).transpose(1, 2)  # (n, 2, 4): [byte, crumb]
    sc = (low.reshape(n, 8) | (high.reshape(n, 8) << 4)).float() - 32  # (n, 8)
    dl = (d * sc).unsqueeze(-1)  # (n, 8, 1)
    v = _lookup(IQ4_VALUES, _nibbles(blocks[:, 8:].view(n, 8, 16)))  # (n, 8, 32)
    torch.mul(v, dl, out=out.view(n, 8, 32))


_DEQUANTIZERS: dict[GGMLType, Callable[[Tensor, Tensor], None]] = {
    GGMLType.F32: _deq_f32,
    GGMLType.F16: _deq_f16,
    GGMLType.BF16: _deq_bf16,
    GGMLType.Q4_0: _deq_q4_0,
    GGMLType.Q4_1: _deq_q4_1,
    GGMLType.Q5_0: _deq_q5_0,
    GGMLType.Q5_1: _deq_q5_1,
    GGMLType.Q8_0: _deq_q8_0,
    GGMLType.Q2_K: _deq_q2_k,
    GGMLType.Q3_K: _deq_q3_k,
    GGMLType.Q4_K: _deq_q4_k,
    GGMLType.Q5_K: _deq_q5_k,
    GGMLType.Q6_K: _deq_q6_k,
    GGMLType.IQ4_NL: _deq_iq4_nl,
    GGMLType.IQ4_XS: _deq_iq4_xs,
}


def check_raw(data: Tensor, qtype: QTypeLike, shape: Sequence[int], what: str = "tensor") -> GGMLType:
    """Validate raw GGUF bytes against a type and logical shape; return the type.

    Raises ``UnsupportedQuantType`` for a type without a dequantizer and
    ``ModelFormatError`` for a non-uint8 tensor, a last dim that is not a whole number of
    blocks, or a byte count that does not match the shape.
    """
    t = require_supported(qtype)
    if not isinstance(data, Tensor) or data.dtype != torch.uint8:
        kind = data.dtype if isinstance(data, Tensor) else type(data).__name__
        raise ModelFormatError(
            f"{what}: raw {t.name} data must be a torch.uint8 tensor of the GGUF bytes, got "
            f"{kind}; reinterpret it with tensor.view(torch.uint8) or torch.from_numpy(a.view(np.uint8))"
        )
    check_nbytes(t, shape, data.numel(), what)
    return t


def dequantize(data: Tensor, qtype: QTypeLike, shape: Sequence[int], *, what: str = "tensor") -> Tensor:
    """Dequantize raw GGUF bytes of ``qtype`` into a new float32 tensor of logical ``shape``.

    ``data``: uint8 tensor (any shape, C order) holding the blocks; ``shape``: PyTorch order,
    the last dim is the block dim. The result is on ``data.device``, never aliases ``data``,
    and equals ``gguf.quants.dequantize`` bit for bit. ``what`` names the tensor in errors.
    """
    t = check_raw(data, qtype, shape, what)
    dims = tuple(int(d) for d in shape)
    geo = block_geometry(t)
    blocks = data.reshape(-1).view(-1, geo.type_size)  # (n_blocks, type_size)
    n_blocks = blocks.shape[0]
    fn = _DEQUANTIZERS[t]
    out = torch.empty((n_blocks, geo.block_size), dtype=torch.float32, device=data.device)
    chunk = _CHUNK_WEIGHTS_CPU if data.device.type == "cpu" else _CHUNK_WEIGHTS_ACCEL
    step = max(1, chunk // geo.block_size)
    for start in range(0, n_blocks, step):
        fn(blocks[start : start + step], out[start : start + step])  # (step, block_size)
    return out.view(dims)
