"""One model shared by threads: serialised calls that give each caller what it would get alone, streams that
release the model however they end, and lazy caches (dense weights, tokenizer state, resolved ops) built once.

Races are provoked, not hoped for: threads start together at a barrier, builders sleep while the others
arrive, and the interpreter switches threads every microsecond (``sys.setswitchinterval``).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import oxide
from oxide.errors import ModelBusyError
from oxide.once import locked_cached_property, once
from oxide.ops import dispatch
from oxide.quant import GGMLType, QuantTensor
from oxide.quant import tensor as tensor_module

from _tiny_models import TINY_MODELS, write_gguf
from test_hf_tokenizer import _write as write_hf_tokenizer

THREADS = 4
GREEDY = oxide.SamplingOptions.greedy()
PROMPTS = [[1, 17, 42, 99, 7], [1, 250, 3], [1, 5, 5, 5, 5, 5, 5, 61], [1, 123, 8, 200], [1, 64], [1, 280, 9, 9]]


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond (the default is 5 ms) so that unguarded check-then-build code races."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def together(n: int, work: Callable[[int], object]) -> list[object]:
    """``work(i)`` for i < n on n threads released at once; results in order, exceptions re-raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> object:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> oxide.Model:
    """The tiny Llama (random weights, Q8_0 matrices), which takes token ids."""
    path = tmp_path_factory.mktemp("threads") / "llama.gguf"
    write_gguf(TINY_MODELS["llama"].build(), path, qtype=GGMLType.Q8_0)
    return oxide.load(path, device="cpu")


def _generate(model: oxide.Model, prompt: list[int]) -> list[int]:
    return model.generate(prompt, max_new_tokens=6, sampling=GREEDY, ignore_eos=True).token_ids


# --- one model, several threads --------------------------------------------------------------------------

def test_concurrent_generate_equals_sequential(model: oxide.Model) -> None:
    sequential = [_generate(model, p) for p in PROMPTS]
    assert len({tuple(s) for s in sequential}) > 1, "the prompts should lead to different completions"
    concurrent = together(len(PROMPTS), lambda i: _generate(model, PROMPTS[i]))
    assert concurrent == sequential


def test_concurrent_logits_streams_and_generates(model: oxide.Model) -> None:
    """Mixed calls on one model: each equals its sequential result (logits bit for bit: the same kernels run)."""
    ids = PROMPTS[0]
    expected_logits = model.logits(ids)
    expected_text = _generate(model, PROMPTS[1])

    def work(i: int) -> object:
        if i % 3 == 0:
            return model.logits(ids)
        if i % 3 == 1:
            stream = model.stream(PROMPTS[1], max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
            list(stream)
            return stream.completion.token_ids
        return _generate(model, PROMPTS[1])

    for i, result in enumerate(together(6, work)):
        if i % 3 == 0:
            assert torch.equal(result, expected_logits)
        else:
            assert result == expected_text


def test_a_running_stream_makes_other_threads_wait(model: oxide.Model) -> None:
    expected = _generate(model, PROMPTS[2])
    stream = model.stream(PROMPTS[0], max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
    assert not model._lock.locked()                     # created, not started: holds nothing
    next(stream)
    assert model._lock.locked()
    results: list[list[int]] = []
    waiter = threading.Thread(target=lambda: results.append(_generate(model, PROMPTS[2])))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not results            # blocked behind the stream
    stream.close()
    waiter.join(timeout=30)
    assert results == [expected]


def test_same_thread_asking_again_is_an_error_not_a_deadlock(model: oxide.Model) -> None:
    stream = model.stream(PROMPTS[0], max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
    next(stream)
    with pytest.raises(ModelBusyError, match="stream it started"):
        model.generate(PROMPTS[1], max_new_tokens=1)
    with pytest.raises(ModelBusyError):
        model.logits(PROMPTS[1])
    stream.close()
    assert not model._lock.locked()
    assert _generate(model, PROMPTS[1])                  # usable again


def test_an_abandoned_stream_releases_the_model_when_dropped(model: oxide.Model) -> None:
    """Reference counting frees a dropped stream at once (no cycle through the generator), even with the
    cycle collector off, and that releases the lock; a ``for`` loop left by ``break`` does the same."""
    gc.disable()
    try:
        stream = model.stream(PROMPTS[0], max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
        next(stream)
        assert model._lock.locked()
        del stream
        assert not model._lock.locked()
        for _ in model.stream(PROMPTS[0], max_new_tokens=6, sampling=GREEDY, ignore_eos=True):
            break
        assert not model._lock.locked()
    finally:
        gc.enable()


def test_a_stream_started_in_one_thread_can_be_dropped_in_another(model: oxide.Model) -> None:
    streams: list = []

    def start() -> None:
        stream = model.stream(PROMPTS[0], max_new_tokens=6, sampling=GREEDY, ignore_eos=True)
        next(stream)
        streams.append(stream)

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    assert model._lock.locked()
    streams.clear()                                      # the last reference, dropped by this thread
    assert not model._lock.locked()
    assert _generate(model, PROMPTS[1])


def test_an_error_inside_a_generation_releases_the_model(model: oxide.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(model.lm, "forward", broken)
    with pytest.raises(RuntimeError, match="injected"):
        model.generate(PROMPTS[0], max_new_tokens=2)
    assert not model._lock.locked()
    assert model.slots.free() == model.slots.capacity      # its KV slot is given back too


# --- lazy caches -------------------------------------------------------------------------------------------

def test_first_dense_calls_from_four_threads_build_one_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    rows, cols = 37, 64
    values = np.random.default_rng(7).standard_normal((rows, cols)).astype(np.float32)
    weight = QuantTensor(torch.from_numpy(values.view(np.uint8).reshape(-1)), GGMLType.F32, (rows, cols))
    calls: list[int] = []
    real = tensor_module.dequantize

    def slow_dequantize(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(threading.get_ident())
        time.sleep(0.05)                                 # the other threads arrive while this one builds
        return real(*args, **kwargs)

    monkeypatch.setattr(tensor_module, "dequantize", slow_dequantize)
    copies = together(THREADS, lambda _: weight.dense(torch.float32))
    assert len(calls) == 1                               # one band: the matrix is small
    assert all(c is copies[0] for c in copies)
    assert torch.equal(copies[0], torch.from_numpy(values))


def test_dense_of_another_dtype_is_returned_as_asked() -> None:
    """Threads asking for different dtypes each get theirs (the cache keeps one, replaced under the lock)."""
    values = np.random.default_rng(8).standard_normal((9, 32)).astype(np.float32)
    weight = QuantTensor(torch.from_numpy(values.view(np.uint8).reshape(-1)), GGMLType.F32, (9, 32))
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64] * 4
    for dtype, dense in zip(dtypes, together(len(dtypes), lambda i: weight.dense(dtypes[i]))):
        assert dense.dtype == dtype
        torch.testing.assert_close(dense, torch.from_numpy(values).to(dtype))


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> oxide.Tokenizer:
    return oxide.Tokenizer.from_hf_dir(write_hf_tokenizer(tmp_path_factory.mktemp("tok"), "byte-level"))


class _SlowEncoder:
    """A ``tokenizers.Tokenizer`` whose ``encode`` first sleeps: a thread that set the shared tokenizer's
    settings would see another thread's settings by the time it encodes."""

    def __init__(self, real: object) -> None:
        object.__setattr__(self, "_real", real)

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._real, name, value)

    def encode(self, *args: object, **kwargs: object) -> object:
        time.sleep(0.002)
        return self._real.encode(*args, **kwargs)


def test_concurrent_encodes_with_different_settings(hf_tokenizer: oxide.Tokenizer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``parse_special`` is per call: one thread's setting never leaks into another's encoding."""
    text = "<|im_start|>user\nThe quick brown fox<|im_end|> jumps " * 20
    expected = {flag: hf_tokenizer.encode(text, parse_special=flag) for flag in (True, False)}
    assert expected[True] != expected[False]
    monkeypatch.setattr(hf_tokenizer, "_fast", _SlowEncoder(hf_tokenizer._fast))

    def work(i: int) -> bool:
        flag = i % 2 == 0
        return all(hf_tokenizer.encode(text, parse_special=flag) == expected[flag] for _ in range(10))

    assert all(together(8, work))


def test_gguf_tokenizer_builds_its_tables_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GGUF vocabulary's text -> id map (~38 MB for Gemma's) and special-token matchers, first asked by
    several threads at once, are built once and every thread encodes as it would alone."""
    from oxide.tokenizer import base

    tok = oxide.Tokenizer.from_gguf_metadata(_spm_metadata())
    built: list[int] = []
    real = base.Vocab.token_to_id._build

    def slow_build(vocab: base.Vocab) -> dict[str, int]:
        built.append(1)
        time.sleep(0.05)
        return real(vocab)

    monkeypatch.setattr(base.Vocab.token_to_id, "_build", slow_build)
    text = "<s>hello world</s> hello"
    results = together(THREADS, lambda i: tok.encode(text, parse_special=i % 2 == 0))
    assert len(built) == 1
    assert results == [tok.encode(text, parse_special=i % 2 == 0) for i in range(THREADS)]


def _spm_metadata() -> dict[str, object]:
    """A small SentencePiece vocabulary (as GGUF metadata): specials, the 256 byte tokens, a few words."""
    words = ["\u2581hello", "\u2581world", "\u2581h", "ello", "\u2581"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *words]
    types = [2, 3, 3, *([6] * 256), *([1] * len(words))]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * (len(tokens) - len(words)) + [-1.0, -2.0, -3.0, -4.0, -5.0],
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}


def test_resolved_ops_are_ranked_once() -> None:
    checks: list[int] = []

    def slow_available() -> bool:
        checks.append(1)
        time.sleep(0.05)
        return True

    name = "test_threads_op"
    dispatch.register(name, "torch", lambda: "reference")
    dispatch.register(name, "fast", lambda: "fast", priority=10, available=slow_available)
    try:
        chosen = together(THREADS, lambda _: dispatch.resolve(name, "cpu")())
        assert chosen == ["fast"] * THREADS and len(checks) == 1
    finally:
        dispatch._IMPLS.pop(name)
        dispatch._RESOLVED.clear()


def test_once_and_locked_cached_property_build_once() -> None:
    built: list[int] = []

    def build() -> object:
        built.append(1)
        time.sleep(0.05)
        return object()

    loader = once(build)
    assert len(set(map(id, together(THREADS, lambda _: loader())))) == 1 and len(built) == 1
    loader.cache_clear()
    loader()
    assert len(built) == 2

    class Holder:
        @locked_cached_property
        def value(self) -> object:
            return build()

    first, second = Holder(), Holder()
    values = together(2 * THREADS, lambda i: (first if i % 2 else second).value)
    assert len(built) == 4 and len({id(v) for v in values}) == 2
