"""The Triton kernels of ``oxide.kernels``, registered beside their references and imported on first use.

Each entry of :data:`KERNELS` names the ``oxide.kernels`` module that defines a function with the op's
name and signature (and, optionally, ``serves_<op>(*probe) -> bool`` to decline calls it does not serve,
with the probe the functional API passes: for ``qmatmul`` the weight and the activation dtype).

- On a CUDA device whose compute capability Triton supports, the kernels rank above the reference and
  the compiled CPU core does not apply; ``OXIDE_IMPL=torch`` forces the reference.
- On the CPU they run only under Triton's interpreter (``TRITON_INTERPRET=1``) and only when asked for
  (``OXIDE_IMPL=triton``): the interpreter runs the same kernel source on CPU tensors, for testing, far
  slower than the compiled CPU core.
- ``import oxide`` imports no Triton; binding an op imports its kernel module, whose kernels Triton
  compiles at their first launch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import torch

from ..once import once
from .dispatch import register

NAME = "triton"
MIN_CAPABILITY = (7, 5)   # the oldest NVIDIA architecture (Turing) that Triton 3 compiles for

# op -> module of oxide.kernels that implements it
KERNELS: dict[str, str] = {
    "qmatmul": "quant_ops",
    "qmatmul_group": "quant_ops",
    "qmatmul_gated": "quant_ops",
    "qmatmul_experts": "quant_ops",
    "qmatmul_experts_gated": "quant_ops",
    "rope": "rope",
    "attention": "attention",
    "sample": "sampling",
    "sample_filter": "sampling",
}


@once
def importable() -> bool:
    """Whether the ``triton`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's interpreter is on: kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@once
def _cuda_capable() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= MIN_CAPABILITY


def available_on_cuda() -> bool:
    return importable() and _cuda_capable()


def available_on_cpu() -> bool:
    return importable() and interpreting()


def _module(op: str) -> Any:
    return importlib.import_module(f"oxide.kernels.{KERNELS[op]}")


def _function(op: str) -> Callable:
    return getattr(_module(op), op)


def _lazy(op: str) -> Callable:
    """The kernel function of ``op``, imported at its first call (the per-call path, :func:`dispatch.resolve`)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return _function(op)(*args, **kwargs)

    call.__name__ = f"triton_{op}"
    return call


def _accepts(op: str) -> Callable[..., bool]:
    def accepts(*probe: Any) -> bool:
        serves = getattr(_module(op), f"serves_{op}", None)
        return serves is None or bool(serves(*probe))

    return accepts


def _prepare(op: str) -> Callable[..., Callable]:
    """Bind time: the kernel function itself, no lazy indirection in the hot loop."""
    return lambda *probe: _function(op)


def register_all() -> None:
    for op in KERNELS:
        common = dict(accepts=_accepts(op), prepare=_prepare(op))
        register(op, NAME, _lazy(op), device_types=("cuda",), priority=20, available=available_on_cuda, **common)
        register(op, NAME, _lazy(op), device_types=("cpu",), priority=-10, available=available_on_cpu, **common)
