"""The generation loop: prefill, decode, stop conditions, streaming text and statistics.

Stops on: the model's end tokens (unless ``ignore_eos``), a stop string (the text is cut before
it), ``max_new_tokens``, or a full context (``finish_reason="length"`` in the last two cases).
Streamed text never splits a UTF-8 character, and text that might be the start of a stop string
is held back until it is known not to be one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .cache import KVCache
from .errors import NumericalError
from .log import get_logger
from .models.decoder import DecoderLM
from .sampling import Sampler, SamplingOptions
from .tokenizer import StreamDecoder, Tokenizer

if TYPE_CHECKING:
    from .slots import Slot

log = get_logger("infer")

PREFILL_CHUNK = 512   # prompt tokens per forward: bounds the attention scores' memory


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    prefill_seconds: float
    decode_seconds: float
    cached_tokens: int = 0      # prompt tokens whose keys were reused from the prefix cache, not prefilled

    @property
    def prefill_tokens_per_second(self) -> float:
        """Prompt tokens prefilled (not those reused from the cache) over the prefill time."""
        prefilled = self.prompt_tokens - self.cached_tokens
        return prefilled / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens after the first (which prefill produces) over the decode time."""
        steps = self.completion_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str          # "stop" (end token or stop string) or "length"
    stats: GenerationStats


def prefill_chunk(model: DecoderLM, cache: KVCache, ids: Sequence[int], embeddings: torch.Tensor | None, start: int,
                  end: int) -> torch.Tensor:
    """Run prompt positions ``start .. end - 1`` after what ``cache`` holds; return the float32 logits of the last,
    (V,). With ``embeddings`` (1, T, D), the prompt's input embeddings (an image's features among them), those
    run instead of the ids'."""
    if embeddings is not None:
        return model.forward_embeddings(embeddings[:, start:end], cache, last_only=True)[0, -1]
    chunk = torch.tensor([list(ids[start:end])], dtype=torch.long, device=model.device)   # (1, end - start)
    return model.forward(chunk, cache, last_only=True)[0, -1]


def prefill(model: DecoderLM, cache: KVCache, ids: Sequence[int], embeddings: torch.Tensor | None = None,
            start: int = 0) -> torch.Tensor:
    """Run the prompt from position ``start`` on (the cache holds the rest) in chunks of ``PREFILL_CHUNK``; return
    the float32 logits of its last position, (V,)."""
    logits = None
    for begin in range(start, len(ids), PREFILL_CHUNK):
        logits = prefill_chunk(model, cache, ids, embeddings, begin, min(begin + PREFILL_CHUNK, len(ids)))
    assert logits is not None, "prefill needs at least one token"
    return logits


class _StopMatcher:
    """Finds stop strings in the generated text and says how much text is safe to emit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]

    def find(self, text: str, start: int = 0) -> int:
        """Index where the earliest stop string starts in ``text[start:]`` (as an index of ``text``), or -1."""
        hits = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else -1

    def safe_length(self, text: str) -> int:
        """Length of the prefix of ``text`` that cannot be the start of a stop string."""
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        return len(text) - hold


class SequenceOutput:
    """One sequence's output as it grows: the ids generated, the text safe to show, and why it ended.

    :meth:`push` takes each sampled id and returns the text it makes safe to show ('' if none yet); once
    :attr:`done`, :meth:`close` returns the text still held back and sets :attr:`finish_reason`: "stop" for
    an end token (not kept) or a stop string (the text is cut before it), else "length" (``max_new_tokens``,
    or a full context, or a cancelled sequence). Without a tokenizer there is no text, only ids.
    """

    def __init__(self, tokenizer: Tokenizer | None, *, stop: Sequence[str], end_ids: Sequence[int],
                 max_new_tokens: int) -> None:
        self.decoder = None if tokenizer is None else StreamDecoder(tokenizer, skip_special_tokens=True,
                                                                    continuation=True)
        self.stops = _StopMatcher(stop)
        self.end_ids = set(end_ids)
        self.max_new_tokens = max_new_tokens
        self.generated: list[int] = []
        self.text = ""
        self.emitted = 0                        # characters of text shown
        self.done = max_new_tokens == 0
        self.finish_reason: str | None = None
        self._stopped = False                   # ended by an end token or a stop string

    def push(self, token: int) -> str:
        """Count in the sampled ``token``; return the text it makes safe to show."""
        if token in self.end_ids:
            self.done = self._stopped = True
            return ""
        self.generated.append(token)
        self.text += self.decoder.push(token) if self.decoder is not None else ""
        cut = self.stops.find(self.text, self.emitted)   # emitted text holds no start of a stop string
        if cut >= 0:
            self.text, self.done, self._stopped = self.text[:cut], True, True
            self.decoder = None                          # nothing after the stop string is shown
            return ""
        self.done = len(self.generated) >= self.max_new_tokens
        return self._release(self.stops.safe_length(self.text))

    def close(self) -> str:
        """End the sequence (whatever :attr:`done` says); return the text held back until now."""
        if self.decoder is not None:
            self.text += self.decoder.flush()
            cut = self.stops.find(self.text, self.emitted)
            if cut >= 0:
                self.text, self._stopped = self.text[:cut], True
        self.done = True
        self.finish_reason = "stop" if self._stopped else "length"
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        piece = self.text[self.emitted:upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return piece


@dataclass(frozen=True, eq=False)
class Request:
    """A prompt (ids, already checked to fit a slot) and how to continue it. ``logprobs``: None for none, else
    how many likeliest alternatives to report beside each chosen token's log-probability."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_embeddings: torch.Tensor | None = None   # (1, T, D): an image prompt's input embeddings

    @property
    def key_ids(self) -> list[int] | None:
        """The ids that name the keys its prefill stores (a prefix cache's key); None for an image prompt, whose
        keys ids do not name."""
        return None if self.prompt_embeddings is not None else self.prompt_ids


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability under the model (log-softmax of its raw logits, before any sampling
    option) and the ``k`` likeliest tokens with theirs."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class SequenceRun:
    """One sequence from its first token on: samples its next token from logits, keeps the history its
    penalties see, and turns tokens into text (:class:`~oxide.generate.SequenceOutput`). Shared by the engine
    and the single-sequence :class:`~oxide.generate.Generation`."""

    def __init__(self, request: Request, tokenizer: Tokenizer | None, slot: Slot, source: str = "") -> None:
        self.request, self.slot, self.source = request, slot, source
        end_ids = () if request.ignore_eos or tokenizer is None else tokenizer.eos_ids
        self.output = SequenceOutput(tokenizer, stop=request.stop, end_ids=end_ids,
                                     max_new_tokens=request.max_new_tokens)
        self.sampler = Sampler(request.sampling)
        self.history = list(request.prompt_ids)
        self.pending: int | None = None          # the last token sampled, still to run
        self.logprobs: list[TokenLogprob] = []   # since the last event

    def take(self, logits: torch.Tensor) -> tuple[str, int]:
        """Sample from ``logits`` (V,) and :meth:`accept` the token; a :class:`NumericalError` is :meth:`located`."""
        try:
            token = self.sampler.sample(logits, self.history)
        except NumericalError as e:
            raise self.located(e) from None
        return self.accept(token, logits)

    def accept(self, token: int, logits: torch.Tensor) -> tuple[str, int]:
        """Count in ``token``, sampled from ``logits`` (V,) by :attr:`sampler` (here or by
        :func:`~oxide.sampling.sample_rows` with other sequences); returns the text it makes safe to show and the
        token. Afterwards :attr:`pending` is the token to run next, None when the sequence is done."""
        if self.request.logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, self.request.logprobs))
        self.history.append(token)
        piece = self.output.push(token)
        cache = self.slot.cache
        if not self.output.done and cache.seq_len >= cache.n_ctx:
            log.warning("context of %d tokens is full; stopping generation", cache.n_ctx)
            self.output.done = True
        self.pending = None if self.output.done else token
        return piece, token

    def located(self, error: NumericalError) -> NumericalError:
        """``error``, raised sampling this sequence's next token, completed with where it happened."""
        prefix = f"{self.source}: " if self.source else ""
        return NumericalError(
            f"{prefix}generation step {len(self.output.generated)} (position {len(self.history)} of the sequence): "
            f"{error}. The model's weights or metadata are likely corrupt (a tensor moved, a zero or NaN RoPE base, a "
            f"huge norm epsilon); check the file, or try it with llama.cpp")

    def fed_ids(self) -> list[int] | None:
        """The ids whose keys the slot holds (None for an image prompt, whose keys ids do not name)."""
        return None if self.request.key_ids is None else self.history


def token_logprob(logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """The log-probability of ``token`` under ``softmax(logits)`` and the ``k`` likeliest tokens'."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logp, k) if k > 0 else None
    alternatives = [] if top is None else list(zip(top.indices.tolist(), top.values.tolist()))
    return TokenLogprob(token, float(logp[token]), alternatives)


class Generation:
    """An iterator of text pieces; after it is exhausted, :attr:`completion` holds the result.

    It runs ``request`` alone in ``slot`` (whose cache may already hold a prefix of the prompt, reused from an
    earlier generation: only the rest is prefilled) through the slot's decode step, and gives the slot back
    with ``release(slot, ids)`` when it ends, is closed or fails. Without a tokenizer (a model folder with
    weights only) it yields no text: the completion holds the ids. The request's ``prompt_embeddings``
    (1, T, D), when given, are the prompt's input embeddings (images' features placed among its tokens'
    embeddings): the prefill runs them, the ids still count for penalties and statistics. Logits no token can
    be chosen from raise :class:`NumericalError` naming the step (and ``source``, the file).
    """

    def __init__(self, model: DecoderLM, tokenizer: Tokenizer | None, slot: Slot, request: Request, *,
                 release: Callable[[Slot, list[int] | None], None], source: str = "") -> None:
        self.model, self.slot, self.request, self.release = model, slot, request, release
        self.run = SequenceRun(request, tokenizer, slot, source)
        self.completion: Completion | None = None
        self._pieces = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self) -> Iterator[str]:
        run, cache = self.run, self.slot.cache
        try:
            start = time.perf_counter()
            cached = cache.seq_len
            logits = None if run.output.done else prefill(self.model, cache, self.request.prompt_ids,
                                                         self.request.prompt_embeddings, start=cached)
            prefill_end = time.perf_counter()
            while logits is not None:
                piece, _ = run.take(logits)
                if piece:
                    yield piece
                if run.pending is None:
                    break
                logits = self.slot.step(run.pending)
            piece = run.output.close()
            if piece:
                yield piece
            stats = GenerationStats(len(self.request.prompt_ids), len(run.output.generated), prefill_end - start,
                                    time.perf_counter() - prefill_end, cached)
            self.completion = Completion(run.output.text, run.output.generated,
                                         run.output.finish_reason or "length", stats)
        finally:
            self.release(self.slot, run.fed_ids())
        log.info("prompt %d tokens (%d cached) at %.1f tok/s; generated %d at %.1f tok/s (%s)", stats.prompt_tokens,
                 cached, stats.prefill_tokens_per_second, stats.completion_tokens, stats.decode_tokens_per_second,
                 self.completion.finish_reason)

