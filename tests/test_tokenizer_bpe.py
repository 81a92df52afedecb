"""oxide.tokenizer's byte-pair encoding (``tokenizer.ggml.model`` "gpt2", and "gemma4") against llama.cpp
(llama-cpp-python 0.3.36, the version whose sdist holds the ``ggml-vocab-*`` files used here).

Every BPE vocabulary of llama.cpp's ``models/`` folder is compared with llama.cpp itself (encode in
both ``parse_special`` modes and with BOS/EOS, decode, single-token pieces, token attributes) on fixed
texts and on random texts drawn fresh on every run (the seed is printed and named in failures); the
ones shipped with expected tokenizations (``.inp`` / ``.out``) must reproduce them. Every other
pre-tokenizer of the table is checked by giving GPT-2's vocabulary that ``tokenizer.ggml.pre`` value.
"""

from __future__ import annotations

import random
import re
import tarfile
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from llama_cpp import Llama

from oxide.errors import TokenizerError
from oxide.tokenizer import StreamDecoder, Tokenizer
from oxide.tokenizer.base import Attr
from oxide.tokenizer.base import clean_spaces
from oxide.tokenizer.bpe import BYTE_TO_CHAR, CHAR_TO_BYTE, BPETokenizer
from oxide.tokenizer.pretokenize import PRE_TOKENIZERS, UNSUPPORTED, _collapse_table, collapse
from oxide.weights.gguf import read_metadata
import _sdist  # tests/ is on sys.path (pytest prepend import mode)
from _llama_ref import expected_tokenizations, ref_decode, ref_encode, ref_piece, vocab_file

WITH_EXPECTED = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe", "mpt",
                 "qwen2", "qwen35", "refact", "starcoder"]
VOCABS = WITH_EXPECTED + ["aquila", "gpt-neox"]  # these two have no tokenizer.ggml.pre: llama.cpp's default

# Fragments random texts are built from.
SCRIPTS = [
    "北京是中国的首都", "東京都は日本の首都です", "カタカナとひらがな", "한국어 문장입니다", "مرحبا بالعالم",
    "नमस्ते दुनिया", "हिन्दी में लिखा", "Привет, мир!", "Ελληνικά γράμματα", "עברית כתובה", "ภาษาไทย",
    "Tiếng Việt có dấu", "Ærøskøbing", "naïve café", "e\u0301\u0302", "ǅemal ǈ", "ﬁ ligature", "Straße",
]
EMOJI = ["👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "👍🏽", "🇫🇷🇯🇵", "😶\u200d🌫️", "🦙", "🧑🏿\u200d🚀", "1️⃣", "❤️\u200d🔥"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\t \t", "\u00a0", "\u3000", "\u2003", "\u0085",
              "\u1680", "\u180e", "\u200b", "\ufeff", "\x0b", "\x0c", "\x1c"]
CODE = [
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}", "x = {'a': [1, 2, 3]}",
    "<div class=\"x\">hi</div>", "SELECT * FROM t WHERE id = 42;", "#include <stdio.h>", "λx.x → ∀y∃z",
    "if a != b && c >= d || !e:", "https://example.com/path?q=1&r=2#frag", "C:\\Users\\name\\file.txt", "$$x^2$$",
]
WORDS = ["Hello", "world", "the", "capital", "of", "France", "is", "Paris", "tokenizer", "ing", "llama", "ÄPFEL",
         "I'll've", "don't", "WE'RE", "it's", "it’s", "'S", "y'all", "rock'n'roll", "x", "a", "I", "e.g.", "...",
         "!!!", "?", "(", ")", "—", "“quoted”", "ThisIsCamelCase", "HTTPServer", "snake_case", "élan", "ÉCOLE"]
PUNCT = [" ?", " !", " .", " ,", " ' ", " 's", " 'm", " 're", " 've", " 't", " 'd", " 'll", "' '", " ' ' "]
DIGITS = ["0", "7", "42", "3.14159", "1,000,000", "2026-11-25", "0x1F", "1e-9", "12345678901234567890", "١٢٣٤",
          "१२३", "½", "²", "Ⅻ", "𝟙𝟚"]
SPECIAL_TEXTS = [
    "<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|im_start|>", "<|im_end|>",
    "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<｜begin▁of▁sentence｜>", ">>TITLE<<", "<fim_prefix>",
    "<|padding|>", "[PAD151650]", "[PAD255999]", "<bos>", "<eos>", "<|turn>", "<turn|>", "</s>", "<s>", "<unk>",
    "<|tool_response>", "<mask>", "<|endof", "text|>", "<0x41>", "Ġ", "Ċ", "ĠĠ", "▁", "ø", "õ",
    " " * 24,
]
RARE = ["\x00", "\x7f", "\u0378", "\u1c89", "\U0002ebf0", "\U00031350", "\ue000", "\U000f0000", "\U0010fffd",
        "\ufffd", "\U0001d11e", "\u0e3a"]


def random_text(rng: random.Random) -> str:
    pools = [SCRIPTS, EMOJI, WHITESPACE, CODE, WORDS, WORDS, PUNCT, DIGITS, SPECIAL_TEXTS, RARE]
    parts = []
    for _ in range(rng.randint(1, 24)):
        pool = rng.choice(pools)
        piece = rng.choice(pool)
        if pool is WHITESPACE and rng.random() < 0.3:
            piece *= rng.randint(2, 40)
        if pool in (WORDS, DIGITS) and rng.random() < 0.1:
            piece *= rng.randint(2, 60)  # long repeats and digit runs
        parts.append(piece)
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


FIXED_TEXTS = {
    "empty": "",
    "space": " ",
    "spaces": "    ",
    "leading_trailing": "  Hello world  ",
    "tabs_newlines": "a\tb\n\nc\r\n\t\t d\n \n\n  \n",
    "whitespace_runs": "x" + " " * 40 + "y" + "\n" * 35 + "z" + "\t" * 33 + " \u00a0\u3000\u2003 w",
    "contractions": "I'll've you'd've she's WE'RE it's 'S 'Ll y'all don't ’s",
    "clean_spaces": "Hello , world ! Is it ? Yes . He ' s here ' ' x 's 'm 're 've 't 'd 'll",
    "cjk": "北京是中国的首都。東京都は日本の首都です。한국어 문장입니다",
    "scripts": "السلام عليكم नमस्ते दुनिया Съешь же ещё ภาษาไทย Tiếng Việt e\u0301\u0302",
    "emoji_zwj": "family 👨\u200d👩\u200d👧\u200d👦 flag 🏳️\u200d🌈 ok 👍🏽 🇫🇷 1️⃣",
    "code": "def f(x):\n    if x > 0:\n        return [i ** 2 for i in range(x)]\n    return None\n",
    "digits": "3.14159 1,000,000 0x1F 12345678901234567890123 2026 ١٢٣٤٥ १२३४ ½²Ⅻ",
    "long_repeat": "ab" * 500 + " " + "a" * 3000 + " " + "ha" * 200,
    "rare_chars": "\u0378\u1c89\U0002ebf0\U00031350\ue000 \U000f0000\x00\x7f\x1c\u180e\u200b\ufeff",
    "specials": "<|endoftext|>x<|im_start|>user\n<|eot_id|><｜begin▁of▁sentence｜>>>TITLE<<<bos><turn|></s>[PAD151650]",
    "byte_chars": "ĠĠhello Ċ ø õ ▁▁x",
}


@pytest.fixture(scope="module", params=VOCABS)
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[str, BPETokenizer, Llama]]:
    """(name, oxide's tokenizer, llama.cpp) of one vocabulary; one vocabulary is loaded at a time."""
    path = vocab_file(request.param)
    tok = Tokenizer.from_gguf(path)
    assert isinstance(tok, BPETokenizer)
    ref = Llama(path, vocab_only=True, verbose=False)
    yield request.param, tok, ref
    del ref


def random_ids(rng: random.Random, tok: BPETokenizer, n: int) -> list[int]:
    """Ids mixing normal, control, user-defined and byte tokens, sometimes after BOS."""
    attrs = tok.vocab.attr_array
    kinds = [ids for ids in (np.flatnonzero(attrs & kind).tolist()
                             for kind in (Attr.NORMAL, Attr.CONTROL, Attr.USER_DEFINED, Attr.BYTE)) if ids]
    ids = [rng.choice(rng.choice(kinds + kinds[:1] * 3)) for _ in range(n)]
    if rng.random() < 0.3 and tok.bos_id is not None:
        ids.insert(0, tok.bos_id)
    return ids


# --- the vocabularies of llama.cpp's models/ folder -------------------------------------------------

@pytest.mark.parametrize("name", WITH_EXPECTED)
def test_ggml_vocab_expected_tokenizations(name: str) -> None:
    path = vocab_file(name)
    tok = Tokenizer.from_gguf(path)
    for text, expected in expected_tokenizations(path):
        assert tok.encode(text, parse_special=False) == expected, repr(text)


@pytest.mark.parametrize("text_name", sorted(FIXED_TEXTS))
def test_fixed_texts_match_llama_cpp(pair: tuple[str, BPETokenizer, Llama], text_name: str) -> None:
    name, tok, ref = pair
    text = FIXED_TEXTS[text_name]
    for parse_special in (False, True):
        assert tok.encode(text, parse_special=parse_special) == ref_encode(ref, text, parse_special), \
            f"{name}, {text_name}, parse_special={parse_special}"
    assert tok.encode(text, add_special_tokens=True) == ref_encode(ref, text, True, add_special=True), name
    ids = tok.encode(text)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == ref_decode(ref, ids, skip), f"{name}, {text_name}"


def test_random_texts_match_llama_cpp(pair: tuple[str, BPETokenizer, Llama], seed: int) -> None:
    name, tok, ref = pair
    rng = random.Random(seed)
    for k in range(30):
        text = random_text(rng)
        for parse_special in (False, True):
            assert tok.encode(text, parse_special=parse_special) == ref_encode(ref, text, parse_special), \
                f"{name}: seed {seed}, text #{k} {text!r}, parse_special={parse_special}"
        assert tok.encode(text, add_special_tokens=True) == ref_encode(ref, text, True, add_special=True), \
            f"{name}: seed {seed}, text #{k} {text!r}"


def test_decode_matches_llama_detokenize(pair: tuple[str, BPETokenizer, Llama], seed: int) -> None:
    name, tok, ref = pair
    rng = random.Random(seed + 1)
    for k in range(30):
        ids = random_ids(rng, tok, rng.randint(1, 30)) if k % 2 else tok.encode(random_text(rng))
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref_decode(ref, ids, skip), \
                f"{name}: seed {seed}, ids #{k} {ids}, skip_special_tokens={skip}"


def test_token_pieces_match_llama_cpp(pair: tuple[str, BPETokenizer, Llama], seed: int) -> None:
    """Single tokens, including every special token and normal tokens whose text has characters outside
    GPT-2's byte map (Command-R has 1403: llama.cpp renders them as "[UNK_BYTE_0x...]")."""
    name, tok, ref = pair
    rng = random.Random(seed + 2)
    attrs = tok.vocab.attr_array
    ids = rng.sample(range(tok.vocab_size), 300) + np.flatnonzero(attrs & ~Attr.NORMAL).tolist()[:2000]
    odd = [i for i in np.flatnonzero(attrs & Attr.NORMAL).tolist()
           if not tok.spec.escape_whitespace and any(c not in CHAR_TO_BYTE for c in tok.vocab.tokens[i])]
    ids += odd[:200]
    for token_id in ids:
        expected = ref_piece(ref, token_id)
        assert tok.token_bytes(token_id) == expected, (name, token_id, tok.vocab.tokens[token_id])
        assert tok.token_to_piece(token_id) == expected.decode("utf-8", "replace")


def test_vocab_attributes_match_llama_cpp(pair: tuple[str, BPETokenizer, Llama]) -> None:
    """Token attributes after llama.cpp's load-time fixes (its UNUSED bit aside), BOS/EOS and flags."""
    _, tok, ref = pair
    vocab = ref._model.vocab
    expected = np.array([llama_cpp.llama_vocab_get_attr(vocab, i) for i in range(tok.vocab_size)]) & ~2
    diff = np.flatnonzero(expected != tok.vocab.attr_array)
    assert diff.size == 0, [(int(i), tok.vocab.tokens[i], int(expected[i]), int(tok.vocab.attr_array[i]))
                            for i in diff[:10]]
    assert tok.vocab_size == llama_cpp.llama_vocab_n_tokens(vocab)
    assert tok.bos_id == llama_cpp.llama_vocab_bos(vocab)
    assert tok.eos_ids[0] == llama_cpp.llama_vocab_eos(vocab)
    assert all(llama_cpp.llama_vocab_is_eog(vocab, i) for i in tok.eos_ids)
    assert tok.add_bos == llama_cpp.llama_vocab_get_add_bos(vocab)
    assert tok.add_eos == llama_cpp.llama_vocab_get_add_eos(vocab)


def test_roundtrip(pair: tuple[str, BPETokenizer, Llama], seed: int) -> None:
    """The token pieces spell the text back exactly (also streamed); ``decode`` then applies llama.cpp's
    ``clean_spaces`` passes for the pre-tokenizers that ask for them.

    Not lossless, as in llama.cpp: Gemma 4 text containing "▁" (U+2581), which comes back as a space;
    bytes whose token the vocabulary lacks, which are dropped (Falcon lacks 14 control characters and
    the lead bytes of U+80000..U+BFFFF; StarCoder and Refact those of U+40000..U+7FFFF).
    """
    name, tok, _ = pair
    rng = random.Random(seed + 3)
    texts = list(FIXED_TEXTS.values()) + [random_text(rng) for _ in range(30)]
    byte_token = (lambda b: BYTE_TO_CHAR[b]) if tok.spec.byte_encode else (lambda b: f"<0x{b:02X}>")
    lost = {b for b in range(256) if byte_token(b) not in tok.vocab.token_to_id}
    lost -= {0xC0, 0xC1, *range(0xF5, 0x100)}  # never in UTF-8
    texts = [t for t in texts if not lost & set(t.encode("utf-8"))
             and not (tok.spec.escape_whitespace and "▁" in t)]
    assert len(texts) > 20
    for text in texts:
        for parse_special in (False, True):
            ids = tok.encode(text, parse_special=parse_special)
            assert b"".join(map(tok.token_bytes, ids)).decode("utf-8", "surrogateescape") == text, (name, text)
            stream = StreamDecoder(tok, skip_special_tokens=False)
            assert "".join(map(stream.push, ids)) + stream.flush() == text, (name, text)
            decoded = tok.decode(ids)
            assert decoded == (clean_spaces(text) if tok.spec.clean_spaces else text), (name, text)
    assert (tok.decode(tok.encode("Is it ? Yes , he 's")) == "Is it? Yes, he's") == tok.spec.clean_spaces


# --- every pre-tokenizer of the table, on GPT-2's vocabulary ------------------------------------------

# One tokenizer.ggml.pre value per distinct entry of the table.
PRE_CASES = sorted({spec: name for name, spec in PRE_TOKENIZERS.items()}.values())


@pytest.fixture(scope="module")
def gpt2_metadata() -> dict[str, object]:
    return read_metadata(vocab_file("gpt-2"))


def write_vocab(path: Path, metadata: dict[str, object], model: str, pre: str | None,
                space_prefix: bool = False) -> str:
    """A vocabulary-only GGUF with another tokenizer model / pre-tokenizer."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    if space_prefix:
        writer.add_add_space_prefix(True)
    writer.add_token_list(metadata["tokenizer.ggml.tokens"])
    writer.add_token_types(metadata["tokenizer.ggml.token_type"].tolist())
    writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    writer.add_bos_token_id(int(metadata["tokenizer.ggml.bos_token_id"]))
    writer.add_eos_token_id(int(metadata["tokenizer.ggml.eos_token_id"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def compare_with_llama_cpp(path: str, rng: random.Random, n: int, what: str) -> None:
    tok = Tokenizer.from_gguf(path)
    ref = Llama(path, vocab_only=True, verbose=False)
    texts = list(FIXED_TEXTS.values()) + [random_text(rng) for _ in range(n)]
    for k, text in enumerate(texts):
        assert tok.encode(text, parse_special=False) == ref_encode(ref, text, False), f"{what}: #{k} {text!r}"
        assert tok.encode(text, add_special_tokens=True) == ref_encode(ref, text, True, add_special=True), \
            f"{what}: #{k} {text!r}"
        ids = tok.encode(text)
        assert tok.decode(ids) == ref_decode(ref, ids, False), f"{what}: #{k} {text!r}"


@pytest.mark.parametrize("pre", PRE_CASES)
def test_pre_tokenizer_matches_llama_cpp(pre: str, gpt2_metadata: dict[str, object],
                                         tmp_path: Path, seed: int) -> None:
    path = write_vocab(tmp_path / "vocab.gguf", gpt2_metadata, "gpt2", pre)
    compare_with_llama_cpp(path, random.Random(seed + 4), 20, f"pre {pre!r}: seed {seed}")


def test_gemma4_pre_tokenizer_on_a_gpt2_model(tmp_path: Path, seed: int) -> None:
    """Gemma 4's vocabulary as a "gpt2" model with the pre-tokenizer of the same family: spaces as "▁",
    raw UTF-8 merges, byte tokens, newline runs taken whole."""
    metadata = read_metadata(vocab_file("gemma-4"))
    path = write_vocab(tmp_path / "vocab.gguf", metadata, "gpt2", "granite-embed-multi-311m")
    compare_with_llama_cpp(path, random.Random(seed + 5), 20, f"seed {seed}")


def test_space_prefix_only_affects_decoding(gpt2_metadata: dict[str, object], tmp_path: Path) -> None:
    """llama.cpp's BPE tokenizer never prepends a space; with tokenizer.ggml.add_space_prefix its
    detokenizer still drops the first piece's leading space."""
    path = write_vocab(tmp_path / "vocab.gguf", gpt2_metadata, "gpt2", "gpt-2", space_prefix=True)
    tok = Tokenizer.from_gguf(path)
    ref = Llama(path, vocab_only=True, verbose=False)
    plain = Tokenizer.from_gguf_metadata(gpt2_metadata)
    for text in ("Hello world", " Hello", "  x  "):
        ids = tok.encode(text)
        assert ids == plain.encode(text) == ref_encode(ref, text, True)
        assert tok.decode(ids) == ref_decode(ref, ids, False) == text.removeprefix(" ")


def test_pre_tokenizer_table_covers_llama_cpp() -> None:
    """Every tokenizer.ggml.pre value llama.cpp's loader knows is in the table, or deliberately not."""
    source = llama_cpp_source("src/llama-vocab.cpp")
    names = set(re.findall(r'tokenizer_pre == "([^"]+)"', source))
    assert len(names) > 80
    assert names - set(PRE_TOKENIZERS) == set(UNSUPPORTED) | {"whitespace"}
    assert set(PRE_TOKENIZERS) - names == set()


# --- construction errors -------------------------------------------------------------------------

def test_unknown_pre_tokenizer_raises(gpt2_metadata: dict[str, object]) -> None:
    metadata = dict(gpt2_metadata)
    metadata["tokenizer.ggml.pre"] = "brand-new-pre"
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.pre.*'brand-new-pre'.*llama-bpe"):
        Tokenizer.from_gguf_metadata(metadata)
    metadata["tokenizer.ggml.pre"] = "kimi-k2"
    with pytest.raises(TokenizerError, match="'kimi-k2'.*custom code"):
        Tokenizer.from_gguf_metadata(metadata)


def test_missing_merges_raise(gpt2_metadata: dict[str, object]) -> None:
    metadata = dict(gpt2_metadata)
    del metadata["tokenizer.ggml.merges"]
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.merges.*missing"):
        Tokenizer.from_gguf_metadata(metadata)


def test_missing_pre_is_default_with_a_warning(gpt2_metadata: dict[str, object],
                                              caplog: pytest.LogCaptureFixture) -> None:
    metadata = dict(gpt2_metadata)
    del metadata["tokenizer.ggml.pre"]
    with caplog.at_level("WARNING", logger="oxide.tokenizer"):
        tok = Tokenizer.from_gguf_metadata(metadata)
    assert tok.pre == "default" and "tokenizer.ggml.pre" in caplog.text
    # llama.cpp's default isolates digit runs, then cuts them in threes: " ", "123", "456", "7"
    assert tok.encode("x 1234567") == [87, 220, 10163, 29228, 22]
    assert Tokenizer.from_gguf_metadata(gpt2_metadata).encode("x 1234567") == [87, 17031, 2231, 3134]


# --- internals ------------------------------------------------------------------------------------

def llama_cpp_source(relative: str) -> str:
    """A file of the llama.cpp sources vendored in the llama-cpp-python sdist."""
    _sdist.llama_cpp_models_dir()
    archive = _sdist._download(_sdist.cache_dir())
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(f"llama_cpp_python-{_sdist.VERSION}/vendor/llama.cpp/{relative}")
        assert member is not None
        return member.read().decode("utf-8")


def test_unicode_classes_match_llama_cpp() -> None:
    """The collapsed class of every code point equals the one llama.cpp derives from its own Unicode
    tables (``unicode-data.cpp``: category ranges and the whitespace set)."""
    source = llama_cpp_source("src/unicode-data.cpp")
    body = source.split("unicode_ranges_flags = {")[1].split("};")[0]
    ranges = [(int(a, 16), int(f, 16)) for a, f in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)\}", body)]
    spaces = [int(c, 16) for c in re.findall(r"0x([0-9A-F]+)", source.split("unicode_set_whitespace = {")[1]
                                                                .split("};")[0])]
    flags = np.zeros(0x110000, dtype=np.int64)
    for (start, value), (end, _) in pairwise(ranges):
        flags[start:end] = value
    expected = np.full(0x110000, 0xD0, dtype=np.uint8)  # llama.cpp's fallback for C, Z and unassigned
    for bit, stand_in in ((0x02, 0xD1), (0x04, 0xD2), (0x20, 0xD3), (0x10, 0xD4), (0x40, 0xD5)):
        expected[flags == bit] = stand_in
    expected[spaces] = 0x0B
    expected[:128] = np.arange(128)
    diff = np.flatnonzero(_collapse_table() != expected)
    assert diff.size == 0, [hex(c) for c in diff[:20]]
    assert collapse("aé 1١\u3000ß\u0301!€\ue000") == "a\xd2 1\xd1\x0b\xd2\xd4!\xd5\xd0"


def test_heap_merge_equals_scan_merge(seed: int) -> None:
    """The two merge loops (scan for short words, heap for long ones) agree on any word."""
    tok = Tokenizer.from_gguf(vocab_file("llama-bpe"))
    rng = random.Random(seed + 6)
    letters = "abcdeĠĊ01!"
    for k in range(200):
        word = "".join(rng.choice(letters[:rng.randint(1, len(letters))]) for _ in range(rng.randint(1, 300)))
        assert tok._merge(word) == tok._merge_heap(word), f"seed {seed}, word #{k} {word!r}"


