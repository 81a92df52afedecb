"""Quantized matmuls in Triton: ``x @ W^T`` with W read as GGML blocks and dequantized in registers.

One entry point, :func:`project`, serves every quantized-matmul op of :mod:`oxide.kernels.quant_ops`;
constexpr switches select the form, so there is one kernel per shape class, not one per op:

- ``GATED``: two matrices (gate, up) read by the same program; the output is ``act(x Wg^T) * (x Wu^T)``,
  the activation applied in registers;
- ``EXPERTS``: W stacked (E, N, K), the rows of x grouped by expert (``offsets``); the expert is grid
  dimension 2 and each program reads its expert's blocks at ``data[e]`` and rows
  ``offsets[e]:offsets[e + 1]``.

Shape classes (M = rows of x):

- M <= :data:`GEMV_MAX_ROWS` (decode): :func:`_gemv_kernel`, each program a band of ``BLOCK_N`` weight rows
  over all M activation rows, dequantizing each (BLOCK_N, BLOCK_K) tile once for all of them. When the
  bands alone cannot fill the GPU, K is split (:func:`split_for`) and each split writes float32 partial
  sums that :func:`_reduce_kernel` adds in split order (deterministic, no atomics) before the epilogue.
- M > GEMV_MAX_ROWS (prefill): :func:`_gemm_kernel`, (BLOCK_M, BLOCK_N) output tiles, each W tile
  dequantized once and multiplied with ``tl.dot`` (tensor cores; float32 activations with
  ``input_precision="ieee"``, f16/bf16 ones with W rounded to their dtype, as the reference does).

Accumulation is float32 throughout; the output has x's dtype.
"""

from __future__ import annotations

from functools import cache

import torch
import triton
import triton.language as tl

from oxide.errors import InvalidOptionError
from oxide.quant import QuantTensor

from .quant_dequant import GROUP, TYPES, dequant_tile

GEMV_MAX_ROWS = 8
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = {"silu": 0, "gelu": 1, "gelu_pytorch_tanh": 2}

SILU = tl.constexpr(ACTIVATIONS["silu"])
GELU = tl.constexpr(ACTIVATIONS["gelu"])

# Tiles, sized so that no variant spills registers on sm_90 (gated, BLOCK_M = 8 GEMV: 152 registers a thread;
# gated (64, 64) GEMM: 180). GEMV: a band of 16 rows, half a K-quant super-block per step.
GEMV_BLOCK_N, GEMV_BLOCK_K, GEMV_WARPS = 16, 128, 8
# GEMM: (BLOCK_M <= 64, 64) output tiles, K in steps of 32 (a multiple of every type's scale group).
GEMM_BLOCK_N, GEMM_BLOCK_K, GEMM_WARPS = 64, 32, 8
REDUCE_BLOCK_N = 256
# Split-K: aim for this many programs per SM; never split K finer than this many BLOCK_K steps.
PROGRAMS_PER_SM = 2
MIN_STEPS_PER_SPLIT = 2


@triton.jit
def _activation(gate, ACT: tl.constexpr):
    """silu ``g * sigmoid(g)``; gelu ``g/2 (1 + erf(g / sqrt 2))``; gelu_pytorch_tanh
    ``g/2 (1 + tanh(u)) = g * sigmoid(2u)``, ``u = sqrt(2/pi) (g + 0.044715 g^3)``."""
    if ACT == SILU:
        y = gate * tl.sigmoid(gate)
    elif ACT == GELU:
        y = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    else:
        u = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        y = gate * tl.sigmoid(2.0 * u)
    return y


@triton.jit
def _finish(acc, acc_up, bias_ptr, offs_n, mask_n, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
            ACT: tl.constexpr):
    """The output tile (rows, BLOCK_N) from its float32 sums: ``act(acc) * acc_up`` or ``acc (+ bias)``."""
    if GATED:
        y = _activation(acc, ACT) * acc_up
    elif HAS_BIAS:
        y = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0).to(tl.float32)[None, :]
    else:
        y = acc
    return y


@triton.jit
def _store(ptr, y, rows, mask_m, offs_n, mask_n, N):
    """``y`` (rows, BLOCK_N) into the row-major (M, N) matrix at ``ptr``, cast to its dtype."""
    ptrs = ptr + rows.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(ptrs, y.to(ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _expert_rows(offsets_ptr, M, w_ptr, w_up_ptr, expert_stride, expert_stride_up, EXPERTS: tl.constexpr,
                 GATED: tl.constexpr):
    """The program's rows of x (first, count) and its matrices: expert ``program_id(2)``'s when EXPERTS."""
    if EXPERTS:
        e = tl.program_id(2)
        first = tl.load(offsets_ptr + e).to(tl.int32)
        count = tl.load(offsets_ptr + e + 1).to(tl.int32) - first
        w_ptr += e.to(tl.int64) * expert_stride
        if GATED:
            w_up_ptr += e.to(tl.int64) * expert_stride_up
    else:
        first = tl.full((), 0, tl.int32)
        count = M + tl.full((), 0, tl.int32)   # a tensor even where M is specialised to a constant
    return first, count, w_ptr, w_up_ptr


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, w_up_ptr, bias_ptr, offsets_ptr, out_ptr, part_ptr,
                 M, N, K, stride_x, row_stride, expert_stride, row_stride_up, expert_stride_up, steps_per_split,
                 QTYPE: tl.constexpr, QTYPE_UP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GATED: tl.constexpr, EXPERTS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 ACT: tl.constexpr, SPLIT: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), SPLIT, E or 1). Rows ``n0:n0 + BLOCK_N`` of W (and W_up) times the program's
    rows of x (at most BLOCK_M), over K steps ``split * steps_per_split`` onwards; the (BLOCK_M, BLOCK_N)
    result goes to ``out`` (SPLIT == 1) or, unreduced, to ``part`` (SPLIT, 1 + GATED, M, N)."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    first, count, w_ptr, w_up_ptr = _expert_rows(offsets_ptr, M, w_ptr, w_up_ptr, expert_stride, expert_stride_up,
                                                 EXPERTS, GATED)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_begin = split * steps_per_split * BLOCK_K
    k_end = tl.minimum(K, k_begin + steps_per_split * BLOCK_K)
    k_end = tl.where(count > 0, k_end, k_begin)           # an expert without rows reads no blocks
    for k0 in range(k_begin, k_end, BLOCK_K):
        w = dequant_tile(w_ptr, row_stride, offs_n, mask_n, k0, K, QTYPE, BLOCK_N, BLOCK_K)     # (BN, BK)
        if GATED:
            w_up = dequant_tile(w_up_ptr, row_stride_up, offs_n, mask_n, k0, K, QTYPE_UP, BLOCK_N, BLOCK_K)
        mask_k = k0 + offs_k < K
        for m in tl.static_range(BLOCK_M):
            # rows past count (padding up to BLOCK_M) re-read the last row; their sums are never stored
            x_row = x_ptr + (first + tl.minimum(m, count - 1)).to(tl.int64) * stride_x
            xm = tl.load(x_row + k0 + offs_k, mask=mask_k, other=0).to(tl.float32)                 # (BK,)
            here = offs_m[:, None] == m                                                          # (BM, 1)
            acc = tl.where(here, acc + tl.sum(w * xm[None, :], axis=1)[None, :], acc)
            if GATED:
                acc_up = tl.where(here, acc_up + tl.sum(w_up * xm[None, :], axis=1)[None, :], acc_up)
    rows = first + offs_m
    if SPLIT == 1:
        y = _finish(acc, acc_up, bias_ptr, offs_n, mask_n, GATED, HAS_BIAS, ACT)
        _store(out_ptr, y, rows, mask_m, offs_n, mask_n, N)
    else:
        part = part_ptr + split.to(tl.int64) * (1 + GATED) * M * N
        _store(part, acc, rows, mask_m, offs_n, mask_n, N)
        if GATED:
            _store(part + M * N, acc_up, rows, mask_m, offs_n, mask_n, N)


@triton.jit
def _reduce_kernel(part_ptr, bias_ptr, out_ptr, M, N, SPLIT: tl.constexpr, GATED: tl.constexpr,
                   HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (M, cdiv(N, BLOCK_N)): the split-K partial sums of one output row added in split order, then
    :func:`_finish`."""
    row = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    ptrs = part_ptr + row.to(tl.int64) * N + offs_n[None, :]                                    # (1, BN)
    acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((1, BLOCK_N), dtype=tl.float32)
    for s in range(SPLIT):
        plane = ptrs + s * (1 + GATED) * M * N
        acc += tl.load(plane, mask=mask_n[None, :], other=0)
        if GATED:
            acc_up += tl.load(plane + M * N, mask=mask_n[None, :], other=0)
    y = _finish(acc, acc_up, bias_ptr, offs_n, mask_n, GATED, HAS_BIAS, ACT)
    _store(out_ptr, y, row + tl.arange(0, 1), tl.full((1,), True, tl.int1), offs_n, mask_n, N)


@triton.jit
def _dot(x, w, acc):
    """``acc + x @ w^T`` for x (BM, BK) and a float32 W tile (BN, BK): W in x's dtype, exact float32 products
    for float32 x."""
    return tl.dot(x, tl.trans(w.to(x.dtype)), acc, input_precision="ieee")


@triton.jit
def _gemm_kernel(x_ptr, w_ptr, w_up_ptr, bias_ptr, offsets_ptr, out_ptr,
                 M, N, K, stride_x, row_stride, expert_stride, row_stride_up, expert_stride_up,
                 QTYPE: tl.constexpr, QTYPE_UP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GATED: tl.constexpr, EXPERTS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 ACT: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N), cdiv(M, BLOCK_M), E or 1): output tile (BLOCK_M, BLOCK_N) of the program's
    rows of x; tiles past an expert's rows return without reading."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    first, count, w_ptr, w_up_ptr = _expert_rows(offsets_ptr, M, w_ptr, w_up_ptr, expert_stride, expert_stride_up,
                                                 EXPERTS, GATED)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    rows = first + offs_m
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x                                     # (BM, 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_end = tl.where(pid_m * BLOCK_M < count, K, 0)
    for k0 in range(0, k_end, BLOCK_K):
        mask_k = k0 + offs_k < K
        x = tl.load(x_rows + k0 + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0)   # (BM, BK)
        acc = _dot(x, dequant_tile(w_ptr, row_stride, offs_n, mask_n, k0, K, QTYPE, BLOCK_N, BLOCK_K), acc)
        if GATED:
            w_up = dequant_tile(w_up_ptr, row_stride_up, offs_n, mask_n, k0, K, QTYPE_UP, BLOCK_N, BLOCK_K)
            acc_up = _dot(x, w_up, acc_up)
    y = _finish(acc, acc_up, bias_ptr, offs_n, mask_n, GATED, HAS_BIAS, ACT)
    _store(out_ptr, y, rows, mask_m, offs_n, mask_n, N)


@cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_for(programs: int, k_steps: int, device: torch.device) -> int:
    """How many ways the GEMV splits K: 1 when ``programs`` (bands x active experts) fill the device's SMs
    :data:`PROGRAMS_PER_SM` times over, else enough splits to do so, each at least
    :data:`MIN_STEPS_PER_SPLIT` of the ``k_steps`` BLOCK_K steps. Always 1 off CUDA (the interpreter has
    no SMs to fill)."""
    if device.type != "cuda":
        return 1
    target = PROGRAMS_PER_SM * _sm_count(device)
    if programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, programs), k_steps // MIN_STEPS_PER_SPLIT))


def new_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised memory for outputs and partial sums (every element is written by a kernel)."""
    return torch.empty(shape, dtype=dtype, device=device)


def project(x: torch.Tensor, w: QuantTensor, *, bias: torch.Tensor | None = None, w_up: QuantTensor | None = None,
            act: str = "silu", offsets: torch.Tensor | None = None, split_k: int | None = None) -> torch.Tensor:
    """``x @ W^T (+ bias)``, or ``act(x Wg^T) * (x Wu^T)`` when ``w_up`` is given (``w`` is then the gate).

    x (..., K) of a dtype in :data:`DTYPES`; w (N, K), or stacked (E, N, K) with ``offsets`` (E + 1,)
    giving each expert's rows of x (M, K). Returns (..., N) in x's dtype. ``split_k`` forces the GEMV's
    K split (1: none); None chooses by :func:`split_for`. Bad arguments raise
    :class:`~oxide.errors.InvalidOptionError`; the values of ``offsets`` are trusted (ascending from 0 to M,
    as the reference requires): reading them here would cost a device synchronisation per call.
    The expert GEMM's grid has cdiv(M, BLOCK_M) row tiles for every expert, an upper bound; tiles past an
    expert's rows return at once.
    """
    experts = offsets is not None
    _check(x, w, w_up, act, bias, offsets)
    K = w.shape[-1]
    N = w.shape[-2]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)                                                                      # (M, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    out = new_buffer((M, N), x.dtype, x.device)
    if M == 0:
        return out.view(*lead, N)
    E = w.shape[0] if experts else 1
    data, data_up = w.data, None if w_up is None else w_up.data
    up = w if w_up is None else w_up
    common = dict(QTYPE=int(w.qtype), QTYPE_UP=int(up.qtype), GATED=w_up is not None, EXPERTS=experts,
                  HAS_BIAS=bias is not None, ACT=ACTIVATIONS[act])
    strides = (x2.stride(0), *_strides(w, experts), *_strides(up, experts))
    if M > GEMV_MAX_ROWS:
        block_m = min(64, max(16, triton.next_power_of_2(M)))
        grid = (triton.cdiv(N, GEMM_BLOCK_N), triton.cdiv(M, block_m), E)
        _gemm_kernel[grid](x2, data, data_up, bias, offsets, out, M, N, K, *strides, BLOCK_M=block_m,
                           BLOCK_N=GEMM_BLOCK_N, BLOCK_K=GEMM_BLOCK_K, num_warps=GEMM_WARPS, **common)
        return out.view(*lead, N)
    block_k = _gemv_block_k(w, w_up, K)
    k_steps = triton.cdiv(K, block_k)
    bands = triton.cdiv(N, GEMV_BLOCK_N)
    split = split_k if split_k is not None else split_for(bands * min(E, M), k_steps, x.device)
    if split < 1:
        raise InvalidOptionError(f"qmatmul: split_k must be at least 1, got {split_k}")
    steps = triton.cdiv(k_steps, min(split, k_steps))
    split = triton.cdiv(k_steps, steps)                                     # no split left without K steps
    part = new_buffer((split, 1 + (w_up is not None), M, N), torch.float32, x.device) if split > 1 else None
    _gemv_kernel[(bands, split, E)](x2, data, data_up, bias, offsets, out, part, M, N, K, *strides, steps,
                                    BLOCK_M=triton.next_power_of_2(M), BLOCK_N=GEMV_BLOCK_N, BLOCK_K=block_k,
                                    SPLIT=split, num_warps=GEMV_WARPS, **common)
    if split > 1:
        _reduce_kernel[(M, triton.cdiv(N, REDUCE_BLOCK_N))](
            part, bias, out, M, N, SPLIT=split, GATED=common["GATED"], HAS_BIAS=common["HAS_BIAS"],
            ACT=common["ACT"], BLOCK_N=REDUCE_BLOCK_N)
    return out.view(*lead, N)


def _strides(w: QuantTensor, experts: bool) -> tuple[int, int]:
    """Bytes from one row of w's blocks to the next, and from one expert's matrix to the next (0 without)."""
    return w.data.stride(-2), w.data.stride(0) if experts else 0


def _gemv_block_k(w: QuantTensor, w_up: QuantTensor | None, K: int) -> int:
    """GEMV_BLOCK_K, or K rounded up to a power of two when smaller (never below the types' scale group)."""
    group = max(GROUP[w.qtype], GROUP[w.qtype if w_up is None else w_up.qtype])
    return max(group, min(GEMV_BLOCK_K, triton.next_power_of_2(K)))


def _check(x: torch.Tensor, w: QuantTensor, w_up: QuantTensor | None, act: str, bias: torch.Tensor | None,
           offsets: torch.Tensor | None) -> None:
    """Raise InvalidOptionError naming the argument a call cannot be served with."""
    dims = 2 if offsets is None else 3
    for name, m in (("w", w), ("w_up", w_up)):
        if m is None:
            continue
        if not isinstance(m, QuantTensor) or m.qtype not in TYPES or len(m.shape) != dims:
            raise InvalidOptionError(f"qmatmul: {name} must be a {dims}-D QuantTensor of "
                                     f"{', '.join(t.name for t in sorted(TYPES))}; got {m!r}")
        if m.device != x.device or m.data.stride(-1) != 1:
            raise InvalidOptionError(f"qmatmul: {name} {m!r} must be on x's device ({x.device}), its rows contiguous")
    if w_up is not None and w_up.shape != w.shape:
        raise InvalidOptionError(f"qmatmul_gated: w_up {w_up!r} does not match w_gate {w!r} in shape")
    if x.dtype not in DTYPES:
        raise InvalidOptionError(f"qmatmul: x has dtype {x.dtype}; the Triton kernels take {DTYPES}")
    if x.shape[-1] != w.shape[-1]:
        raise InvalidOptionError(f"qmatmul: x has {x.shape[-1]} features but {w!r} takes {w.shape[-1]}")
    if act not in ACTIVATIONS:
        raise InvalidOptionError(f"qmatmul_gated: unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    if bias is not None and (bias.shape != (w.shape[-2],) or bias.device != x.device or not bias.is_contiguous()):
        raise InvalidOptionError(f"qmatmul: bias of shape {tuple(bias.shape)} on {bias.device} does not fit "
                                 f"{w.shape[-2]} outputs on {x.device}")
    if offsets is not None:
        if x.dim() != 2 or offsets.shape != (w.shape[0] + 1,) or offsets.dtype not in (torch.int32, torch.int64) \
                or offsets.device != x.device:
            raise InvalidOptionError(f"qmatmul_experts: x must be (M, K) and offsets an int32/int64 tensor of "
                                     f"{w.shape[0] + 1} entries on {x.device}; got x {tuple(x.shape)}, offsets "
                                     f"{offsets.dtype} {tuple(offsets.shape)} on {offsets.device}")
