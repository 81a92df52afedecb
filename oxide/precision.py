"""Precision policy: which dtype computes, which stores the KV cache, and why.

Policy: on CUDA bf16 where the GPU supports it, else f16; on MPS f16; on CPU f32 (CPU bf16/f16
matmuls are slow in PyTorch and lose accuracy against the references). Norm statistics and
softmax are always computed in f32 by the ops. The KV cache uses the compute dtype unless told
otherwise. ``OXIDE_DTYPE`` (or the ``dtype`` argument) overrides the compute dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import InvalidOptionError

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "f32": torch.float32, "float32": torch.float32, "fp32": torch.float32,
    "f16": torch.float16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class PrecisionPolicy:
    """The dtypes a model runs with, each with the reason it was chosen."""

    compute_dtype: torch.dtype
    compute_reason: str
    kv_cache_dtype: torch.dtype
    kv_cache_reason: str


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """``"bf16"``, ``"float16"``, ``torch.float32``... -> a torch dtype; anything else is an error."""
    if isinstance(value, torch.dtype):
        if value in _DTYPE_NAMES.values():
            return value
    elif isinstance(value, str) and value.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[value.lower()]
    raise InvalidOptionError(f"dtype {value!r} is not supported; use one of f32, f16, bf16")


def choose_precision(device: torch.device, dtype: str | torch.dtype | None = None,
                     kv_cache_dtype: str | torch.dtype | None = None) -> PrecisionPolicy:
    """Apply the policy in this module's docstring."""
    requested = dtype if dtype is not None else os.environ.get("OXIDE_DTYPE") or None
    if requested is not None:
        compute = parse_dtype(requested)
        reason = "requested explicitly" if dtype is not None else "from OXIDE_DTYPE"
    elif device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            compute, reason = torch.bfloat16, "CUDA GPU supports bf16"
        else:
            compute, reason = torch.float16, "CUDA GPU without bf16 support"
    elif device.type == "mps":
        compute, reason = torch.float16, "MPS: f16 is its fast float type"
    else:
        compute, reason = torch.float32, "CPU: f32 is fastest and exact against the references"
    if kv_cache_dtype is not None:
        kv, kv_reason = parse_dtype(kv_cache_dtype), "requested explicitly"
    else:
        kv, kv_reason = compute, "same as the compute dtype"
    return PrecisionPolicy(compute, reason, kv, kv_reason)
