"""Every vocabulary llama.cpp ships (the llama-cpp-python sdist) loads, and every one with expected
tokenizations reproduces them exactly; the per-family files test each more deeply.

The vocabularies are named here, not globbed, so that a missing file (or a missing ``.inp``/``.out`` pair of
expected tokenizations) fails instead of quietly testing less.
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from oxide.tokenizer import Tokenizer

from _llama_ref import expected_tokenizations
from _sdist import llama_cpp_models_dir

WITH_EXPECTED = ("bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2",
                 "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder")
WITHOUT_EXPECTED = ("aquila", "baichuan", "gpt-neox", "nomic-bert-moe")   # the sdist ships no .inp/.out for these
VOCABS = WITH_EXPECTED + WITHOUT_EXPECTED


def _path(name: str) -> Path:
    path = llama_cpp_models_dir() / f"ggml-vocab-{name}.gguf"
    assert path.is_file(), f"{path} is missing from the sdist"
    return path


def test_census() -> None:
    """The sdist holds exactly the vocabularies and expected-tokenization files named above."""
    models = llama_cpp_models_dir()
    found = {p.name.removeprefix("ggml-vocab-").removesuffix(".gguf") for p in models.glob("ggml-vocab-*.gguf")}
    assert found == set(VOCABS)
    for suffix in (".inp", ".out"):
        with_files = {p.name.removeprefix("ggml-vocab-").removesuffix(f".gguf{suffix}")
                      for p in models.glob(f"ggml-vocab-*.gguf{suffix}")}
        assert with_files == set(WITH_EXPECTED), suffix


@pytest.mark.parametrize("name", VOCABS)
def test_every_vocab_loads(name: str) -> None:
    assert Tokenizer.from_gguf(_path(name)).vocab_size > 1000


@pytest.mark.parametrize("name", WITH_EXPECTED)
def test_every_vocab_matches_its_expected_tokenizations(name: str) -> None:
    vocab = _path(name)
    cases = expected_tokenizations(str(vocab))        # fails when the .inp/.out files are missing or short
    tok = Tokenizer.from_gguf(vocab)
    mismatches = [text for text, expected in cases if tok.encode(text, parse_special=False) != expected]
    assert not mismatches, f"{vocab.name}: {len(mismatches)}/{len(cases)} differ, first {mismatches[0]!r}"


@pytest.mark.parametrize("name", VOCABS)
def test_generation_stops_where_llama_cpp_stops(name: str) -> None:
    """``eos_ids`` is exactly llama.cpp's end-of-generation set (EOS, end of turn, FIM pad..., end markers)."""
    vocab = _path(name)
    ref = llama_cpp.Llama(str(vocab), vocab_only=True, verbose=False)
    handle = ref._model.vocab
    expected = {i for i in range(llama_cpp.llama_vocab_n_tokens(handle)) if llama_cpp.llama_vocab_is_eog(handle, i)}
    assert set(Tokenizer.from_gguf(vocab).eos_ids) == expected
