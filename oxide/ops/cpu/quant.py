"""Quantized matmul and embedding rows on the CPU through ``oxide._cpu``, reading GGML blocks in place.

Same signatures as :func:`oxide.ops.reference.qmatmul` and :func:`oxide.ops.reference.embedding`,
float32 activations and results, and no dense copy of any weight is kept:

- up to :data:`GEMV_MAX_ROWS` activation rows (decode, a small batch of sequences): the GEMV
  kernel reads each weight block once and dots it with every row; a group of matrices that share
  their input (q, k and v; gate and up) goes through one call;
- more rows (prefill): a band of weight rows is dequantized into a reused float32 buffer that stays
  in cache, and torch's sgemm multiplies it; the band is then overwritten by the next one.

The GEMV of the AVX-512 VNNI build rounds the activations to int8 per 32 values, as llama.cpp's CPU
backend does (:func:`oxide.ops.reference.q8_activations`), and serves any number of rows (16 per pass
over the weights; a 600-token prefill of Gemma 3 270M took 2.4 s against 3.4 s banded). A row's outputs
then never depend on the rows beside it: a token computes alike in a prefill chunk, alone after a
prefix-cache hit, or in a batch of sequences. An output is discontinuous in its input where a value
crosses a rounding boundary, so a difference of one float32 rounding anywhere upstream could otherwise
grow to the size of the int8 rounding. The other builds take float32 activations and band above
:data:`GEMV_MAX_ROWS` rows. :func:`activations_as_computed` says which, for a comparison with the reference.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from ...once import once
from ...quant import QuantTensor
from .. import reference
from . import extension, threads

GEMV_MAX_ROWS = 16              # above this, dequantize a band and use sgemm (crossover: benchmarks/RESULTS.md)
BAND_ELEMENTS = 1 << 20         # weights per dequantized band: 4 MiB of float32


def _rounds_activations() -> bool:
    """Whether the instruction set in use rounds activations to int8 (and so takes every row count)."""
    return extension().activations() == "q8_0"


def activations_as_computed(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., K) as :func:`qmatmul` computes with it on this machine: the int8-rounded form
    (:func:`oxide.ops.reference.q8_activations`) where the instruction set in use rounds activations, else
    ``x`` itself; ``qmatmul(x, w)`` equals ``reference.qmatmul`` of this up to float32 summation."""
    return reference.q8_activations(x) if _rounds_activations() else x


def serves(w: object, dtype: torch.dtype) -> bool:
    """Whether the kernels take this weight with ``dtype`` activations (else the reference does)."""
    return (isinstance(w, QuantTensor) and w.device.type == "cpu" and len(w.shape) == 2 and dtype == torch.float32
            and int(w.qtype) in _quant_types() and w.data.is_contiguous())


def serves_group(weights: Sequence[object], dtype: torch.dtype) -> bool:
    """Whether the kernels take every weight of the group (and so the group as one call)."""
    return all(serves(w, dtype) for w in weights) and len({w.shape[1] for w in weights}) == 1


class GroupKernel:
    """``qmatmul_group`` prepared for one group of weights sharing their input (q, k, v; gate, up).

    The C++ plan (types, addresses, sizes, biases) is built once, so a decode step pays one call and one
    output allocation for the group: matrix j's outputs are columns of one (..., sum N) tensor, returned
    as split views. Built by :func:`oxide.ops.dispatch.bind` (``prepare``) from the bind probe, the
    weights and the activation dtype (float32, the only one :func:`serves_group` accepts); call it with
    those weights only.
    """

    def __init__(self, weights: Sequence[QuantTensor], dtype: torch.dtype = torch.float32) -> None:
        self.weights = tuple(weights)
        self.K = self.weights[0].shape[1]
        self.widths = tuple(w.shape[0] for w in self.weights)
        self._biases: Sequence[torch.Tensor | None] | None = None   # the biases the plan was built with
        self._kept: tuple[torch.Tensor | None, ...] = ()              # their float32 copies, kept alive
        self._plan = None

    def __call__(self, x: torch.Tensor, weights: Sequence[QuantTensor], biases: Sequence[torch.Tensor | None]
                 ) -> tuple[torch.Tensor, ...]:
        if weights is not self.weights and any(a is not b for a, b in zip(weights, self.weights, strict=True)):
            raise ValueError("this qmatmul kernel was prepared for other weights")
        K = self.K
        if x.shape[-1] != K:
            raise ValueError(f"qmatmul: x has {x.shape[-1]} features but {self.weights[0]!r} takes {K}")
        if biases is not self._biases:
            self._build(biases)
        x2 = x.reshape(-1, K)                                                  # (M, K)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        M, lead = x2.shape[0], x.shape[:-1]
        if M > GEMV_MAX_ROWS and not _rounds_activations():
            return tuple(_banded(x2, w, b).view(*lead, w.shape[0]) for w, b in zip(self.weights, self._kept))
        out = torch.empty((*lead, self._plan.width), dtype=torch.float32)    # (..., sum N)
        extension().gemv(self._plan, x2.data_ptr(), M, x2.stride(0), out.data_ptr(), self._plan.width, threads())
        return (out,) if len(self.widths) == 1 else out.split(self.widths, -1)

    def _build(self, biases: Sequence[torch.Tensor | None]) -> None:
        kept = tuple(None if b is None else b.to(torch.float32).contiguous() for b in biases)
        specs = [(int(w.qtype), w.data.data_ptr(), w.shape[0], w.data.shape[-1], 0 if b is None else b.data_ptr())
                 for w, b in zip(self.weights, kept, strict=True)]
        self._plan = extension().GemvPlan(specs, self.K)
        self._biases, self._kept = biases, kept


class LinearKernel:
    """``qmatmul`` prepared for one weight: a :class:`GroupKernel` of one."""

    def __init__(self, weight: QuantTensor, dtype: torch.dtype = torch.float32) -> None:
        self.group = GroupKernel((weight,), dtype)
        self._bias: torch.Tensor | None = None
        self._biases: tuple[torch.Tensor | None, ...] = (None,)

    def __call__(self, x: torch.Tensor, w: QuantTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if w is not self.group.weights[0]:
            raise ValueError("this qmatmul kernel was prepared for another weight")
        if bias is not self._bias:
            self._bias, self._biases = bias, (bias,)
        return self.group(x, self.group.weights, self._biases)[0]


def qmatmul(x: torch.Tensor, w: QuantTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(w).T (+ bias)``: (..., K) x (N, K) -> (..., N), float32 (prepares a kernel per call;
    models bind a :class:`LinearKernel` once instead)."""
    return LinearKernel(w)(x, w, bias)


def qmatmul_group(x: torch.Tensor, weights: Sequence[QuantTensor], biases: Sequence[torch.Tensor | None]
                  ) -> tuple[torch.Tensor, ...]:
    """``qmatmul(x, w, b)`` for each (w, b) of a group sharing the input (q, k, v; gate, up), in one GEMV
    call that reads x once and forks the threads once (prepares a kernel per call, as :func:`qmatmul`)."""
    weights = tuple(weights)
    return GroupKernel(weights)(x, weights, biases)


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


def _banded(x2: torch.Tensor, w: QuantTensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 @ dequantize(w).T (+ bias)`` for many rows: (M, K) -> (M, N), through dequantized bands."""
    out = torch.empty((x2.shape[0], w.shape[0]), dtype=torch.float32)                # (M, N)
    _banded_matmul(x2, w, out)
    if bias is not None:
        out += bias
    return out


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


@once
def _quant_types() -> frozenset[int]:
    return frozenset(extension().quant_types())
