"""The CUDA C++ kernels (``oxide._cuda``, built from ``csrc/cuda``), registered as ``cuda`` for CUDA tensors.

They rank above the Triton kernels (priority 30 against 20) where they are available: ``oxide._cuda`` imports
(it is built only where torch has CUDA and nvcc was found) and a CUDA device of compute capability 8.0 or
later exists (the build targets sm_80 and sm_90, plus PTX for newer GPUs). ``import oxide`` imports no
CUDA: the extension is loaded when an op first asks whether it is available.

- ``qmatmul``: the GEMV of csrc/cuda/quant_gemv.cu, for weights of the types it reads (Q4_0, Q8_0, Q2_K..Q6_K)
  stored contiguously at an address the type's loads allow; it declines other weights. A call with more than
  :data:`GEMV_MAX_ROWS` activation rows (prefill) goes to the next implementation.
- ``sample``: csrc/cuda/sample.cu, the whole sampling chain in one launch; the chosen id stays on the device.

The wrappers check devices, dtypes, shapes and contiguity (raising :class:`~oxide.errors.InvalidOptionError`)
before any address reaches C++, and launch on the current stream of the tensors' device.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from types import ModuleType
from typing import Any

import torch

from ..errors import InvalidOptionError, KernelUnavailableError
from ..once import once
from ..quant import QuantTensor
from .dispatch import register, resolve_after

NAME = "cuda"
PRIORITY = 30                 # above Triton (20)
MIN_CAPABILITY = (8, 0)       # the oldest architecture the build has code for
GEMV_MAX_ROWS = 8
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_X_ALIGN = 16                 # bytes: activations are read 128 bits at a time


@once
def _load() -> tuple[ModuleType | None, str]:
    try:
        from .. import _cuda
    except ImportError as e:
        return None, f"the CUDA kernels are not built ({e}); reinstall oxide with torch+CUDA and nvcc present"
    return _cuda, ""


@once
def _device_ok() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= MIN_CAPABILITY


def available() -> bool:
    """Whether ``oxide._cuda`` imports and a CUDA device it has code for exists."""
    return _load()[0] is not None and _device_ok()


def status() -> str:
    """One line for ``oxide info``: whether the CUDA kernels run, and why not."""
    module, why = _load()
    if module is None:
        return f"unavailable ({why})"
    if not _device_ok():
        return f"unavailable (no CUDA device of compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]})"
    return "oxide._cuda"


def extension() -> ModuleType:
    """The loaded ``oxide._cuda`` (raises :class:`KernelUnavailableError` when it is not built)."""
    module, why = _load()
    if module is None:
        raise KernelUnavailableError(why)
    return module


@once
def _weight_alignment() -> dict[int, int]:
    """GGML type id -> the byte alignment the GEMV needs of its weights."""
    return dict(extension().gemv_types())


def serves_qmatmul(w: object, dtype: torch.dtype) -> bool:
    """Whether the GEMV takes this weight with ``dtype`` activations (else the next implementation does)."""
    if not (isinstance(w, QuantTensor) and w.device.type == "cuda" and len(w.shape) == 2 and dtype in _DTYPE_CODES
            and w.data.is_contiguous()):
        return False
    align = _weight_alignment().get(int(w.qtype))
    return align is not None and w.data.data_ptr() % align == 0


def qmatmul(x: torch.Tensor, w: QuantTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(w).T (+ bias)``: (..., K) x (N, K) -> (..., N) in ``x.dtype``, float32 accumulation
    (:func:`oxide.ops.reference.qmatmul`); more than :data:`GEMV_MAX_ROWS` rows go to the next implementation."""
    if not isinstance(w, QuantTensor) or len(w.shape) != 2:
        raise InvalidOptionError(f"qmatmul (cuda): w must be a 2-D QuantTensor, got {w!r}")
    N, K = w.shape
    _check(x, "x", w.device, tuple(_DTYPE_CODES))
    if x.shape[-1] != K:
        raise InvalidOptionError(f"qmatmul (cuda): x has {x.shape[-1]} features but {w!r} takes {K}")
    if not serves_qmatmul(w, x.dtype):
        raise InvalidOptionError(f"qmatmul (cuda): no GEMV for {w!r} (type, layout or alignment); "
                                 f"serves_qmatmul declines it")
    x2 = x.reshape(-1, K)                                                         # (M, K)
    M = x2.shape[0]
    if M == 0 or M > GEMV_MAX_ROWS:
        return resolve_after("qmatmul", NAME, x.device.type, w, x.dtype)(x, w, bias)
    x2 = _aligned_rows(x2)
    b = None
    if bias is not None:
        _check(bias, "bias", w.device, (bias.dtype,))
        if bias.shape != (N,):
            raise InvalidOptionError(f"qmatmul (cuda): bias has shape {tuple(bias.shape)}; expected ({N},)")
        b = bias.to(x.dtype).contiguous()                                         # (N,)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)                    # (M, N)
    with _on(x.device) as stream:
        extension().quant_gemv(int(w.qtype), w.data.data_ptr(), N, K, w.data.shape[-1], x2.data_ptr(), M,
                               x2.stride(0), _DTYPE_CODES[x.dtype], 0 if b is None else b.data_ptr(),
                               out.data_ptr(), N, stream)
    return out.view(*x.shape[:-1], N)


def sample(logits: torch.Tensor, counts: torch.Tensor | None, u: torch.Tensor, options: Any) -> torch.Tensor:
    """The sampled id of ``logits`` (V,) float32, as a 0-d int64 tensor on their device.

    ``counts`` (V,) int32: occurrences of each id in the penalty window (None: no penalties); ``u``: a
    float32 uniform in [0, 1) on the device; ``options``: an :class:`oxide.SamplingOptions` (its temperature,
    top_k, top_p, min_p, repeat_penalty, frequency_penalty, presence_penalty). Semantics: oxide.sampling's
    chain and draw, as csrc/cuda/sample.cu states them.
    """
    _check(logits, "logits", logits.device, (torch.float32,))
    if logits.dim() != 1 or not logits.is_contiguous():
        raise InvalidOptionError(f"sample (cuda): logits must be 1-D and contiguous, got shape {tuple(logits.shape)}")
    V = logits.shape[0]
    if counts is not None:
        _check(counts, "counts", logits.device, (torch.int32,))
        if counts.shape != (V,) or not counts.is_contiguous():
            raise InvalidOptionError(f"sample (cuda): counts must be contiguous of shape ({V},), "
                                     f"got {tuple(counts.shape)}")
    _check(u, "u", logits.device, (torch.float32,))
    if u.numel() != 1:
        raise InvalidOptionError(f"sample (cuda): u must hold one number, got shape {tuple(u.shape)}")
    out = torch.empty((), dtype=torch.int64, device=logits.device)
    with _on(logits.device) as stream:
        extension().sample(logits.data_ptr(), 0 if counts is None else counts.data_ptr(), u.data_ptr(),
                           out.data_ptr(), V, float(options.temperature), int(options.top_k), float(options.top_p),
                           float(options.min_p), float(options.repeat_penalty), float(options.frequency_penalty),
                           float(options.presence_penalty), stream)
    return out


def _check(t: object, name: str, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise InvalidOptionError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda" or t.device != device:
        raise InvalidOptionError(f"{name} is on {t.device}; the CUDA kernels need it on {device} (a CUDA device)")
    if t.dtype not in dtypes:
        raise InvalidOptionError(f"{name} has dtype {t.dtype}; expected {' or '.join(map(str, dtypes))}")


def _aligned_rows(x2: torch.Tensor) -> torch.Tensor:
    """``x2`` (M, K) with unit column stride and 16-byte aligned rows, copied only when it has not."""
    size = x2.element_size()
    if x2.stride(-1) == 1 and x2.data_ptr() % _X_ALIGN == 0 and (x2.stride(0) * size) % _X_ALIGN == 0:
        return x2
    copy = x2.contiguous()
    return copy if copy is not x2 and copy.data_ptr() % _X_ALIGN == 0 else x2.clone()


@contextmanager
def _on(device: torch.device) -> Iterator[int]:
    """Make ``device`` current (if it is not) and give its current stream, as an integer, for a launch."""
    switch = device.index is not None and device.index != torch.cuda.current_device()
    with torch.cuda.device(device) if switch else nullcontext():
        yield torch.cuda.current_stream(device).cuda_stream


def register_all() -> None:
    register("qmatmul", NAME, qmatmul, device_types=("cuda",), priority=PRIORITY, available=available,
             accepts=serves_qmatmul)
    # The functional op and reference of ``sample`` come from another change; the registration is by name.
    register("sample", NAME, sample, device_types=("cuda",), priority=PRIORITY, available=available)
