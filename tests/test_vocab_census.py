"""Every vocabulary llama.cpp ships (the llama-cpp-python sdist) loads, and every one with expected
tokenizations reproduces them exactly; the per-family files test each more deeply."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from oxide.tokenizer import Tokenizer

from _llama_ref import expected_tokenizations
from _sdist import llama_cpp_models_dir

VOCABS = sorted(llama_cpp_models_dir().glob("ggml-vocab-*.gguf"))


def test_census() -> None:
    assert len(VOCABS) >= 19, "the sdist's vocabularies were not all found"


@pytest.mark.parametrize("vocab", VOCABS, ids=lambda p: p.name)
def test_every_vocab_loads_and_matches_its_expected_tokenizations(vocab: Path) -> None:
    tok = Tokenizer.from_gguf(vocab)
    assert tok.vocab_size > 1000
    if not Path(f"{vocab}.inp").exists():
        return
    cases = expected_tokenizations(str(vocab))
    assert cases
    mismatches = [text for text, expected in cases if tok.encode(text, parse_special=False) != expected]
    assert not mismatches, f"{vocab.name}: {len(mismatches)}/{len(cases)} differ, first {mismatches[0]!r}"


@pytest.mark.parametrize("vocab", VOCABS, ids=lambda p: p.name)
def test_generation_stops_where_llama_cpp_stops(vocab: Path) -> None:
    """``eos_ids`` is exactly llama.cpp's end-of-generation set (EOS, end of turn, FIM pad..., end markers)."""
    ref = llama_cpp.Llama(str(vocab), vocab_only=True, verbose=False)
    handle = ref._model.vocab
    expected = {i for i in range(llama_cpp.llama_vocab_n_tokens(handle)) if llama_cpp.llama_vocab_is_eog(handle, i)}
    assert set(Tokenizer.from_gguf(vocab).eos_ids) == expected
