"""One model, several threads: the model's lock, and the stream that holds it while it runs.

A model's work is serialised (as llama-cpp-python does): ``generate``, ``stream`` and ``logits`` on one
:class:`~oxide.api.Model` take its :class:`ModelLock` for their forward passes, so calls from several threads
run one after another, each as it would alone. (A model is not safe to run twice at once: RoPE scalings
that follow the sequence length, the recorded CPU decode program and CUDA graphs are per-model state.)

A stream holds the lock from its first ``next()`` until it is exhausted, closed (``close()``) or dropped: the
lock is taken and released inside a generator's ``with`` block, which Python closes when the last reference
goes. Another thread's call waits meanwhile; the thread that holds an unfinished stream gets
:class:`~oxide.errors.ModelBusyError` if it asks the same model for more work, instead of waiting on itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import ModelBusyError

if TYPE_CHECKING:
    from .generate import Completion, Generation


class ModelLock:
    """A mutex that knows its holder, so that a thread asking again raises instead of deadlocking.

    It may be released by another thread than the one that took it: a stream that one thread abandoned can be
    closed by the garbage collector in another.
    """

    def __init__(self, what: str = "this model") -> None:
        self._what = what
        self._lock = threading.Lock()
        self._holder: threading.Thread | None = None   # kept (not its id): an id is reused after a thread ends

    def __enter__(self) -> ModelLock:
        me = threading.current_thread()
        if self._holder is me:
            raise ModelBusyError(
                f"this thread is already using {self._what}: a stream it started is neither finished nor closed; "
                f"exhaust it or call its close() before asking the model for more")
        self._lock.acquire()
        self._holder = me
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._holder = None
        self._lock.release()

    def locked(self) -> bool:
        """Whether some thread holds the lock now."""
        return self._lock.locked()


class LockedStream:
    """An iterator of text pieces that runs ``start()`` (a generation) under ``lock`` from its first ``next()``.

    ``start`` is called under the lock, so that what it allocates (a KV cache) exists only while the model is
    this stream's. :attr:`completion` is the generation's once it is exhausted, None before.
    The generator that holds the lock refers neither to this object nor to itself through it, so dropping the
    stream frees it at once (reference counting) and its ``with`` block releases the lock.
    """

    def __init__(self, start: Callable[[], Generation], lock: ModelLock) -> None:
        self._started: list[Generation] = []                  # the running generation, shared with the generator
        self._pieces = _run_locked(start, lock, self._started)

    @property
    def completion(self) -> Completion | None:
        return self._started[0].completion if self._started else None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop the generation now and release the model (a no-op if it has finished or never started)."""
        self._pieces.close()


def _run_locked(start: Callable[[], Generation], lock: ModelLock, started: list[Generation]) -> Iterator[str]:
    with lock:
        generation = start()
        started.append(generation)
        yield from generation
