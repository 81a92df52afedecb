"""Values built lazily, once, under a lock: safe when several threads ask for them first at the same time.

``functools.cache`` and ``functools.cached_property`` (since Python 3.12) may run the builder once per racing
thread; for a dense weight copy or a vocabulary-sized table that is memory and time spent twice, and for a
loader with side effects it is a double load. Both helpers here check without the lock (the common, already
built case costs a dict or list lookup) and build under it (double-checked).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Once(Generic[T]):
    """A zero-argument function whose result is computed on the first call and then kept."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._result: list[T] = []          # empty until built: a built None is a result too
        functools.update_wrapper(self, build)

    def __call__(self) -> T:
        if not self._result:
            with self._lock:
                if not self._result:
                    self._result.append(self._build())
        return self._result[0]

    def cache_clear(self) -> None:
        """Forget the result (tests rebuild it under another environment), as ``functools.cache`` spells it."""
        with self._lock:
            self._result.clear()


def once(build: Callable[[], T]) -> Callable[[], T]:
    """Decorator: ``build()`` runs at most once, even when threads race on the first call; exceptions are not
    kept (the next call tries again). The wrapper has ``cache_clear()``."""
    return _Once(build)


class locked_cached_property(Generic[T]):  # noqa: N801 - named like the functools decorator it replaces
    """``functools.cached_property`` that builds each instance's value once under a per-instance lock (Python
    3.12 dropped the lock that 3.8-3.11 held, which was moreover one lock for every instance of the class)."""

    def __init__(self, build: Callable[[Any], T]) -> None:
        self._build = build
        self.__doc__ = build.__doc__
        self._name = build.__name__
        self._lock_name = f"_lock_{build.__name__}"

    def __set_name__(self, owner: type, name: str) -> None:
        self._name, self._lock_name = name, f"_lock_{name}"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        values = instance.__dict__
        if self._name in values:             # a non-data descriptor: only reached before the value is set
            return values[self._name]
        lock = values.setdefault(self._lock_name, threading.Lock())   # setdefault is atomic: one lock wins
        with lock:
            if self._name not in values:
                values[self._name] = self._build(instance)
        return values[self._name]
