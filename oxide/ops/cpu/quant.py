"""Quantized matmul and embedding rows on the CPU through ``oxide._cpu``, reading GGML blocks in place.

Same signatures as :func:`oxide.ops.reference.qmatmul` and :func:`oxide.ops.reference.embedding`,
float32 activations and results, and no dense copy of any weight is kept:

- up to :data:`GEMV_MAX_ROWS` activation rows (decode, a small batch of sequences): the GEMV
  kernel reads each weight block once and dots it with every row; a group of matrices that share
  their input (q, k and v; gate and up) goes through one call;
- more rows (prefill): a band of weight rows is dequantized into a reused float32 buffer that stays
  in cache, and torch's sgemm multiplies it; the band is then overwritten by the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache

import torch

from ...quant import QuantTensor
from . import extension, threads

GEMV_MAX_ROWS = 8               # above this, dequantize a band and use sgemm (see benchmarks/RESULTS.md)
BAND_ELEMENTS = 1 << 20         # weights per dequantized band: 4 MiB of float32


def serves(w: object, dtype: torch.dtype) -> bool:
    """Whether the kernels take this weight with ``dtype`` activations (else the reference does)."""
    return (isinstance(w, QuantTensor) and w.device.type == "cpu" and len(w.shape) == 2 and dtype == torch.float32
            and int(w.qtype) in _quant_types() and w.data.is_contiguous())


def qmatmul(x: torch.Tensor, w: QuantTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(w).T (+ bias)``: (..., K) x (N, K) -> (..., N), float32."""
    return qmatmul_group(x, (w,), (bias,))[0]


def serves_group(weights: Sequence[object], dtype: torch.dtype) -> bool:
    """Whether the kernels take every weight of the group (and so the group as one call)."""
    return all(serves(w, dtype) for w in weights) and len({w.shape[1] for w in weights}) == 1


def qmatmul_group(x: torch.Tensor, weights: Sequence[QuantTensor], biases: Sequence[torch.Tensor | None]
                  ) -> tuple[torch.Tensor, ...]:
    """``qmatmul(x, w, b)`` for each (w, b) of a group sharing the input (q, k, v; gate, up): one GEMV call
    reads x once and forks the threads once for the group."""
    K = weights[0].shape[1]
    if x.shape[-1] != K:
        raise ValueError(f"qmatmul: x has {x.shape[-1]} features but {weights[0]!r} takes {K}")
    x2 = x.reshape(-1, K)                                                      # (M, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    outs = tuple(torch.empty((M, w.shape[0]), dtype=torch.float32) for w in weights)   # (M, N_j) each
    biases = tuple(None if b is None else b.to(torch.float32).contiguous() for b in biases)
    if M <= GEMV_MAX_ROWS:
        specs = [(int(w.qtype), w.data.data_ptr(), w.shape[0], w.data.shape[-1], out.data_ptr(), w.shape[0],
                  0 if b is None else b.data_ptr()) for w, out, b in zip(weights, outs, biases)]
        extension().qmatmul(specs, x2.data_ptr(), M, K, x2.stride(0), threads())
    else:
        for w, out, b in zip(weights, outs, biases):
            _banded_matmul(x2, w, out)
            if b is not None:
                out += b
    return tuple(out.view(*x.shape[:-1], out.shape[1]) for out in outs)


def embedding(ids: torch.Tensor, w: QuantTensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``w[ids]`` dequantized to float32: (...) -> (..., K)."""
    rows, K = w.shape
    flat = ids.reshape(-1).to(torch.int64).contiguous()                        # (R,)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= rows):
        raise IndexError(f"embedding: ids must lie in [0, {rows}) for {w!r}")
    out = torch.empty((flat.numel(), K), dtype=torch.float32)                  # (R, K)
    extension().dequantize_rows(int(w.qtype), w.data.data_ptr(), flat.data_ptr(), flat.numel(), K,
                                w.data.shape[-1], out.data_ptr(), K, threads())
    return out.view(*ids.shape, K)


def _banded_matmul(x2: torch.Tensor, w: QuantTensor, out: torch.Tensor) -> None:
    N, K = w.shape
    row_bytes = w.data.shape[-1]
    band_rows = min(N, max(1, BAND_ELEMENTS // K))
    band = _band_buffer(band_rows * K)
    base = w.data.data_ptr()
    for n0 in range(0, N, band_rows):
        n = min(band_rows, N - n0)
        panel = band[: n * K].view(n, K)                                       # (n, K)
        extension().dequantize_rows(int(w.qtype), base + n0 * row_bytes, 0, n, K, row_bytes, panel.data_ptr(), K,
                                    threads())
        if n == N:
            torch.mm(x2, panel.t(), out=out)
        else:
            out[:, n0:n0 + n] = torch.mm(x2, panel.t())


_local = threading.local()


def _band_buffer(elements: int) -> torch.Tensor:
    """This thread's float32 band buffer, grown as needed and reused (no page faults per call)."""
    buffer = getattr(_local, "band", None)
    if buffer is None or buffer.numel() < elements:
        buffer = _local.band = torch.empty(elements, dtype=torch.float32)
    return buffer


@cache
def _quant_types() -> frozenset[int]:
    return frozenset(extension().quant_types())
