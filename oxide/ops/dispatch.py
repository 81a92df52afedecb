"""One registry of implementations per op, chosen by device type, availability and the call itself.

Implementations register with a name (``torch``, ``triton``, ``cuda``, ``cpp``), the device types
they serve, a priority, an availability check and, optionally, ``accepts``: a predicate over a
probe of the call (for ``qmatmul``: the weight and the activation dtype) that lets a fast path
decline what it does not serve (a quant type it lacks, an odd shape); the next implementation by
priority then takes the call.

:func:`bind` makes that choice once, where a model is built, and returns the chosen function for
the hot loop; :func:`resolve` is the per-call path of the functional API (candidates cached per
op and device type). ``OXIDE_IMPL=name`` asks for one implementation
explicitly: if it is not available that is an error, not a fallback. Calls it declines, and ops it does
not implement while it implements others on that device (the Triton kernels cover the matmuls, RoPE,
attention and sampling, not the residual add), go to the reference (logged at debug level), so that a
model still runs; a name that implements nothing on the device is an error.

Thread-safe: registration and the first resolution of an (op, device) pair take one lock, so the ranked
candidates (and the availability checks that load an extension) are built once; a resolved pair is then
read without it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import KernelUnavailableError
from ..log import get_logger

log = get_logger("ops")

REFERENCE = "torch"


@dataclass(frozen=True)
class Implementation:
    name: str
    fn: Callable
    device_types: frozenset[str]
    priority: int
    available: Callable[[], bool]
    accepts: Callable[..., bool] | None = None   # None: serves every call
    prepare: Callable[..., Callable] | None = None   # bind-time specialisation to the probe


_IMPLS: dict[str, list[Implementation]] = {}
_RESOLVED: dict[tuple[str, str], list[Implementation]] = {}   # ranked candidates per (op, device)
_LOCK = threading.RLock()   # guards _IMPLS and filling _RESOLVED; reentrant: an availability check may register


def register(op: str, name: str, fn: Callable, *, device_types: tuple[str, ...] = ("cpu", "cuda", "mps"),
             priority: int = 0, available: Callable[[], bool] = lambda: True,
             accepts: Callable[..., bool] | None = None, prepare: Callable[..., Callable] | None = None) -> None:
    """Add an implementation of ``op``; resolution caches are cleared.

    ``prepare(*probe)``, if given, returns a function specialised to the probed call (for ``qmatmul``:
    one weight, its kernel plan built once); :func:`bind` hands that out instead of ``fn``, and it may
    then be called only for what was probed.
    """
    with _LOCK:
        _IMPLS.setdefault(op, []).append(
            Implementation(name, fn, frozenset(device_types), priority, available, accepts, prepare))
        _RESOLVED.clear()


def implementations(op: str) -> list[str]:
    return [impl.name for impl in _IMPLS.get(op, [])]


def resolve(op: str, device_type: str, *probe: Any) -> Callable:
    """The function that runs ``op`` on ``device_type`` for a call described by ``probe``.

    The ranked candidates are cached per (op, device type); only their ``accepts`` run per call.
    Models bind once instead (:func:`bind`, :class:`oxide.ops.bound.LayerOps`).
    """
    key = (op, device_type)
    candidates = _RESOLVED.get(key)
    if candidates is None:
        with _LOCK:
            candidates = _RESOLVED.get(key)
            if candidates is None:
                candidates = _RESOLVED[key] = _candidates(op, device_type, _requested())
    return _first_accepting(op, device_type, candidates, probe).fn


def bind(op: str, device_type: str, *probe: Any) -> Callable:
    """Choose the implementation of ``op`` for calls like ``probe`` once; the caller keeps the function
    (specialised to the probe where the implementation prepares one)."""
    impl = _first_accepting(op, device_type, _candidates(op, device_type, _requested()), probe)
    return impl.prepare(*probe) if impl.prepare is not None else impl.fn


def resolve_after(op: str, name: str, device_type: str, *probe: Any) -> Callable:
    """The function that runs ``op`` when implementation ``name`` passes on a call it accepted by its probe
    but does not serve (the CUDA GEMV past its row limit): the next candidate that accepts the probe."""
    candidates = [i for i in _candidates(op, device_type, _requested()) if i.name != name]
    return _first_accepting(op, device_type, candidates, probe).fn


def named(op: str, name: str, device_type: str, *probe: Any) -> Callable:
    """Implementation ``name`` of ``op`` for calls like ``probe``, whatever the ranking (benchmarks set
    implementations side by side); :class:`KernelUnavailableError` if it is missing, unavailable or declines."""
    for impl in _IMPLS.get(op, []):
        if impl.name == name and device_type in impl.device_types:
            if not impl.available():
                raise KernelUnavailableError(f"the {name} implementation of {op!r} is not available on {device_type}")
            if impl.accepts is not None and not impl.accepts(*probe):
                raise KernelUnavailableError(f"the {name} implementation of {op!r} declines {_describe(probe)}")
            return impl.prepare(*probe) if impl.prepare is not None else impl.fn
    raise KernelUnavailableError(f"no {name} implementation of {op!r} for {device_type}")


def chosen_name(op: str, device_type: str, *probe: Any) -> str:
    """Name of the implementation :func:`bind` would choose (for ``oxide info``, logs and tests)."""
    return _first_accepting(op, device_type, _candidates(op, device_type, _requested()), probe).name


def _requested() -> str | None:
    return os.environ.get("OXIDE_IMPL") or None


def _candidates(op: str, device_type: str, requested: str | None) -> list[Implementation]:
    """Implementations to try, best first: the requested one (which must be available), then the rest."""
    serving = [i for i in _IMPLS.get(op, []) if device_type in i.device_types]
    ranked = sorted(serving, key=lambda i: -i.priority)
    if requested is None:
        usable = [i for i in ranked if i.available()]
        for impl in ranked:
            if impl not in usable:
                log.debug("op %s on %s: %s unavailable, falling back", op, device_type, impl.name)
        if not usable:
            raise KernelUnavailableError(f"no implementation of {op!r} for device type {device_type!r}")
        return usable
    if requested != REFERENCE and not any(i.name == requested for i in serving) and _serves_device(requested, device_type):
        log.debug("op %s on %s: %s has no implementation of it, using the reference", op, device_type, requested)
        requested = REFERENCE
    for impl in serving:
        if impl.name == requested:
            if not impl.available():
                raise KernelUnavailableError(
                    f"OXIDE_IMPL={requested!r}: the {requested} implementation of {op!r} is not available "
                    f"on this machine; unset OXIDE_IMPL or build/install it"
                )
            return [impl, *(i for i in ranked if i.name == REFERENCE and i is not impl)]
    raise KernelUnavailableError(
        f"OXIDE_IMPL={requested!r}: no {requested} implementation of {op!r} for {device_type}; "
        f"available: {', '.join(i.name for i in serving) or 'none'}"
    )


def _serves_device(name: str, device_type: str) -> bool:
    """Whether implementation ``name`` implements any op on ``device_type``."""
    return any(i.name == name and device_type in i.device_types for impls in _IMPLS.values() for i in impls)


def _first_accepting(op: str, device_type: str, candidates: list[Implementation], probe: tuple) -> Implementation:
    for impl in candidates:
        if impl.accepts is None or impl.accepts(*probe):
            return impl
        log.debug("op %s on %s: %s declines %s", op, device_type, impl.name, _describe(probe))
    raise KernelUnavailableError(f"no implementation of {op!r} on {device_type} serves {_describe(probe)}")


def _describe(probe: tuple) -> str:
    return ", ".join(repr(p) if not hasattr(p, "shape") else f"{type(p).__name__}{tuple(p.shape)}" for p in probe)
