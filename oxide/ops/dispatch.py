"""One registry of implementations per op, resolved once per (op, device type).

Implementations register with a name (``torch``, ``triton``, ``cuda``, ``cpp``), the device types
they serve, a priority and an availability check. Automatic selection takes the highest-priority
available one and quietly falls back (logged once at debug level). ``OXIDE_IMPL=name`` asks for one
implementation explicitly: if it cannot serve an op on the device, that is an error, not a fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

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


_IMPLS: dict[str, list[Implementation]] = {}
_RESOLVED: dict[tuple[str, str], Callable] = {}


def register(op: str, name: str, fn: Callable, *, device_types: tuple[str, ...] = ("cpu", "cuda", "mps"),
             priority: int = 0, available: Callable[[], bool] = lambda: True) -> None:
    """Add an implementation of ``op``; resolution caches are cleared."""
    _IMPLS.setdefault(op, []).append(Implementation(name, fn, frozenset(device_types), priority, available))
    _RESOLVED.clear()


def implementations(op: str) -> list[str]:
    return [impl.name for impl in _IMPLS.get(op, [])]


def resolve(op: str, device_type: str) -> Callable:
    """The function that runs ``op`` on ``device_type`` (cached after the first call)."""
    key = (op, device_type)
    fn = _RESOLVED.get(key)
    if fn is None:
        fn = _RESOLVED[key] = _choose(op, device_type, os.environ.get("OXIDE_IMPL") or None)
    return fn


def _choose(op: str, device_type: str, requested: str | None) -> Callable:
    candidates = [i for i in _IMPLS.get(op, []) if device_type in i.device_types]
    if requested is not None:
        for impl in candidates:
            if impl.name == requested:
                if not impl.available():
                    raise KernelUnavailableError(
                        f"OXIDE_IMPL={requested!r}: the {requested} implementation of {op!r} is not available "
                        f"on this machine; unset OXIDE_IMPL or build/install it"
                    )
                return impl.fn
        if requested != REFERENCE or not candidates:
            raise KernelUnavailableError(
                f"OXIDE_IMPL={requested!r}: no {requested} implementation of {op!r} for {device_type}; "
                f"available: {', '.join(i.name for i in candidates) or 'none'}"
            )
    for impl in sorted(candidates, key=lambda i: -i.priority):
        if impl.available():
            log.debug("op %s on %s: using %s", op, device_type, impl.name)
            return impl.fn
        log.debug("op %s on %s: %s unavailable, falling back", op, device_type, impl.name)
    raise KernelUnavailableError(f"no implementation of {op!r} for device type {device_type!r}")
