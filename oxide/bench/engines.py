"""The engines the comparison runs, each behind the same small interface.

An engine is loaded once per worker process. The worker asks it for three things: a first token
(which ends the load time), a greedy generation timed in two phases (prefill, decode) and the logits
of every position of a token sequence (for the quality figures). All engines receive token ids, never
text, so that they read exactly the same input.

``REQUIREMENTS`` names the module each engine imports, so that the parent process can report an
engine that is not installed as skipped without starting a worker for it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENGINE_NAMES = ("oxide", "llama.cpp", "transformers")
REQUIREMENTS = {"oxide": ("oxide", "oxide"), "llama.cpp": ("llama_cpp", "llama-cpp-python"),
                "transformers": ("transformers", "transformers")}   # engine -> (module, pip distribution)
REFERENCE_ENGINE = "transformers"    # its float32 logits are the quality reference
BASELINE_ENGINE = "llama.cpp"        # the speed ratios are against it


@dataclass(frozen=True)
class Timing:
    """One greedy generation: ``len(tokens)`` new tokens, the first produced by the prefill."""

    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    tokens: list[int]

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens after the first over the decode time (the convention of ``oxide.generate``)."""
        return (len(self.tokens) - 1) / self.decode_seconds


class Engine(ABC):
    """A loaded model in one engine, driven with token ids and greedy decoding only."""

    @abstractmethod
    def first_token(self, ids: Sequence[int]) -> int:
        """Run ``ids`` on a fresh state and return the greedy next token."""

    @abstractmethod
    def generate(self, ids: Sequence[int], new_tokens: int) -> Timing:
        """Greedy generation of ``new_tokens`` tokens after ``ids`` (end tokens ignored), timed."""

    @abstractmethod
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Float32 logits (len(ids), vocab): one teacher-forced pass on a fresh state."""


def timed_greedy(prefill: Callable[[Sequence[int]], int], step: Callable[[int], int], ids: Sequence[int],
                 new_tokens: int) -> Timing:
    """Time ``prefill`` (ids -> first token) once, then ``step`` (token -> next token) ``new_tokens - 1`` times."""
    start = time.perf_counter()
    tokens = [prefill(ids)]
    prefilled = time.perf_counter()
    for _ in range(new_tokens - 1):
        tokens.append(step(tokens[-1]))
    return Timing(len(ids), prefilled - start, time.perf_counter() - prefilled, tokens)


class OxideEngine(Engine):
    """oxide through its public API: ``oxide.load`` and ``Model.generate``, on the CPU."""

    def __init__(self, model: Path, threads: int, n_ctx: int) -> None:
        import torch

        import oxide

        torch.set_num_threads(threads)
        self._oxide = oxide
        self.model = oxide.load(model, device="cpu", n_ctx=n_ctx)

    def first_token(self, ids: Sequence[int]) -> int:
        return int(self.model.logits(ids)[-1].argmax())

    def generate(self, ids: Sequence[int], new_tokens: int) -> Timing:
        done = self.model.generate(list(ids), max_new_tokens=new_tokens, sampling=self._oxide.SamplingOptions.greedy(),
                                   ignore_eos=True)
        s = done.stats
        return Timing(s.prompt_tokens, s.prefill_seconds, s.decode_seconds, list(done.token_ids))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.logits(ids).float().numpy()


class LlamaCppEngine(Engine):
    """llama.cpp through llama-cpp-python's ``Llama`` object (GGUF files only)."""

    def __init__(self, model: Path, threads: int, n_ctx: int, all_logits: bool = False) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                                   n_threads_batch=threads, logits_all=all_logits, verbose=False)

    def _eval(self, ids: Sequence[int]) -> int:
        """Append ``ids`` to the sequence; return the greedy next token (from the context's last logits,
        which ``Llama.scores`` only mirrors with ``logits_all``)."""
        self.llm.eval(list(ids))
        last = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(last, shape=(self.llm.n_vocab(),))))

    def first_token(self, ids: Sequence[int]) -> int:
        self.llm.reset()
        return self._eval(ids)

    def generate(self, ids: Sequence[int], new_tokens: int) -> Timing:
        self.llm.reset()
        return timed_greedy(self._eval, lambda token: self._eval([token]), ids, new_tokens)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[:len(ids)], dtype=np.float32)


class TransformersEngine(Engine):
    """transformers in float32: a GGUF file is dequantized at load (``gguf_file=``), a folder read as is."""

    def __init__(self, model: Path, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self._torch = torch
        if model.is_dir():
            net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        else:
            net = AutoModelForCausalLM.from_pretrained(model.parent, gguf_file=model.name, dtype=torch.float32)
        self.net = net.eval()
        self._past = None

    def _forward(self, ids: Sequence[int], past: object) -> int:
        """Run ``ids`` after the cache ``past`` (None: a fresh one); keep the new cache; return the greedy token."""
        with self._torch.inference_mode():
            out = self.net(self._torch.tensor([list(ids)]), past_key_values=past, use_cache=True)
        self._past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def first_token(self, ids: Sequence[int]) -> int:
        return self._forward(ids, None)

    def generate(self, ids: Sequence[int], new_tokens: int) -> Timing:
        return timed_greedy(lambda prompt: self._forward(prompt, None),
                            lambda token: self._forward([token], self._past), ids, new_tokens)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        with self._torch.inference_mode():
            return self.net(self._torch.tensor([list(ids)])).logits[0].float().numpy()


def open_engine(name: str, model: Path, threads: int, n_ctx: int, *, all_logits: bool = False) -> Engine:
    """Load ``model`` in engine ``name`` with ``threads`` threads and room for ``n_ctx`` tokens.

    ``all_logits`` asks for an engine that can return every position's logits (llama.cpp must know
    at load time; the others always can).
    """
    if name == "oxide":
        return OxideEngine(model, threads, n_ctx)
    if name == "llama.cpp":
        return LlamaCppEngine(model, threads, n_ctx, all_logits)
    if name == "transformers":
        return TransformersEngine(model, threads)
    raise ValueError(f"unknown engine {name!r}; engines: {', '.join(ENGINE_NAMES)}")


def unsupported_reason(name: str, model: Path) -> str | None:
    """Why engine ``name`` cannot run ``model`` at all (None when it can)."""
    if name == "llama.cpp" and model.is_dir():
        return "llama.cpp reads GGUF files only, not Hugging Face folders"
    return None
