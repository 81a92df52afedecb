"""The functional op API the models call. Each op dispatches on the device of its first tensor.

See :mod:`oxide.ops.reference` for what each op computes and :mod:`oxide.ops.dispatch` for how an
implementation is chosen.
"""

from __future__ import annotations

import torch

from . import reference
from .dispatch import register, resolve

_OPS = ("qmatmul", "embedding", "rms_norm", "rope", "attention", "gated_activation", "softcap")
for _op in _OPS:
    register(_op, "torch", getattr(reference, _op), priority=0)

rope_cos_sin = reference.rope_cos_sin
attention_mask = reference.attention_mask


def qmatmul(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(w).T (+ bias)``: (..., K) x (N, K) -> (..., N)."""
    return resolve("qmatmul", x.device.type)(x, w, bias)


def embedding(ids: torch.Tensor, w, dtype: torch.dtype) -> torch.Tensor:
    """Rows of the (possibly quantized) table ``w`` for ``ids``: (...) -> (..., K)."""
    return resolve("embedding", ids.device.type)(ids, w, dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim."""
    return resolve("rms_norm", x.device.type)(x, weight, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary embedding of x: (B, H, T, hd) with cos/sin: (T, hd/2)."""
    return resolve("rope", x.device.type)(x, cos, sin)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              *, scale: float, window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """Causal grouped-query attention with optional sliding window and score soft-capping."""
    return resolve("attention", q.device.type)(q, k, v, q_pos, k_pos, scale=scale, window=window, softcap=softcap)


def gated_activation(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """``act(gate) * up``."""
    return resolve("gated_activation", gate.device.type)(gate, up, act)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``."""
    return resolve("softcap", x.device.type)(x, cap)
