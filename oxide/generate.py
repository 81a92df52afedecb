"""The generation loop: prefill, decode, stop conditions, streaming text and statistics.

Stops on: the model's end tokens (unless ``ignore_eos``), a stop string (the text is cut before
it), ``max_new_tokens``, or a full context (``finish_reason="length"`` in the last two cases).
Streamed text never splits a UTF-8 character, and text that might be the start of a stop string
is held back until it is known not to be one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .cache import KVCache
from .errors import NumericalError
from .log import get_logger
from .models.decoder import DecoderLM
from .models.step import DecodeStep
from .sampling import Sampler
from .tokenizer import StreamDecoder, Tokenizer

log = get_logger("infer")

PREFILL_CHUNK = 512   # prompt tokens per forward: bounds the attention scores' memory


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

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


def prefill(model: DecoderLM, cache: KVCache, ids: Sequence[int], embeddings: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Run the prompt in chunks; return the float32 logits of its last position, (V,). With ``embeddings``
    (1, T, D), the prompt's input embeddings (an image's features among them), those run instead of the ids'."""
    tensor = torch.tensor([list(ids)], dtype=torch.long, device=model.device)   # (1, T)
    logits = None
    for start in range(0, tensor.shape[1], PREFILL_CHUNK):
        if embeddings is None:
            logits = model.forward(tensor[:, start:start + PREFILL_CHUNK], cache, last_only=True)
        else:
            logits = model.forward_embeddings(embeddings[:, start:start + PREFILL_CHUNK], cache, last_only=True)
    assert logits is not None, "prefill needs at least one token"
    return logits[0, -1]


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


class Generation:
    """An iterator of text pieces; after it is exhausted, :attr:`completion` holds the result.

    Without a tokenizer (a model folder with weights only) it yields no text: the completion holds the ids.
    ``prompt_embeddings`` (1, T, D), when given, are the prompt's input embeddings (images' features placed
    among its tokens' embeddings): the prefill runs them, the ids still count for penalties and statistics.
    Logits no token can be chosen from raise :class:`NumericalError` naming the step (and ``source``, the file).
    """

    def __init__(self, model: DecoderLM, tokenizer: Tokenizer | None, cache: KVCache, prompt_ids: Sequence[int], *,
                 max_new_tokens: int, sampler: Sampler, stop: Sequence[str], ignore_eos: bool,
                 end_ids: Sequence[int], prompt_embeddings: torch.Tensor | None = None, source: str = "") -> None:
        self.model, self.tokenizer, self.cache = model, tokenizer, cache
        self.source = source   # the model's file, named in errors
        self.prompt_ids = list(prompt_ids)
        self.prompt_embeddings = prompt_embeddings
        self.max_new_tokens = max_new_tokens
        self.sampler = sampler
        self.stops = _StopMatcher(stop)
        self.end_ids = set() if ignore_eos else set(end_ids)
        self.completion: Completion | None = None
        self._pieces = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self) -> Iterator[str]:
        history = list(self.prompt_ids)
        generated: list[int] = []
        decoder = None if self.tokenizer is None else StreamDecoder(self.tokenizer, skip_special_tokens=True,
                                                                      continuation=True)
        text, emitted = "", 0
        finish, stop_string_hit = "length", False
        start = time.perf_counter()
        logits = (prefill(self.model, self.cache, self.prompt_ids, self.prompt_embeddings)
                  if self.max_new_tokens > 0 else None)
        prefill_end = time.perf_counter()
        step = DecodeStep(self.model, self.cache)
        while logits is not None and len(generated) < self.max_new_tokens:
            try:
                token = self.sampler.sample(logits, history)
            except NumericalError as e:
                raise NumericalError(
                    f"{self.source + ': ' if self.source else ''}generation step {len(generated)} (position {len(history)} of the sequence): {e}. The model's "
                    f"weights or metadata are likely corrupt (a tensor moved, a zero or NaN RoPE base, a huge "
                    f"norm epsilon); check the file, or try it with llama.cpp") from None
            if token in self.end_ids:
                finish = "stop"
                break
            generated.append(token)
            history.append(token)
            text += decoder.push(token) if decoder is not None else ""
            cut = self.stops.find(text, emitted)   # emitted text holds no start of a stop string
            if cut >= 0:
                text, finish, stop_string_hit = text[:cut], "stop", True
                break
            safe = self.stops.safe_length(text)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if len(generated) == self.max_new_tokens:
                break
            if self.cache.seq_len >= self.cache.n_ctx:
                log.warning("context of %d tokens is full; stopping generation", self.cache.n_ctx)
                break
            logits = step(token)
        if not stop_string_hit:
            text += decoder.flush() if decoder is not None else ""
            cut = self.stops.find(text, emitted)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        if len(text) > emitted:
            yield text[emitted:]
        end = time.perf_counter()
        stats = GenerationStats(len(self.prompt_ids), len(generated), prefill_end - start, end - prefill_end)
        self.completion = Completion(text, generated, finish, stats)
        log.info("prompt %d tokens at %.1f tok/s; generated %d at %.1f tok/s (%s)", stats.prompt_tokens,
                 stats.prefill_tokens_per_second, stats.completion_tokens, stats.decode_tokens_per_second, finish)
