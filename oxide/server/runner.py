"""The scheduler's thread and its bridge to the server's asyncio loop.

:class:`EngineThread` steps the :class:`~oxide.engine.Engine` on one thread for the server's life, holding the
model's lock during each step (so the model stays usable from Python between steps). Each HTTP request
submits through :meth:`EngineThread.submit`, which returns a :class:`RequestEvents`: an async iterator of
the request's engine events, fed from the engine's thread with ``loop.call_soon_threadsafe``. Closing it
(the client went away) cancels the request; the engine frees its slot at its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from ..api import Model
from ..engine import Engine, Event, Ticket
from ..generate import Request
from ..log import get_logger

log = get_logger("server")

IDLE_POLL_SECONDS = 0.5   # how often an idle scheduler looks at its stop flag


class RequestEvents:
    """One request's engine events, as an async iterator that ends after the last one (completion or error)."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine, self._loop = engine, loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.ticket: Ticket | None = None
        self.finished = False

    def deliver(self, event: Event) -> None:
        """The engine's sink: runs on the engine's thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        while not self.finished:
            yield await self.next_event(None)

    async def next_event(self, timeout: float | None) -> Event | None:
        """The next event, or None after ``timeout`` seconds (to look at the client in between; None: wait)."""
        try:
            event = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        self.finished = event.completion is not None or event.error is not None
        return event

    def cancel(self) -> None:
        """Stop the request if it has not finished (its slot is freed at the engine's next step)."""
        if not self.finished and self.ticket is not None:
            self._engine.cancel(self.ticket)
            self.finished = True


class EngineThread:
    """Runs ``engine``'s scheduler loop on a daemon thread until :meth:`stop`."""

    def __init__(self, model: Model, engine: Engine) -> None:
        self.model, self.engine = model, engine
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="oxide-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop) -> RequestEvents:
        """Queue ``request``; raises :class:`~oxide.errors.QueueFullError` when the queue is full."""
        events = RequestEvents(self.engine, loop)
        events.ticket = self.engine.submit(request, events.deliver)
        return events

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.wait_for_work(IDLE_POLL_SECONDS):
                continue
            with self.model.lock:
                try:
                    self.engine.step()
                except Exception as e:   # a bug, not a request's error: end what runs, keep serving
                    log.exception("scheduler step failed")
                    self.engine.fail_all(e)
