"""Triton kernels of the ``sample`` and ``sample_filter`` ops: llama.cpp's sampler chain without a sort.

One program walks the vocabulary (V logits) in blocks of ``BLOCK`` ids, in ascending id order. Every
stage is a count, a sum or a threshold; "the k-th largest" and "the nucleus" are found by searching
the 32-bit ordered integer key of the float (``key(x) < key(y)`` iff ``x < y``), never by sorting.
Penalties are applied elementwise from the window's counts each time a block is loaded.

1. Scan (1 pass over V): max ``M``, the first maximum, the first NaN; with top-k, the 256-bin
   histogram of the keys' top byte.
2. Top-k (3 passes over V, then 1): a radix select, a byte at a time from the top, finds the key
   ``t`` of the k-th largest logit and ``r``, how many logits equal to it stay (ties: lowest ids).
   A compaction pass writes the k survivors (ascending id) to scratch; every later stage reads those
   k values instead of V.
3. Top-p (at most 8 passes over the k survivors, or over V without top-k): with
   ``G(c) = sum over keys >= c of exp(x - M)``, the cut is the largest key ``c*`` with
   ``G(c*) >= p Z`` (``Z = G(-inf)``), found by a 16-way search of the key range per pass. Tokens
   with a key above ``c*`` stay; the j-th token equal to ``c*`` (in id order) stays iff
   ``G(c* + 1) + j exp(x - M) < p Z``: "keep while the mass before it is below p".
4. Min-p: ``x >= M + log(min_p)``; temperature: ``(x - M) / T``.
5. Draw (2 passes over the survivors): the total ``W`` of ``exp((x - M) / T)`` over the kept
   tokens, then a blocked prefix sum in id order to the first kept token whose running sum
   exceeds ``u W`` (the last kept token if rounding finds none).

Passes over V: 1 (greedy), 5 + 2 over k (top-k), up to 1 + 8 + 2 (top-p without top-k); the work is
O(V) per pass, O(16 V) in a top-p pass. ``sample_filter`` replaces the draw by one pass that writes
the processed logits. Sums are float32; results agree with :mod:`oxide.ops.reference` except where
float32 rounding decides (a cumulative mass equal to ``p`` or to ``u W`` to the last bit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from ..errors import InvalidOptionError
from ..ops.reference import SAMPLE_NAN, SAMPLE_NO_FINITE, sample_stages
from ..processors import MinP, SamplingOptions, TopP

BLOCK = 1024
NUM_WARPS = 8
_CUTS: tl.constexpr = 16   # keys tried per pass of the top-p search
_SEARCH_BLOCK: tl.constexpr = 256   # its blocks: a (_SEARCH_BLOCK, _CUTS) tile of comparisons in registers
_KEY_NEG_INF: tl.constexpr = -2139095041   # _key(-inf)
_NAN_ID: tl.constexpr = SAMPLE_NAN
_NO_FINITE_ID: tl.constexpr = SAMPLE_NO_FINITE


# --------------------------------------------------------------------------- block helpers


@triton.jit
def _load(src_ptr, counts_ptr, offs, mask, rp, fp, pp, PENALISE: tl.constexpr):
    """Logits of a block (-inf off ``mask``), penalised as :class:`~oxide.processors.Penalties` when seen:
    ``x * rp`` (x <= 0) or ``x / rp``, less ``c fp + pp``."""
    x = tl.load(src_ptr + offs, mask=mask, other=float("-inf"))
    if PENALISE:
        c = tl.load(counts_ptr + offs, mask=mask, other=0)
        scaled = tl.where(x <= 0.0, x * rp, tl.math.div_rn(x, rp))
        x = tl.where(c > 0, scaled - (c.to(tl.float32) * fp + pp), x)
    return x


@triton.jit
def _key(x):
    """The ordered int32 key of float32 ``x`` (not NaN): ``x < y`` iff ``key(x) < key(y)``; -0.0 keys as 0.0."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _exclusive_rank(flags, before):
    """For each element, ``before`` plus the number of set ``flags`` ahead of it in the block."""
    as_int = flags.to(tl.int32)
    return before + tl.cumsum(as_int, 0) - as_int


@triton.jit
def _top_k_keep(key, mask, t, r, ties):
    """Top-k's mask for a block: keys above ``t``, and the first ``r`` keys equal to it (``ties`` of them seen
    in earlier blocks). Returns (mask, ties seen so far)."""
    tie = mask & (key == t)
    keep = mask & ((key > t) | (tie & (_exclusive_rank(tie, ties) < r)))
    return keep, ties + tl.sum(tie.to(tl.int32))


@triton.jit
def _later_keep(x, key, m, c_star, g_above, pz, min_cut, ties, TOP_P: tl.constexpr, MIN_P: tl.constexpr):
    """The mask of top-p (cut ``c_star``, mass above it ``g_above``, ``pz = p Z``) and min-p (``x >= min_cut``)
    over a block of finite-or-not logits; ``ties``: keys equal to ``c_star`` seen in earlier blocks."""
    keep = x > float("-inf")
    if TOP_P:
        tie = key == c_star
        mass_before = g_above + _exclusive_rank(tie, ties).to(tl.float32) * tl.exp(x - m)
        keep &= (key > c_star) | (tie & (mass_before < pz))
        ties += tl.sum(tie.to(tl.int32))
    if MIN_P:
        keep &= x >= min_cut
    return keep, ties


@triton.jit
def _choose_digit(hist, k_rem):
    """Radix select step: the digit whose bin holds the ``k_rem``-th largest key (bins counted from the top)
    and ``k_rem`` less the keys in the bins above it."""
    bins = tl.arange(0, 256)
    at_or_above = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
    digit = tl.max(tl.where(at_or_above >= k_rem, bins, 0), 0)
    return digit, k_rem - tl.sum(tl.where(bins > digit, hist, 0), 0)


# --------------------------------------------------------------------------- stages


@triton.jit
def _scan(logits_ptr, counts_ptr, V, rp, fp, pp,
          PENALISE: tl.constexpr, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    """One pass: max (NaN ignored), its first index, the first NaN's index (V: none) and, for top-k, the
    histogram of the keys' top byte (order-preserving: the sign bit flipped)."""
    m = tl.full((), float("-inf"), tl.float32)
    arg = tl.zeros((), tl.int32)
    nan_first = tl.zeros((), tl.int32) + V
    hist = tl.zeros((256,), tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        x = _load(logits_ptr, counts_ptr, offs, mask, rp, fp, pp, PENALISE)
        is_nan = x != x
        nan_first = tl.minimum(nan_first, tl.min(tl.where(is_nan, offs, V), 0))
        x = tl.where(is_nan, float("-inf"), x)
        block_max = tl.max(x, 0)
        arg = tl.where(block_max > m, start + tl.argmax(x, 0, tie_break_left=True), arg)
        m = tl.maximum(m, block_max)
        if TOP_K:
            hist += tl.histogram(((_key(x) >> 24) & 0xFF) ^ 0x80, 256, mask=mask)
    return m, arg, nan_first, hist


@triton.jit
def _top_k_cut(logits_ptr, counts_ptr, V, K, hist, rp, fp, pp, PENALISE: tl.constexpr, BLOCK: tl.constexpr):
    """Radix select of the k-th largest key ``t`` from the top byte's histogram: three more passes, one per
    byte, each a histogram of the keys that share the bytes found so far. Returns (t, how many keys equal to t
    top-k keeps)."""
    digit, k_rem = _choose_digit(hist, K)
    prefix = digit - 128   # key >> 24 of the k-th largest key (arithmetic shift)
    for i in tl.static_range(3):
        shift: tl.constexpr = 16 - 8 * i
        hist = tl.zeros((256,), tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < V
            key = _key(_load(logits_ptr, counts_ptr, offs, mask, rp, fp, pp, PENALISE))
            hist += tl.histogram((key >> shift) & 0xFF, 256, mask=mask & ((key >> (shift + 8)) == prefix))
        digit, k_rem = _choose_digit(hist, k_rem)
        prefix = prefix * 256 + digit
    return prefix, k_rem


@triton.jit
def _compact(logits_ptr, counts_ptr, V, t, r, kept_val_ptr, kept_id_ptr, rp, fp, pp,
             PENALISE: tl.constexpr, BLOCK: tl.constexpr):
    """Write the top-k survivors' logits and ids, ascending id, to ``kept_val`` and ``kept_id`` (k each)."""
    ties = tl.zeros((), tl.int32)
    written = tl.zeros((), tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        x = _load(logits_ptr, counts_ptr, offs, mask, rp, fp, pp, PENALISE)
        keep, ties = _top_k_keep(_key(x), mask, t, r, ties)
        at = _exclusive_rank(keep, written)
        tl.store(kept_val_ptr + at, x, mask=keep)
        tl.store(kept_id_ptr + at, offs, mask=keep)
        written += tl.sum(keep.to(tl.int32), 0)


@triton.jit
def _top_p_cut(src_ptr, counts_ptr, n, m, top_p, rp, fp, pp, PENALISE: tl.constexpr):
    """The top-p cut over ``n`` logits: the largest key ``c`` with ``G(c) >= p Z``, ``G(c + 1)`` and ``p Z``.

    A search of the key range ``[lo, hi)`` with ``G(lo) >= p Z > G(hi)``: each pass sums ``exp(x - m)`` above
    ``_CUTS`` evenly spaced keys and keeps the sub-range where ``G`` crosses ``p Z``, until ``hi = lo + 1``.
    """
    lo = tl.zeros((), tl.int64) + (_KEY_NEG_INF + 1)
    hi = _key(m).to(tl.int64) + 1
    g_hi = tl.zeros((), tl.float32)   # G(hi): nothing lies above the max
    pz = tl.zeros((), tl.float32)
    j = tl.arange(0, _CUTS)
    while hi - lo > 1:
        step = (hi - lo + _CUTS - 1) // _CUTS
        cuts = (lo + j.to(tl.int64) * step).to(tl.int32)   # (_CUTS,) keys: int32, only their range needs 64 bits
        g = tl.zeros((_CUTS,), tl.float32)
        z = tl.zeros((), tl.float32)
        for start in range(0, n, _SEARCH_BLOCK):
            offs = start + tl.arange(0, _SEARCH_BLOCK)
            x = _load(src_ptr, counts_ptr, offs, offs < n, rp, fp, pp, PENALISE)
            w = tl.exp(x - m)   # 0 for -inf
            above = _key(x)[:, None] >= cuts[None, :]   # (_SEARCH_BLOCK, _CUTS)
            g += tl.sum(tl.where(above, w[:, None], 0.0), 0)
            z += tl.sum(w, 0)
        pz = top_p * z
        best = tl.max(tl.where(((g >= pz) & (cuts.to(tl.int64) < hi)) | (j == 0), j, 0), 0)
        upper = lo + (best + 1).to(tl.int64) * step
        narrower = (best + 1 < _CUTS) & (upper < hi)
        g_hi = tl.where(narrower, tl.sum(tl.where(j == best + 1, g, 0.0), 0), g_hi)
        hi = tl.where(narrower, upper, hi)
        lo = lo + best.to(tl.int64) * step
    return lo.to(tl.int32), g_hi, pz


@triton.jit
def _draw(src_ptr, counts_ptr, n, u, m, temperature, c_star, g_above, pz, min_cut, rp, fp, pp,
          PENALISE: tl.constexpr, TOP_P: tl.constexpr, MIN_P: tl.constexpr, BLOCK: tl.constexpr):
    """Inverse-CDF draw over the kept tokens of ``n`` logits in position order: the first whose running sum of
    ``exp((x - m) / T)`` exceeds ``u W`` (``W`` the total), else the last kept; -1 if none is kept."""
    total = tl.zeros((), tl.float32)
    last = tl.zeros((), tl.int32) - 1
    ties = tl.zeros((), tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = _load(src_ptr, counts_ptr, offs, offs < n, rp, fp, pp, PENALISE)
        keep, ties = _later_keep(x, _key(x), m, c_star, g_above, pz, min_cut, ties, TOP_P, MIN_P)
        total += tl.sum(tl.where(keep, tl.exp(tl.math.div_rn(x - m, temperature)), 0.0), 0)
        last = tl.maximum(last, tl.max(tl.where(keep, offs, -1), 0))
    target = u * total
    found = tl.zeros((), tl.int32) + n
    running = tl.zeros((), tl.float32)
    ties = tl.zeros((), tl.int32)
    start = tl.zeros((), tl.int32)
    while (start < n) & (found == n):
        offs = start + tl.arange(0, BLOCK)
        x = _load(src_ptr, counts_ptr, offs, offs < n, rp, fp, pp, PENALISE)
        keep, ties = _later_keep(x, _key(x), m, c_star, g_above, pz, min_cut, ties, TOP_P, MIN_P)
        w = tl.where(keep, tl.exp(tl.math.div_rn(x - m, temperature)), 0.0)
        cdf = running + tl.cumsum(w, 0)
        found = tl.min(tl.where(keep & (cdf > target), offs, n), 0)
        running += tl.sum(w, 0)
        start += BLOCK
    return tl.where(found < n, found, last)


@triton.jit
def _sample_kernel(logits_ptr, counts_ptr, u_ptr, out_ptr, kept_val_ptr, kept_id_ptr, V, K,
                   rp, fp, pp, top_p, log_min_p, temperature,
                   PENALISE: tl.constexpr, GREEDY: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr,
                   MIN_P: tl.constexpr, FILTER: tl.constexpr, STAGE_PENALISE: tl.constexpr, BLOCK: tl.constexpr):
    """``out``: the chosen id (int64) or, with FILTER, the processed logits (V,). See the module docstring."""
    m, arg, nan_first, hist = _scan(logits_ptr, counts_ptr, V, rp, fp, pp, PENALISE, TOP_K, BLOCK)
    if GREEDY:
        first = tl.where(nan_first < V, nan_first, arg)
        if FILTER:
            for start in range(0, V, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                mask = offs < V
                x = _load(logits_ptr, counts_ptr, offs, mask, rp, fp, pp, PENALISE)
                tl.store(out_ptr + offs, tl.where(offs == first, x, float("-inf")), mask=mask)
        else:
            tl.store(out_ptr, first.to(tl.int64))
    else:
        t = tl.zeros((), tl.int32)
        r = tl.zeros((), tl.int32)
        if TOP_K:
            # the stages after top-k read its k survivors, compacted, instead of the vocabulary
            t, r = _top_k_cut(logits_ptr, counts_ptr, V, K, hist, rp, fp, pp, PENALISE, BLOCK)
            _compact(logits_ptr, counts_ptr, V, t, r, kept_val_ptr, kept_id_ptr, rp, fp, pp, PENALISE, BLOCK)
            tl.debug_barrier()
            stage_ptr = kept_val_ptr
            n = K
        else:
            stage_ptr = logits_ptr
            n = V
        c_star = tl.zeros((), tl.int32)
        g_above = tl.zeros((), tl.float32)
        pz = tl.zeros((), tl.float32)
        if TOP_P:
            c_star, g_above, pz = _top_p_cut(stage_ptr, counts_ptr, n, m, top_p, rp, fp, pp, STAGE_PENALISE)
        min_cut = m + log_min_p
        if FILTER:
            top_k_ties = tl.zeros((), tl.int32)
            top_p_ties = tl.zeros((), tl.int32)
            for start in range(0, V, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                mask = offs < V
                x = _load(logits_ptr, counts_ptr, offs, mask, rp, fp, pp, PENALISE)
                key = _key(x)
                keep, top_p_ties = _later_keep(x, key, m, c_star, g_above, pz, min_cut, top_p_ties, TOP_P, MIN_P)
                if TOP_K:
                    in_top_k, top_k_ties = _top_k_keep(key, mask, t, r, top_k_ties)
                    keep &= in_top_k
                tl.store(out_ptr + offs, tl.where(keep, tl.math.div_rn(x - m, temperature), float("-inf")),
                         mask=mask)
        else:
            u = tl.load(u_ptr)
            at = _draw(stage_ptr, counts_ptr, n, u, m, temperature, c_star, g_above, pz, min_cut, rp, fp, pp,
                       STAGE_PENALISE, TOP_P, MIN_P, BLOCK)
            if TOP_K:
                at = tl.load(kept_id_ptr + tl.maximum(at, 0))
            token = tl.where(m == float("-inf"), _NO_FINITE_ID, at)
            tl.store(out_ptr, tl.where(nan_first < V, _NAN_ID, token).to(tl.int64))


# --------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class _Plan:
    """The kernel's switches and scalars for one :class:`SamplingOptions`, from the reference's stages."""

    penalties: tuple[float, float, float] | None   # (repeat, frequency, presence)
    greedy: bool
    top_k: int   # 0: no top-k
    top_p: float   # 1: no top-p
    min_p: float   # 0: no min-p
    temperature: float


@lru_cache(maxsize=64)
def _plan(options: SamplingOptions) -> _Plan:
    penalties, top_k, rest = sample_stages(options)
    return _Plan(
        penalties=None if penalties is None else (penalties.repeat_penalty, penalties.frequency_penalty,
                                                  penalties.presence_penalty),
        greedy=options.temperature == 0.0,
        top_k=0 if top_k is None else top_k.k,
        top_p=next((stage.p for stage in rest if isinstance(stage, TopP)), 1.0),
        min_p=next((stage.min_p for stage in rest if isinstance(stage, MinP)), 0.0),
        temperature=options.temperature,
    )


def serves_sample(dtype: torch.dtype) -> bool:
    """The kernels take float32 logits (the probe: the logits' dtype)."""
    return dtype == torch.float32


serves_sample_filter = serves_sample


def sample(logits: torch.Tensor, counts: torch.Tensor | None, u: torch.Tensor, options: SamplingOptions
           ) -> torch.Tensor:
    """:func:`oxide.ops.reference.sample` in one program: the chosen id, a 0-d int64 tensor on the logits'
    device (``SAMPLE_NAN`` / ``SAMPLE_NO_FINITE`` for logits that allow no draw)."""
    _check(logits, counts, "sample")
    if not (isinstance(u, torch.Tensor) and u.dim() == 0 and u.dtype == torch.float32 and u.device == logits.device):
        raise InvalidOptionError(f"sample: u must be a 0-d float32 tensor on {logits.device}, got {_describe(u)}")
    out = _empty((), torch.int64, logits.device)
    _launch(logits, counts, u, options, out, filter=False)
    return out


def sample_filter(logits: torch.Tensor, counts: torch.Tensor | None, options: SamplingOptions) -> torch.Tensor:
    """:func:`oxide.ops.reference.sample_filter`: the processed logits (V,) float32, removed tokens -inf."""
    _check(logits, counts, "sample_filter")
    out = _empty(logits.shape, torch.float32, logits.device)
    _launch(logits, counts, logits, options, out, filter=True)
    return out


def _launch(logits: torch.Tensor, counts: torch.Tensor | None, u: torch.Tensor, options: SamplingOptions,
            out: torch.Tensor, filter: bool) -> None:
    plan = _plan(options)
    vocab = logits.shape[0]
    logits = logits.contiguous()
    penalise = plan.penalties is not None and counts is not None
    rp, fp, pp = plan.penalties if penalise else (1.0, 0.0, 0.0)
    k = plan.top_k if 0 < plan.top_k < vocab else 0
    kept_val = _empty((k,), torch.float32, logits.device) if k else logits
    kept_id = _empty((k,), torch.int32, logits.device) if k else logits
    _sample_kernel[(1,)](
        logits, counts.contiguous() if penalise else logits, u, out, kept_val, kept_id, vocab, k,
        rp, fp, pp, plan.top_p, math.log(plan.min_p) if plan.min_p > 0.0 else 0.0, plan.temperature or 1.0,
        PENALISE=penalise, GREEDY=plan.greedy, TOP_K=k > 0, TOP_P=plan.top_p < 1.0, MIN_P=plan.min_p > 0.0,
        FILTER=filter, STAGE_PENALISE=penalise and not k, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output or scratch buffer the kernel fills (the tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _check(logits: torch.Tensor, counts: torch.Tensor | None, op: str) -> None:
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 1 and logits.dtype == torch.float32
            and logits.numel() > 0):
        raise InvalidOptionError(f"{op}: logits must be a non-empty 1-D float32 tensor, got {_describe(logits)}")
    if counts is not None and not (isinstance(counts, torch.Tensor) and counts.shape == logits.shape
                                   and counts.dtype == torch.int32 and counts.device == logits.device):
        raise InvalidOptionError(f"{op}: counts must be None or an int32 tensor of shape ({logits.shape[0]},) on "
                                 f"{logits.device}, got {_describe(counts)}")


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return repr(value)
