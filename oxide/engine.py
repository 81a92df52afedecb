"""Continuous batching: one scheduler loop that decodes every running sequence in one batched step.

:class:`Engine` keeps a bounded queue of waiting requests and a :class:`~oxide.slots.SlotPool` of KV slots.
Each :meth:`Engine.step` (the scheduler's one iteration):

1. drops cancelled requests, waiting or running (a running one gives its slot back at once);
2. admits waiting requests while a slot is free, reusing the longest cached prefix of each prompt;
3. prefills at most one chunk (``PREFILL_CHUNK`` tokens) of one admitted prompt, so that a long prompt
   delays the others' next token by one chunk's time, not its whole prefill; a finished prefill yields the
   sequence's first token;
4. runs one decode step for every sequence with a token pending: one sequence through its slot's recorded
   :class:`~oxide.models.step.DecodeStep`, several through :meth:`~oxide.models.decoder.DecoderLM.decode_batch`,
   whose matmuls read each weight once for the whole batch. The rows are then sampled together
   (:func:`~oxide.sampling.sample_rows`), each with its sequence's own sampler, so batching changes no sequence's
   tokens (its logits are those it would get alone, and its token the one its sampler would give them alone).

Finished sequences leave at once; their slot keeps their keys for the prefix cache. Results go to each
request's sink, called on the thread that runs the steps: a piece of text with its tokens, then the
:class:`~oxide.generate.Completion` (or the error that ended the sequence).

The engine is not thread-safe except :meth:`Engine.submit` and :meth:`Engine.cancel`, which other threads
call; the thread that steps it holds the model's lock while it does.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import NumericalError, OxideError, QueueFullError
from .generate import (PREFILL_CHUNK, Completion, GenerationStats, Request, SequenceRun, TokenLogprob,
                       prefill_chunk)
from .log import get_logger
from .models.decoder import DecoderLM
from .sampling import sample_rows
from .slots import SlotPool
from .tokenizer import Tokenizer

log = get_logger("engine")


@dataclass(frozen=True)
class Event:
    """What a request's sink receives: ``text`` (may be '') with the ``tokens`` sampled since the last event
    (ids and, when asked, log-probabilities); the last event has ``completion`` or ``error``."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion: Completion | None = None
    error: Exception | None = None


Sink = Callable[[Event], None]


class Ticket:
    """A submitted request's handle: :meth:`Engine.cancel` takes it."""

    def __init__(self, request: Request, sink: Sink) -> None:
        self.request, self.sink = request, sink
        self.cancelled = False


class _Active:
    """A sequence the engine runs: its ticket, its slot and how far its prompt has been prefilled."""

    def __init__(self, ticket: Ticket, run: SequenceRun) -> None:
        self.ticket, self.run = ticket, run
        self.cached = 0                          # prompt tokens reused from the prefix cache
        self.prefilled: int | None = None        # prompt tokens whose keys are in the slot (None: not begun)
        self.prefill_seconds = 0.0
        self.first_token_at: float | None = None
        self.tokens: list[int] = []              # sampled since the last event

    @property
    def prefilling(self) -> bool:
        return self.first_token_at is None


@dataclass
class EngineMetrics:
    """Counters since the engine started (exported by the server's ``/metrics``)."""

    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    decode_steps: int = 0
    decode_step_seconds: float = 0.0
    decode_step_rows: int = 0
    prefill_chunks: int = 0
    prefill_seconds: float = 0.0


class Engine:
    """The scheduler over one model and its slots; see the module's docstring.

    ``max_waiting``: how many requests may wait for a slot; :meth:`submit` raises :class:`QueueFullError`
    past it. ``source`` names the model's file in errors.
    """

    def __init__(self, lm: DecoderLM, tokenizer: Tokenizer | None, pool: SlotPool, *, max_waiting: int,
                 source: str = "") -> None:
        self.lm, self.tokenizer, self.pool = lm, tokenizer, pool
        self.max_waiting, self.source = max_waiting, source
        self.metrics = EngineMetrics()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._active: list[_Active] = []
        self._wakeup = threading.Condition()

    # ---- other threads

    def submit(self, request: Request, sink: Sink) -> Ticket:
        """Queue ``request``; its sink gets its events from the stepping thread. Raises :class:`QueueFullError`
        when ``max_waiting`` requests already wait."""
        ticket = Ticket(request, sink)
        with self._wakeup:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting for one of the "
                                     f"{self.pool.capacity} slots; retry later")
            self._waiting.append(ticket)
            self._wakeup.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop ``ticket``'s request at the start of the next step (its slot is freed then); no more events."""
        with self._wakeup:
            ticket.cancelled = True
            self._wakeup.notify_all()

    def wait_for_work(self, timeout: float) -> bool:
        """Block until a request waits or runs (True) or ``timeout`` seconds pass (False)."""
        with self._wakeup:
            return self._wakeup.wait_for(lambda: bool(self._waiting or self._active), timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._active)

    # ---- the stepping thread

    def busy(self) -> bool:
        return bool(self._waiting or self._active)

    def step(self) -> None:
        """One scheduler iteration: drop cancelled requests, admit, prefill one chunk, decode one token each."""
        self._drop_cancelled()
        self._admit()
        prefilling = next((a for a in self._active if a.prefilling), None)
        if prefilling is not None:
            self._guarded([prefilling], lambda: self._prefill_chunk(prefilling))
        decoding = [a for a in self._active if a.run.pending is not None]
        if decoding:
            self._guarded(decoding, lambda: self._decode(decoding))

    def fail_all(self, error: Exception) -> None:
        """End every waiting and running request with ``error`` (after a step failed unexpectedly)."""
        with self._wakeup:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for ticket in waiting:
            if not ticket.cancelled:
                ticket.sink(Event(error=error))
        for active in list(self._active):
            self.metrics.requests_failed += 1
            self._leave(active, error=error)

    def _drop_cancelled(self) -> None:
        with self._wakeup:
            dropped = [t for t in self._waiting if t.cancelled]
            for ticket in dropped:
                self._waiting.remove(ticket)
        self.metrics.requests_cancelled += len(dropped)
        for active in [a for a in self._active if a.ticket.cancelled]:
            self.metrics.requests_cancelled += 1
            self._leave(active)

    def _admit(self) -> None:
        while True:
            with self._wakeup:
                if not self._waiting:
                    return
                ticket = self._waiting[0]
                request = ticket.request
                slot = self.pool.acquire(request.key_ids)
                if slot is None:
                    return
                self._waiting.popleft()
            self._active.append(_Active(ticket, SequenceRun(request, self.tokenizer, slot, self.source)))
            self.metrics.prompt_tokens += len(request.prompt_ids)

    def _guarded(self, group: list[_Active], work: Callable[[], None]) -> None:
        """Run ``work`` for ``group``; an error ends those sequences (with it), not the engine."""
        try:
            work()
        except (OxideError, RuntimeError, ValueError) as e:
            log.error("%d sequence(s) failed: %s", len(group), e)
            for active in group:
                if active in self._active:
                    self.metrics.requests_failed += 1
                    self._leave(active, error=e)

    def _prefill_chunk(self, active: _Active) -> None:
        request, slot = active.run.request, active.run.slot
        start = time.perf_counter()
        if active.prefilled is None:   # its first chunk: take the longest cached prefix (another's since admission)
            active.cached = active.prefilled = self.pool.reuse_prefix(slot, request.key_ids)
            self.metrics.cached_prompt_tokens += active.cached
        end = min(active.prefilled + PREFILL_CHUNK, len(request.prompt_ids))
        logits = prefill_chunk(self.lm, slot.cache, request.prompt_ids, request.prompt_embeddings, active.prefilled,
                               end)
        slot.record(request.key_ids)             # another prompt may copy this prefix from now on
        active.prefilled = end
        elapsed = time.perf_counter() - start
        active.prefill_seconds += elapsed
        self.metrics.prefill_chunks += 1
        self.metrics.prefill_seconds += elapsed
        if end == len(request.prompt_ids):
            active.first_token_at = time.perf_counter()
            if request.max_new_tokens == 0:
                self._leave(active)
            else:
                self._took(active, logits)

    def _decode(self, decoding: list[_Active]) -> None:
        start = time.perf_counter()
        if len(decoding) == 1:
            run = decoding[0].run
            rows = run.slot.step(run.pending).unsqueeze(0)                           # (1, V)
        else:
            tokens = torch.tensor([a.run.pending for a in decoding])
            rows = self.lm.decode_batch(tokens, [a.run.slot.cache for a in decoding])   # (B, V)
        self.metrics.decode_steps += 1
        self.metrics.decode_step_rows += len(decoding)
        self.metrics.decode_step_seconds += time.perf_counter() - start
        live = [i for i, active in enumerate(decoding) if not active.ticket.cancelled]
        if not live:
            return
        runs = [decoding[i].run for i in live]
        sampled = sample_rows([run.sampler for run in runs], rows if len(live) == len(decoding) else rows[live],
                              [run.history for run in runs])
        for i, token in zip(live, sampled):
            active = decoding[i]
            try:
                if isinstance(token, NumericalError):
                    raise active.run.located(token)
                self._show(active, *active.run.accept(token, rows[i]))
            except OxideError as e:
                self.metrics.requests_failed += 1
                self._leave(active, error=e)

    def _took(self, active: _Active, logits: torch.Tensor) -> None:
        """Sample ``active``'s next token from ``logits`` alone and :meth:`_show` it."""
        self._show(active, *active.run.take(logits))

    def _show(self, active: _Active, piece: str, token: int) -> None:
        """Send what ``active``'s newly accepted ``token`` shows (``piece``); end the sequence if it is done."""
        active.tokens.append(token)
        if active.run.pending is None:
            self._leave(active, piece=piece)
        elif piece:
            self._send(active, Event(piece, active.tokens, active.run.logprobs))

    def _send(self, active: _Active, event: Event) -> None:
        active.tokens, active.run.logprobs = [], []
        if not active.ticket.cancelled:
            active.ticket.sink(event)

    def _leave(self, active: _Active, *, piece: str = "", error: Exception | None = None) -> None:
        """End ``active``: free its slot (keeping its keys for the prefix cache) and send its last event."""
        self._active.remove(active)
        run = active.run
        self.pool.release(run.slot, run.fed_ids())
        if error is not None:
            self._send(active, Event(error=error))
            return
        piece += run.output.close()
        now = time.perf_counter()
        first = active.first_token_at or now
        stats = GenerationStats(len(run.request.prompt_ids), len(run.output.generated), active.prefill_seconds,
                                now - first, active.cached)
        completion = Completion(run.output.text, run.output.generated, run.output.finish_reason or "length", stats)
        if not active.ticket.cancelled:
            self.metrics.requests_finished += 1
            self.metrics.completion_tokens += len(run.output.generated)
        self._send(active, Event(piece, active.tokens, run.logprobs, completion=completion))
