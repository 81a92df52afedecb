"""Grouped-query attention in Triton: :func:`oxide.ops.reference.attention`, flash-attention style.

One kernel, two plans chosen by the number of queries T:

- **prefill** (T > ``DECODE_MAX_T``): each program takes a tile of query rows of one kv head and scans
  every key once, in tiles, with an online softmax (float32 running max and sum, in base 2);
- **decode** (T <= ``DECODE_MAX_T``): the keys are split in chunks across programs (split-KV), so that a
  single query still fills the GPU; each program writes its chunk's normalised output and log-sum-exp,
  and :func:`_merge_kernel` combines the chunks (``out = sum_c 2^(lse_c - M) o_c / sum_c 2^(lse_c - M)``).

Query rows are packed per kv head as ``r = t * G + g`` (G = H / Hkv query heads per kv head; row r is
query t of head ``hk * G + g``), so each K/V tile a program loads serves all G heads of its group, and a
tile of rows covers consecutive query positions. Masks come from the explicit positions: key j is
allowed for query i when ``0 <= q_pos[i] - k_pos[j]`` (dropped when ``causal=False``), ``< window`` if
``window > 0``, and ``q_seg[i] == k_seg[j]`` when segment ids are given (a vision encoder's images packed in
one sequence: block-diagonal, non-causal), after the scores ``scale * q.k`` are soft-capped
(``cap * tanh(s / cap)``); positions and segments are compared as int32 saturated at 2^30 (exact below a
billion tokens; an empty slot marked with any larger position is never attended).

Key tiles that no query of a program may see are skipped: a first pass over the key positions alone finds
the first and the last tile holding a key that some query may see (a tile whose smallest position is past
the last query in a causal call, whose largest is before every window, or whose segments are all outside
the program's, holds none), and the main loop runs over that
range only, without a branch, so that its K/V loads pipeline. In a prefill, whose keys ascend, the range is
exactly the causal (and window) band; a sliding window's ring holds keys in any order, and tiles inside the
range that no query sees are then computed and masked. A query row with no allowed key is NaN, as in the
reference; no keys at all (S = 0) gives zeros, as the reference's empty matmul does.

Head dims: any hd up to ``MAX_HEAD_DIM`` (beyond, the reference runs), padded to a power of two >= 16
(``BLOCK_D``) with masked loads; tiles shrink as hd grows (:data:`_TILES`).
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from oxide.errors import InvalidOptionError
from oxide.ops import reference
from oxide.ops.triton_kernels import interpreting

DECODE_MAX_T = 4              # up to this many queries per call: split-KV decode
MAX_HEAD_DIM = 1024           # wider heads go to the reference (none known: DeepSeek's latent keys are 576)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_PROGRAMS_PER_SM = 2          # split-KV aims at this many programs per streaming multiprocessor
_INTERPRETER_PROGRAMS = 8     # and at this many under the interpreter (which has no SMs)
POSITION_LIMIT = tl.constexpr(1 << 30)     # positions saturate here (see _position)
LOG2E = tl.constexpr(1.4426950408889634)   # scores in base 2, for exp2


@triton.jit
def _tanh(x):
    """``tanh(x) = sign(x) (1 - e) / (1 + e)`` with ``e = exp(-2|x|)``: no overflow for any x (libdevice's
    tanh would do, but the interpreter lacks it)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _position(ptr):
    """Positions as int32, saturated to +-2^30: exact below a billion tokens, and a larger sentinel (an
    empty slot's) still lies after every query. int32 halves the registers of the (rows, keys) distances."""
    return tl.minimum(tl.maximum(tl.load(ptr), -POSITION_LIMIT), POSITION_LIMIT).to(tl.int32)


@triton.jit
def _live_tiles(k_pos_ptr, k_seg_ptr, start, stop, q_first, q_last, seg_first, seg_last, window,
                CAUSAL: tl.constexpr, WINDOW: tl.constexpr, SEGMENTS: tl.constexpr, BLOCK_N: tl.constexpr):
    """``[first, last)``: the key tiles of ``[start, stop)`` from the first to the last that may hold a key
    some query of ``[q_first, q_last]`` (segments ``[seg_first, seg_last]``) sees: a tile whose smallest
    position is past ``q_last`` (causal), whose largest is at or before ``q_first - window``, or whose
    segments all lie outside the queries' range holds none. A pass over the positions and segments only."""
    first, last = stop, start
    for n in range(start, stop, BLOCK_N):
        cols = tl.minimum(n + tl.arange(0, BLOCK_N), stop - 1)                    # past the end: the last
        k_pos = _position(k_pos_ptr + cols)
        live = tl.full((), 1, tl.int1)
        if CAUSAL:
            live = tl.min(k_pos, 0) <= q_last
        if WINDOW:
            live = live & (tl.max(k_pos, 0) > q_first - window)
        if SEGMENTS:
            k_seg = _position(k_seg_ptr + cols)
            live = live & (tl.max(k_seg, 0) >= seg_first) & (tl.min(k_seg, 0) <= seg_last)
        first = tl.where(live, tl.minimum(first, n), first)
        last = tl.where(live, n + BLOCK_N, last)
    return first, last


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, q_pos_ptr, k_pos_ptr, q_seg_ptr, k_seg_ptr, out_ptr, lse_ptr,
                      n_rows, T, S, Hkv, chunk, scale, softcap, window,
                      sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d,
                      G: tl.constexpr, HD: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr,
                      CAUSAL: tl.constexpr, SEGMENTS: tl.constexpr,
                      SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``program_id(0)`` of kv head ``program_id(1)`` (b * Hkv + hk) against keys
    ``[program_id(2) * chunk, + chunk)``. SPLIT: write the normalised partial output (float32, one
    (n_rows = B * H * T, hd) slab per split) and its base-2 log-sum-exp to ``out_ptr``/``lse_ptr``; else the output."""
    bk = tl.program_id(1).to(tl.int64)
    b, hk = bk // Hkv, bk % Hkv
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < G * T
    rows = tl.minimum(rows, G * T - 1)          # rows past the end repeat the last one, unstored
    t, h = rows // G, hk * G + rows % G
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HD
    q = tl.load(q_ptr + b * sq_b + h[:, None] * sq_h + t[:, None] * sq_t + d[None, :] * sq_d,
                mask=d_ok[None, :], other=0.0)                                      # (BLOCK_M, BLOCK_D)
    q_pos = _position(q_pos_ptr + t)
    q_first, q_last = tl.min(q_pos, 0), tl.max(q_pos, 0)
    if SEGMENTS:
        q_seg = _position(q_seg_ptr + t)
        seg_first, seg_last = tl.min(q_seg, 0), tl.max(q_seg, 0)
    else:
        seg_first, seg_last = 0, 0

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)   # running max of the scores, base 2
    l_i = tl.zeros((BLOCK_M,), tl.float32)                 # running sum of 2^(s - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    k_head = k_ptr + b * sk_b + hk * sk_h
    v_head = v_ptr + b * sv_b + hk * sv_h
    start = tl.program_id(2) * chunk
    stop = tl.minimum(start + chunk, S)
    first, last = _live_tiles(k_pos_ptr, k_seg_ptr, start, stop, q_first, q_last, seg_first, seg_last, window,
                              CAUSAL, WINDOW, SEGMENTS, BLOCK_N)
    for n in range(first, last, BLOCK_N):       # no branch inside: the loads pipeline
        cols = n + tl.arange(0, BLOCK_N)
        col_ok = cols < stop
        k_pos = _position(k_pos_ptr + tl.minimum(cols, stop - 1))
        kt = tl.load(k_head + cols[None, :] * sk_s + d[:, None] * sk_d,
                     mask=col_ok[None, :] & d_ok[:, None], other=0.0)               # (BLOCK_D, BLOCK_N)
        s = tl.dot(q, kt, input_precision="ieee") * scale                            # (BLOCK_M, BLOCK_N) f32
        if SOFTCAP:
            s = softcap * _tanh(s / softcap)
        distance = q_pos[:, None] - k_pos[None, :]
        allowed = col_ok[None, :]
        if CAUSAL:
            allowed = allowed & (distance >= 0)
        if WINDOW:
            allowed = allowed & (distance < window)
        if SEGMENTS:
            k_seg = _position(k_seg_ptr + tl.minimum(cols, stop - 1))
            allowed = allowed & (q_seg[:, None] == k_seg[None, :])
        s = tl.where(allowed, s * LOG2E, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # rows with nothing allowed yet stay at 0
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(v_head + cols[:, None] * sv_s + d[None, :] * sv_d,
                     mask=col_ok[:, None] & d_ok[None, :], other=0.0)               # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        m_i = m_new

    H = Hkv * G
    out_rows = (b * H + h) * T + t                                                  # row of (B, H, T)
    if SPLIT:
        slab = tl.program_id(2).to(tl.int64) * n_rows
        has_keys = l_i > 0
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + slab + out_rows, lse, mask=row_ok)
        o = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    else:
        slab = 0
        o = acc / l_i[:, None]                      # 0 / 0: NaN for a row without keys, as the reference
    tl.store(out_ptr + (slab + out_rows)[:, None] * HD + d[None, :], o.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _merge_kernel(part_ptr, lse_ptr, out_ptr, n_rows, splits,
                  HD: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row ``program_id(0)`` of the output from its ``splits`` partials: the log-sum-exp merge, online over
    the splits. A row whose every split had no allowed key gets 0 / 0 = NaN, as the reference."""
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HD
    top = tl.full((), float("-inf"), tl.float32)
    weight = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for split in range(splits):
        at = split * n_rows + row
        lse = tl.load(lse_ptr + at)
        new_top = tl.maximum(top, lse)
        safe = tl.where(new_top == float("-inf"), 0.0, new_top)
        alpha, w = tl.exp2(top - safe), tl.exp2(lse - safe)
        o = tl.load(part_ptr + at * HD + d, mask=d_ok, other=0.0)
        weight = weight * alpha + w
        acc = acc * alpha + w * o
        top = new_top
    tl.store(out_ptr + row * HD + d, (acc / weight).to(out_ptr.dtype.element_ty), mask=d_ok)


class Plan(NamedTuple):
    """How :func:`attention` tiles a call: programs ``(cdiv(G * T, block_m), B * Hkv, splits)``."""
    block_m: int    # packed query rows per program
    block_n: int    # keys per tile
    block_d: int    # head dim, padded to a power of two
    warps: int
    stages: int     # software pipelining depth of the key loop
    chunk: int      # keys per split
    splits: int     # 1: the kernel writes the output; more: partials, then the merge


# (block_m, block_n, warps, stages) by padded head dim, for 2-byte and for float32 tiles: no register
# spills and shared memory within Hopper's 227 KiB (checked with ptxas for sm_90). float32 takes half the
# rows: its dots run on FMA units (input_precision="ieee") and its tiles are twice the bytes.
_TILES = {128: ((64, 64, 4, 3), (32, 32, 8, 3)),
          256: ((32, 32, 4, 3), (16, 32, 8, 3)),
          MAX_HEAD_DIM: ((16, 16, 8, 3), (16, 16, 8, 2))}


@cache
def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return _INTERPRETER_PROGRAMS


def plan(B: int, H: int, Hkv: int, T: int, S: int, hd: int, dtype: torch.dtype, device: torch.device) -> Plan:
    """Tiles by head dim and dtype (:data:`_TILES`); a prefill is one split, a decode (T <= DECODE_MAX_T)
    as many splits as reach the device's target program count, each a whole number of key tiles."""
    block_d = max(16, triton.next_power_of_2(hd))
    tiles = next(sizes for width, sizes in _TILES.items() if block_d <= width)
    block_m, block_n, warps, stages = tiles[dtype == torch.float32]
    rows = H // Hkv * T
    if T > DECODE_MAX_T:
        return Plan(block_m, block_n, block_d, warps, stages, S, 1)
    block_m = min(block_m, max(16, triton.next_power_of_2(rows)))
    programs = B * Hkv * triton.cdiv(rows, block_m)
    splits = max(1, min(triton.cdiv(_target_programs(device), programs), triton.cdiv(S, block_n)))
    chunk = triton.cdiv(triton.cdiv(S, splits), block_n) * block_n
    return Plan(block_m, block_n, block_d, warps, stages, chunk, triton.cdiv(S, chunk))


def serves_attention(q_dtype: torch.dtype, k_dtype: torch.dtype, v_dtype: torch.dtype) -> bool:
    """q, k and v of one dtype among float32, float16 and bfloat16 (bfloat16 not under the interpreter)."""
    return (q_dtype == k_dtype == v_dtype and q_dtype in _DTYPES
            and not (q_dtype == torch.bfloat16 and interpreting()))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              *, scale: float, window: int = 0, softcap: float = 0.0, causal: bool = True,
              q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`oxide.ops.reference.attention`: q (B, H, T, hd), k and v (B, Hkv, S, hd), any strides; q_pos
    (T,), k_pos (S,) integer positions; optionally non-causal and segment ids q_seg (T,), k_seg (S,).
    Returns a new contiguous (B, H, T, hd) tensor of v's dtype."""
    _check(q, k, v, q_pos, k_pos)
    B, H, T, hd = q.shape
    reference.check_segments(q_seg, k_seg, T, k.shape[2])
    _check_on_device(q, q_seg, k_seg)
    if hd > MAX_HEAD_DIM:
        return reference.attention(q, k, v, q_pos, k_pos, scale=scale, window=window, softcap=softcap,
                                   causal=causal, q_seg=q_seg, k_seg=k_seg)
    Hkv, S = k.shape[1], k.shape[2]
    out = _empty((B, H, T, hd), v.dtype, q.device)
    if S == 0:
        return out.zero_()
    if out.numel() == 0:
        return out
    G, n_rows = H // Hkv, B * H * T
    p = plan(B, H, Hkv, T, S, hd, q.dtype, q.device)
    if p.splits > 1:
        partial = _empty((p.splits, n_rows, hd), torch.float32, q.device)
        lse = _empty((p.splits, n_rows), torch.float32, q.device)
    else:
        partial, lse = out, out    # lse unused
    segments = q_seg is not None
    q_seg, k_seg = (q_seg.contiguous(), k_seg.contiguous()) if segments else (q_pos, k_pos)   # unread if none
    args = (q, k, v, q_pos.contiguous(), k_pos.contiguous(), q_seg, k_seg, partial, lse, n_rows, T, S, Hkv, p.chunk,
            float(scale), float(softcap), int(window), *q.stride(), *k.stride(), *v.stride())
    meta = dict(G=G, HD=hd, SOFTCAP=softcap > 0, WINDOW=window > 0, CAUSAL=bool(causal), SEGMENTS=segments,
                SPLIT=p.splits > 1, BLOCK_M=p.block_m, BLOCK_N=p.block_n, BLOCK_D=p.block_d, num_warps=p.warps)
    _launch((triton.cdiv(G * T, p.block_m), B * Hkv, p.splits), args, meta, p.stages, q.device, q.dtype)
    if p.splits > 1:
        _merge_kernel[(n_rows,)](partial, lse, out, n_rows, p.splits, HD=hd, BLOCK_D=p.block_d,
                                 num_warps=max(1, min(4, p.block_d // 128)))
    return out


_FITTING_STAGES: dict[tuple, int] = {}   # (device, dtype, tiles) -> pipeline depth whose buffers fit


def _launch(grid: tuple[int, int, int], args: tuple, meta: dict, stages: int, device: torch.device,
            dtype: torch.dtype) -> None:
    """Launch :func:`_attention_kernel`, pipelined ``stages`` deep, or less where the device's shared memory
    is smaller than Hopper's (an Ampere or consumer GPU): the first launch that fits is remembered."""
    key = (device, dtype, meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_D"])
    stages = _FITTING_STAGES.get(key, stages)
    while True:
        try:
            _attention_kernel[grid](*args, **meta, num_stages=stages)
        except OutOfResources:
            if stages == 1:
                raise
            stages -= 1
            continue
        _FITTING_STAGES[key] = stages
        return


def _check_on_device(q: torch.Tensor, *segments: torch.Tensor | None) -> None:
    """Segment ids must be on q's device (the kernel reads them there)."""
    for name, seg in zip(("q_seg", "k_seg"), segments):
        if seg is not None and seg.device != q.device:
            raise InvalidOptionError(f"attention: {name} is on {seg.device}, q on {q.device}; move it to {q.device}")


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new buffer for the kernels to fill (the tests poison it with NaN, so unwritten elements show)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
    """Raise :class:`InvalidOptionError` naming the argument that the kernel cannot take."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4 or t.dtype not in _DTYPES or t.device != q.device:
            raise InvalidOptionError(f"attention: {name} must be a 4-D float tensor on {q.device}, got "
                                     f"{t.dtype} {tuple(t.shape)} on {t.device}")
    B, H, T, hd = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != hd or k.shape[1] == 0 or H % k.shape[1]:
        raise InvalidOptionError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
                                 f"(B, Hkv, S, hd) = ({B}, Hkv, S, {hd}) with H = {H} a multiple of Hkv")
    if not q.dtype == k.dtype == v.dtype:
        raise InvalidOptionError(f"attention: q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}; one is needed")
    for name, p, n in (("q_pos", q_pos, T), ("k_pos", k_pos, k.shape[2])):
        if p.shape != (n,) or p.device != q.device or p.dtype.is_floating_point or p.dtype.is_complex \
                or p.dtype == torch.bool:
            raise InvalidOptionError(f"attention: {name} must be an integer tensor of shape ({n},) on {q.device}, "
                                     f"got {p.dtype} {tuple(p.shape)} on {p.device}")
