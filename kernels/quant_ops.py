"""The quantized-matmul ops of :mod:`oxide.ops.reference` on the Triton kernels of :mod:`.quant_matmul`.

Each op keeps its reference's signature; ``serves_<op>(*probe)`` takes the probe the functional API
passes (the weight, or the (gate, up) pair, and the activation dtype) and declines what the kernels
do not read: dense weights, GGML types outside :data:`.quant_dequant.TYPES`, other activation dtypes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from oxide.quant import QuantTensor

from .quant_dequant import TYPES
from .quant_matmul import DTYPES, project


def _serves(w: object, dtype: torch.dtype, dims: int) -> bool:
    return (isinstance(w, QuantTensor) and w.qtype in TYPES and len(w.shape) == dims and dtype in DTYPES
            and w.data.stride(-1) == 1)


def _serves_pair(pair: Sequence[object], dtype: torch.dtype, dims: int) -> bool:
    gate, up = pair
    return _serves(gate, dtype, dims) and _serves(up, dtype, dims) and gate.shape == up.shape


def serves_qmatmul(w: object, dtype: torch.dtype) -> bool:
    """A 2-D QuantTensor of a type the kernels dequantize, with float32/float16/bfloat16 activations."""
    return _serves(w, dtype, 2)


def qmatmul(x: torch.Tensor, w: QuantTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(w).T (+ bias)``: (..., K) x (N, K) -> (..., N) (reference: ``qmatmul``)."""
    return project(x, w, bias=bias)


def serves_qmatmul_group(weights: Sequence[object], dtype: torch.dtype) -> bool:
    return all(serves_qmatmul(w, dtype) for w in weights)


def qmatmul_group(x: torch.Tensor, weights: Sequence[QuantTensor], biases: Sequence[torch.Tensor | None]
                  ) -> tuple[torch.Tensor, ...]:
    """``qmatmul(x, w, b)`` for each (w, b), one launch each (reference: ``qmatmul_group``)."""
    return tuple(project(x, w, bias=b) for w, b in zip(weights, biases, strict=True))


def serves_qmatmul_gated(pair: Sequence[object], dtype: torch.dtype) -> bool:
    """Gate and up both served by :func:`serves_qmatmul`, of one shape (their types may differ)."""
    return _serves_pair(pair, dtype, 2)


def qmatmul_gated(x: torch.Tensor, w_gate: QuantTensor, w_up: QuantTensor, act: str) -> torch.Tensor:
    """``act(x @ W_gate^T) * (x @ W_up^T)``, both matrices read by one program (reference: ``qmatmul_gated``)."""
    return project(x, w_gate, w_up=w_up, act=act)


def serves_qmatmul_experts(w: object, dtype: torch.dtype) -> bool:
    """A stacked (E, N, K) QuantTensor of a type the kernels dequantize."""
    return _serves(w, dtype, 3)


def qmatmul_experts(x: torch.Tensor, w: QuantTensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows ``offsets[e]:offsets[e + 1]`` of x through expert e of w (reference: ``qmatmul_experts``)."""
    return project(x, w, offsets=offsets)


def serves_qmatmul_experts_gated(pair: Sequence[object], dtype: torch.dtype) -> bool:
    return _serves_pair(pair, dtype, 3)


def qmatmul_experts_gated(x: torch.Tensor, w_gate: QuantTensor, w_up: QuantTensor, offsets: torch.Tensor,
                          act: str) -> torch.Tensor:
    """``act(x W_gate,e^T) * (x W_up,e^T)`` per row of expert e (reference: ``qmatmul_experts_gated``)."""
    return project(x, w_gate, w_up=w_up, act=act, offsets=offsets)
