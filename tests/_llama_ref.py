"""llama.cpp as the tokenizer reference (llama-cpp-python's low-level API), shared by the tokenizer tests."""

from __future__ import annotations

import ctypes

import llama_cpp
from llama_cpp import Llama

from _sdist import llama_cpp_models_dir


def vocab_file(name: str) -> str:
    """``ggml-vocab-<name>.gguf`` from the llama-cpp-python sdist."""
    return str(llama_cpp_models_dir() / f"ggml-vocab-{name}.gguf")


def ref_encode(ref: Llama, text: str, parse_special: bool, add_special: bool = False) -> list[int]:
    return ref.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)


def ref_piece(ref: Llama, token_id: int) -> bytes:
    """llama.cpp's token_to_piece(special=True, no lstrip)."""
    buffer = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_token_to_piece(ref._model.vocab, token_id, buffer, 4096, 0, True)
    assert n >= 0
    return buffer.raw[:n]


def ref_decode(ref: Llama, ids: list[int], skip_special_tokens: bool) -> str:
    """llama.cpp's llama_detokenize(remove_special=skip, unparse_special=not skip), UTF-8 with U+FFFD."""
    array = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 8 * sum(len(ref_piece(ref, i)) for i in ids) + 64
    buffer = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(ref._model.vocab, array, len(ids), buffer, size, skip_special_tokens,
                                   not skip_special_tokens)
    assert n >= 0, "reference buffer too small"
    return buffer.raw[:n].decode("utf-8", "replace")


def assert_decode_matches(tok, ref: Llama, seed: int, texts, ids, rounds: int = 300) -> None:
    """``tok.decode`` equals llama.cpp's detokenize, both modes, on ``rounds`` id lists: every other one
    encodes ``texts()`` (a random text), the rest are ``ids()`` (random ids)."""
    for k in range(rounds):
        sample = tok.encode(texts(), add_special_tokens=k % 4 == 1) if k % 2 else ids()
        for skip in (False, True):
            assert tok.decode(sample, skip_special_tokens=skip) == ref_decode(ref, sample, skip), \
                f"seed {seed}, ids #{k} {sample}, skip_special_tokens={skip}"


def write_and_load(writer, path: str):
    """Finish a vocabulary-only GGUF written with ``writer``; return (oxide's tokenizer, llama.cpp's)."""
    from oxide.tokenizer import Tokenizer

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Tokenizer.from_gguf(path), Llama(path, vocab_only=True, verbose=False)


SEPARATOR = "\n__ggml_vocab_test__\n"


def expected_tokenizations(vocab_path: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's own cases beside a vocab file: the ``.inp`` texts (each ends with the separator) and the
    ``.out`` lines of expected ids, one per text."""
    with open(f"{vocab_path}.inp", encoding="utf-8") as f:
        inputs = f.read().split(SEPARATOR)[:-1]
    with open(f"{vocab_path}.out", encoding="utf-8") as f:
        outputs = f.read().split("\n")[: len(inputs)]
    assert len(inputs) == len(outputs) > 40, f"{vocab_path}: the expected tokenizations are incomplete"
    return [(text, [int(t) for t in out.split()]) for text, out in zip(inputs, outputs)]
