"""The fused projection ops on the CPU, as the compiled core's own calls in sequence.

The GPU kernels fuse the gated MLP's two projections with the activation, and run every expert of a
mixture in one launch; on the CPU the same ops are the GEMV of a group (one call for gate and up) and the
compiled activation, or one kernel per expert with rows. Models bind these ops once (``prepare``), so a
decode step costs what the separate calls cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...quant import QuantTensor
from . import layers
from .quant import GroupKernel, LinearKernel, serves


def serves_experts(w: object, dtype: torch.dtype) -> bool:
    """Whether ``w`` is a stacked (E, N, K) tensor whose experts the GEMV kernels take."""
    return isinstance(w, QuantTensor) and len(w.shape) == 3 and serves(w.part(0), dtype)


def serves_experts_pair(weights: Sequence[object], dtype: torch.dtype) -> bool:
    return all(serves_experts(w, dtype) for w in weights)


class GatedKernel:
    """``qmatmul_gated`` prepared for one (gate, up) pair: one group GEMV, then the activation."""

    def __init__(self, weights: Sequence[QuantTensor], dtype: torch.dtype = torch.float32) -> None:
        self.group = GroupKernel(weights, dtype)

    def __call__(self, x: torch.Tensor, w_gate: QuantTensor, w_up: QuantTensor, act: str) -> torch.Tensor:
        gate, up = self.group(x, (w_gate, w_up), (None, None))
        return layers.gated_activation(gate, up, act)


class ExpertsKernel:
    """``qmatmul_experts`` prepared for one stacked tensor: the kernel of each expert with rows."""

    def __init__(self, w: QuantTensor, dtype: torch.dtype = torch.float32) -> None:
        self.weight = w
        self.parts = [LinearKernel(w.part(e), dtype) for e in range(w.shape[0])]

    def __call__(self, x: torch.Tensor, w: QuantTensor, offsets: torch.Tensor) -> torch.Tensor:
        if w is not self.weight:
            raise ValueError("this qmatmul_experts kernel was prepared for another weight")
        out = x.new_empty(x.shape[0], w.shape[1])                                  # (M, N)
        for kernel, start, stop in _rows_per_expert(self.parts, offsets):
            out[start:stop] = kernel(x[start:stop], kernel.group.weights[0])
        return out


class GatedExpertsKernel:
    """``qmatmul_experts_gated`` prepared for one (gate, up) pair of stacked tensors."""

    def __init__(self, weights: Sequence[QuantTensor], dtype: torch.dtype = torch.float32) -> None:
        self.weights = tuple(weights)
        gate, up = self.weights
        self.parts = [GatedKernel((gate.part(e), up.part(e)), dtype) for e in range(gate.shape[0])]

    def __call__(self, x: torch.Tensor, w_gate: QuantTensor, w_up: QuantTensor, offsets: torch.Tensor,
                 act: str) -> torch.Tensor:
        if (w_gate, w_up) != self.weights:
            raise ValueError("this qmatmul_experts_gated kernel was prepared for other weights")
        out = x.new_empty(x.shape[0], w_gate.shape[1])                             # (M, F)
        for kernel, start, stop in _rows_per_expert(self.parts, offsets):
            out[start:stop] = kernel(x[start:stop], *kernel.group.weights, act)
        return out


def _rows_per_expert(parts: list, offsets: torch.Tensor):
    """(kernel, start, stop) for each expert with at least one row."""
    bounds = offsets.tolist()
    return [(part, bounds[e], bounds[e + 1]) for e, part in enumerate(parts) if bounds[e + 1] > bounds[e]]


def qmatmul_gated(x: torch.Tensor, w_gate: QuantTensor, w_up: QuantTensor, act: str) -> torch.Tensor:
    return GatedKernel((w_gate, w_up))(x, w_gate, w_up, act)


def qmatmul_experts(x: torch.Tensor, w: QuantTensor, offsets: torch.Tensor) -> torch.Tensor:
    return ExpertsKernel(w)(x, w, offsets)


def qmatmul_experts_gated(x: torch.Tensor, w_gate: QuantTensor, w_up: QuantTensor, offsets: torch.Tensor,
                          act: str) -> torch.Tensor:
    return GatedExpertsKernel((w_gate, w_up))(x, w_gate, w_up, offsets, act)

