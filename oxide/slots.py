"""KV slots: a bounded number of KV caches that remember what they hold, reused by prefix (the prefix cache).

A :class:`Slot` is one sequence's KV cache (``n_ctx`` positions), the token ids whose keys it holds, and its
decode step (so a recorded CPU program or CUDA graph outlives one generation). A :class:`SlotPool` holds at
most ``capacity`` of them: memory is bounded by ``capacity`` KV caches, allocated as they are first needed.

A finished sequence leaves its keys in its slot. A new prompt takes the slot whose tokens share the longest
prefix with it and prefills only the rest: the earlier turns of a chat, a shared system prompt. When that
slot is busy (another request with the same system prompt is running), the prompt takes a free slot (one never
used, or else the least recently used) and copies the shared prefix into it when its prefill starts: a memory
copy instead of a forward. A slot with sliding-window layers can go back only as far
as their rings still hold the keys the next position sees (:meth:`oxide.cache.KVCache.reusable`).

The pool is not thread-safe: its users hold the model's lock (:class:`oxide.concurrency.ModelLock`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from .cache import KVCache
from .log import get_logger
from .models.decoder import DecoderLM
from .models.step import DecodeStep

log = get_logger("slots")


class Slot:
    """One sequence's KV cache, the ids it holds keys for (``tokens``, as long as ``cache.seq_len``) and its
    decode step. ``tokens`` is None when the cache holds something ids do not name (an image's features)."""

    def __init__(self, lm: DecoderLM, n_ctx: int, index: int) -> None:
        self.index = index
        self.cache: KVCache = lm.new_cache(n_ctx)
        self.step = DecodeStep(lm, self.cache)
        self.tokens: list[int] | None = []
        self.busy = False
        self.last_used = 0

    def shared_prefix(self, ids: Sequence[int]) -> int:
        """How many leading ids this slot's cache can serve: their common prefix with :attr:`tokens`, or 0 when
        the cache cannot be cut there (a ring that has overwritten keys the next position needs)."""
        if not self.tokens:
            return 0
        n = 0
        for mine, theirs in zip(self.tokens, ids):
            if mine != theirs:
                break
            n += 1
        return n if n and self.cache.reusable(n) else 0

    def record(self, ids: Sequence[int] | None) -> None:
        """Say what the cache now holds: ``ids`` (their first ``cache.seq_len``), or None for content that ids
        do not name."""
        self.tokens = None if ids is None else list(ids[:self.cache.seq_len])


class SlotPool:
    """At most ``capacity`` slots of ``n_ctx`` positions each for ``lm``; see the module's docstring."""

    def __init__(self, lm: DecoderLM, n_ctx: int, capacity: int) -> None:
        self.lm, self.n_ctx, self.capacity = lm, n_ctx, capacity
        self.slots: list[Slot] = []
        self._clock = itertools.count(1)
        self.copied_tokens = 0        # prompt tokens copied from another slot, over the pool's life

    def free(self) -> int:
        """Slots a new sequence could take now (free ones and those not yet allocated)."""
        return self.capacity - sum(slot.busy for slot in self.slots)

    def acquire(self, ids: Sequence[int] | None) -> Slot | None:
        """A slot for a sequence whose prompt is ``ids`` (None: content ids do not name), marked busy: the free
        one holding the longest prefix of ``ids``, else a slot never used, else the least recently used free
        one. None when every slot is busy. Call :meth:`reuse_prefix` before prefilling into it."""
        usable = self._usable(ids)
        held = [(slot.shared_prefix(usable), slot.last_used, slot) for slot in self.slots if not slot.busy]
        best = max(held, key=lambda entry: entry[:2], default=None)
        slot = best[2] if best is not None and best[0] > 0 else self._vacant()
        if slot is not None:
            slot.busy, slot.last_used = True, next(self._clock)
        return slot

    def reuse_prefix(self, slot: Slot, ids: Sequence[int] | None) -> int:
        """Make ``slot``'s cache hold the longest prefix of the prompt ``ids`` that any slot holds (its own, or
        copied from another, busy or not) and nothing else; return its length, at most ``len(ids) - 1`` (the
        last id runs for its logits)."""
        usable = self._usable(ids)
        own = slot.shared_prefix(usable)
        donor, shared = max(((other, other.shared_prefix(usable)) for other in self.slots if other is not slot),
                            key=lambda pair: pair[1], default=(None, 0))
        if donor is not None and shared > own:
            slot.cache.copy_from(donor.cache, shared)
            self.copied_tokens += shared
        else:
            shared = own
            if shared == 0:
                slot.cache.reset()
            else:
                slot.cache.truncate(shared)
        slot.tokens = None if ids is None else usable[:shared]
        if shared:
            log.debug("slot %d reuses %d of %d prompt tokens%s", slot.index, shared, len(usable) + 1,
                      " (copied)" if donor is not None and shared > own else "")
        return shared

    def release(self, slot: Slot, ids: Sequence[int] | None) -> None:
        """Give ``slot`` back, its cache holding the keys of ``ids``' first ``cache.seq_len`` (None: of content
        ids do not name, never reused)."""
        slot.record(ids)
        slot.busy, slot.last_used = False, next(self._clock)

    @staticmethod
    def _usable(ids: Sequence[int] | None) -> list[int]:
        """The prompt ids a cache may serve: all but the last."""
        return list(ids[:-1]) if ids else []

    def _vacant(self) -> Slot | None:
        """A slot never used if the pool may still grow, else the least recently used free one."""
        if len(self.slots) < self.capacity:
            self.slots.append(Slot(self.lm, self.n_ctx, len(self.slots)))
            return self.slots[-1]
        free = [slot for slot in self.slots if not slot.busy]
        return min(free, key=lambda slot: slot.last_used) if free else None
