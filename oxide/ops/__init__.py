"""The functional op API the models call. Each op dispatches on the device of its first tensor.

See :mod:`oxide.ops.reference` for what each op computes and :mod:`oxide.ops.dispatch` for how an
implementation is chosen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..processors import SamplingOptions
from . import cpu, cuda_kernels, reference, triton_kernels
from .cpu import composed as cpu_composed
from .cpu import layers as cpu_layers
from .cpu import quant as cpu_quant
from .dispatch import bind, register, resolve

_OPS = ("qmatmul", "qmatmul_group", "qmatmul_gated", "qmatmul_experts", "qmatmul_experts_gated", "embedding", "rms_norm", "add_rms_norm", "rope_cos_sin", "rope", "kv_store",
        "kv_store_rows", "attention", "attention_rows", "activation", "gated_activation", "add", "scale", "softcap", "argmax",
        "sample", "sample_filter")
for _op in _OPS:
    register(_op, "torch", getattr(reference, _op), priority=0)
# The compiled CPU core; each declines calls it does not serve. Probe: (weight, activation dtype).
register("qmatmul", "cpp", cpu_quant.qmatmul, device_types=("cpu",), priority=10, available=cpu.available,
         accepts=cpu_quant.serves, prepare=cpu_quant.LinearKernel)
register("qmatmul_group", "cpp", cpu_quant.qmatmul_group, device_types=("cpu",), priority=10,
         available=cpu.available, accepts=cpu_quant.serves_group, prepare=cpu_quant.GroupKernel)
register("qmatmul_gated", "cpp", cpu_composed.qmatmul_gated, device_types=("cpu",), priority=10,
         available=cpu.available, accepts=cpu_quant.serves_group, prepare=cpu_composed.GatedKernel)
register("qmatmul_experts", "cpp", cpu_composed.qmatmul_experts, device_types=("cpu",), priority=10,
         available=cpu.available, accepts=cpu_composed.serves_experts, prepare=cpu_composed.ExpertsKernel)
register("qmatmul_experts_gated", "cpp", cpu_composed.qmatmul_experts_gated, device_types=("cpu",), priority=10,
         available=cpu.available, accepts=cpu_composed.serves_experts_pair, prepare=cpu_composed.GatedExpertsKernel)
register("embedding", "cpp", cpu_quant.embedding, device_types=("cpu",), priority=10, available=cpu.available,
         accepts=cpu_quant.serves)
# The float32 layer ops of the compiled core. Probe: the dtypes of the call's tensors.
for _op in ("rms_norm", "add_rms_norm", "rope_cos_sin", "rope", "kv_store", "kv_store_rows", "attention", "attention_rows",
            "gated_activation", "add", "scale", "softcap", "argmax", "sample"):
    register(_op, "cpp", getattr(cpu_layers, _op), device_types=("cpu",), priority=10, available=cpu.available,
             accepts=cpu_layers.serves)

# The Triton kernels (oxide.kernels), imported on first use: see triton_kernels.
triton_kernels.register_all()
# The CUDA C++ kernels (oxide._cuda), loaded on first use: see cuda_kernels.
cuda_kernels.register_all()

attention_mask = reference.attention_mask


def qmatmul(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(w).T (+ bias)``: (..., K) x (N, K) -> (..., N)."""
    return resolve("qmatmul", x.device.type, w, x.dtype)(x, w, bias)


def qmatmul_gated(x: torch.Tensor, w_gate, w_up, act: str) -> torch.Tensor:
    """``act(x @ W_gate^T) * (x @ W_up^T)``: (..., K) -> (..., F)."""
    return resolve("qmatmul_gated", x.device.type, (w_gate, w_up), x.dtype)(x, w_gate, w_up, act)


def qmatmul_experts(x: torch.Tensor, w, offsets: torch.Tensor) -> torch.Tensor:
    """Rows ``offsets[e]:offsets[e + 1]`` of x (M, K) through expert e of the stacked w (E, N, K): (M, N)."""
    return resolve("qmatmul_experts", x.device.type, w, x.dtype)(x, w, offsets)


def qmatmul_experts_gated(x: torch.Tensor, w_gate, w_up, offsets: torch.Tensor, act: str) -> torch.Tensor:
    """``act(x W_gate,e^T) * (x W_up,e^T)`` for the rows of each expert e: (M, K) -> (M, F)."""
    return resolve("qmatmul_experts_gated", x.device.type, (w_gate, w_up), x.dtype)(x, w_gate, w_up, offsets, act)


def embedding(ids: torch.Tensor, w, dtype: torch.dtype) -> torch.Tensor:
    """Rows of the (possibly quantized) table ``w`` for ``ids``: (...) -> (..., K)."""
    return resolve("embedding", ids.device.type, w, dtype)(ids, w, dtype)


class Linear:
    """``qmatmul`` bound once to one weight (and bias): the implementation is chosen at model build.

    ``Linear(w, bias, device, dtype)(x)`` equals ``qmatmul(x, w, bias)`` for ``dtype`` activations.
    """

    __slots__ = ("weight", "bias", "impl")

    def __init__(self, weight, bias: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> None:
        self.weight, self.bias = weight, bias
        self.impl = bind("qmatmul", device.type, weight, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl(x, self.weight, self.bias)


class LinearGroup:
    """Several projections of one input (q, k, v; gate, up), bound once: ``group(x)`` returns
    ``tuple(qmatmul(x, w, b) for w, b in ...)``, as one call where the implementation fuses them."""

    __slots__ = ("weights", "biases", "impl")

    def __init__(self, weights: Sequence, biases: Sequence[torch.Tensor | None], device: torch.device,
                 dtype: torch.dtype) -> None:
        self.weights, self.biases = tuple(weights), tuple(biases)
        self.impl = bind("qmatmul_group", device.type, self.weights, dtype)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.impl(x, self.weights, self.biases)


class GatedLinear:
    """``qmatmul_gated`` bound once to a (gate, up) pair: ``GatedLinear(gate, up, act, device, dtype)(x)`` equals
    ``act(x @ gate^T) * (x @ up^T)``, one fused kernel where the implementation has one."""

    __slots__ = ("gate", "up", "act", "impl")

    def __init__(self, gate, up, act: str, device: torch.device, dtype: torch.dtype) -> None:
        self.gate, self.up, self.act = gate, up, act
        self.impl = bind("qmatmul_gated", device.type, (gate, up), dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.impl(x, self.gate, self.up, self.act)


class ExpertsLinear:
    """``qmatmul_experts`` bound once to a stacked (E, N, K) weight: ``(x, offsets) -> (M, N)``."""

    __slots__ = ("weight", "impl")

    def __init__(self, weight, device: torch.device, dtype: torch.dtype) -> None:
        self.weight = weight
        self.impl = bind("qmatmul_experts", device.type, weight, dtype)

    def __call__(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.impl(x, self.weight, offsets)


class GatedExpertsLinear:
    """``qmatmul_experts_gated`` bound once to stacked gate and up weights: ``(x, offsets) -> (M, F)``."""

    __slots__ = ("gate", "up", "act", "impl")

    def __init__(self, gate, up, act: str, device: torch.device, dtype: torch.dtype) -> None:
        self.gate, self.up, self.act = gate, up, act
        self.impl = bind("qmatmul_experts_gated", device.type, (gate, up), dtype)

    def __call__(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.impl(x, self.gate, self.up, offsets, self.act)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dim."""
    return resolve("rms_norm", x.device.type, x.dtype)(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum = x + residual`` and ``rms_norm(sum, weight, eps)``: returns ``(sum, normed)``."""
    return resolve("add_rms_norm", x.device.type, x.dtype, residual.dtype)(x, residual, weight, eps)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables of ``positions`` (T,): ``scale`` times cos and sin of ``positions[t] * inv_freq[i]``,
    (T, hd/2) each."""
    return resolve("rope_cos_sin", positions.device.type, inv_freq.dtype)(positions, inv_freq, scale)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, pairs: str = "half") -> torch.Tensor:
    """Rotary embedding of x: (B, H, T, hd) with cos/sin: (T, r/2), rotating its first r <= hd dims in
    ``"half"``-split (i, i + r/2) or ``"adjacent"`` (2i, 2i + 1) pairs."""
    return resolve("rope", x.device.type, x.dtype)(x, cos, sin, pairs=pairs)


def kv_store(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
             cache_pos: torch.Tensor) -> None:
    """Keys and values (1, Hkv, T, hd) into slots ``positions % slots`` of a (1, Hkv, slots, hd) cache."""
    resolve("kv_store", k.device.type, k.dtype, cache_k.dtype)(k, v, positions, cache_k, cache_v, cache_pos)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              *, scale: float, window: int = 0, softcap: float = 0.0, causal: bool = True,
              q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped-query attention with optional sliding window and score soft-capping; causal unless
    ``causal=False``, and within segments (``q_seg[t] == k_seg[s]``) when segment ids are given."""
    impl = resolve("attention", q.device.type, q.dtype, k.dtype, v.dtype)
    return impl(q, k, v, q_pos, k_pos, scale=scale, window=window, softcap=softcap, causal=causal, q_seg=q_seg,
                k_seg=k_seg)


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """``act(x)`` elementwise (``silu``, ``gelu``, ``gelu_pytorch_tanh``)."""
    return resolve("activation", x.device.type, x.dtype)(x, act)


def gated_activation(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """``act(gate) * up``."""
    return resolve("gated_activation", gate.device.type, gate.dtype, up.dtype)(gate, up, act)


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` (the residual add)."""
    return resolve("add", x.device.type, x.dtype, y.dtype)(x, y)


def scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x * factor``, the factor rounded to ``x.dtype``."""
    return resolve("scale", x.device.type, x.dtype)(x, factor)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``."""
    return resolve("softcap", x.device.type, x.dtype)(x, cap)


def argmax(x: torch.Tensor) -> int:
    """The index of the first largest value of the 1-D ``x``; a NaN counts as the largest."""
    return resolve("argmax", x.device.type, x.dtype)(x)


def sample(logits: torch.Tensor, counts: torch.Tensor | None, u: torch.Tensor, options: SamplingOptions
           ) -> torch.Tensor:
    """The next token id (0-d int64 on the logits' device) for logits (V,), penalty-window counts (V,) or
    None, and a uniform ``u`` (0-d), through the chain of ``options``."""
    return resolve("sample", logits.device.type, logits.dtype)(logits, counts, u, options)


def sample_filter(logits: torch.Tensor, counts: torch.Tensor | None, options: SamplingOptions) -> torch.Tensor:
    """The processed logits (V,) that :func:`sample` draws from; removed tokens are ``-inf``."""
    return resolve("sample_filter", logits.device.type, logits.dtype)(logits, counts, options)
