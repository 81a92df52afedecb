"""oxide.tokenizer against llama.cpp (llama-cpp-python 0.3.36, the same version that vendors the
``ggml-vocab-*`` test files): Gemma 3's SentencePiece vocabulary from the real model file, and the
``llama-spm`` / ``phi-3`` vocab-only files with their expected tokenizations.

Random inputs are drawn fresh on every run; the seed is printed and named in failure messages.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from llama_cpp import Llama

from oxide.errors import TokenizerError
from oxide.tokenizer import StreamDecoder, Tokenizer
from oxide.tokenizer.base import Attr
from oxide.weights.gguf import read_metadata
from _llama_ref import expected_tokenizations, ref_decode, ref_encode, ref_piece, vocab_file, write_and_load


# Fragments random texts are built from: scripts, emoji (ZWJ sequences, flags, skin tones), whitespace
# runs longer and shorter than Gemma's whitespace tokens, code, digits, special-token texts whole and
# cut, characters outside the vocabularies (byte fallback) and text that looks like a byte token.
SCRIPTS = [
    "北京是中国的首都", "東京都は日本の首都です", "한국어 문장입니다", "مرحبا بالعالم", "السلام عليكم ورحمة الله",
    "नमस्ते दुनिया", "हिन्दी में लिखा", "Привет, мир!", "Съешь же ещё этих мягких", "Ελληνικά γράμματα",
    "עברית כתובה", "ภาษาไทย", "Tiếng Việt có dấu", "Ærøskøbing", "naïve café", "e\u0301\u0302", "ﬁ ligature",
]
EMOJI = [
    "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "👍🏽", "🇫🇷🇯🇵", "😶\u200d🌫️", "🦙", "🧑🏿\u200d🚀", "❤️\u200d🔥", "🫠",
]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\t \t", "\u00a0", "\u3000", "\ufeff", "\u200b"]
CODE = [
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}", "x = {'a': [1, 2, 3]}",
    "<div class=\"x\">hi</div>", "SELECT * FROM t WHERE id = 42;", "#include <stdio.h>", "λx.x → ∀y∃z",
    "if a != b && c >= d || !e:", "https://example.com/path?q=1&r=2#frag", "C:\\Users\\name\\file.txt",
]
WORDS = ["Hello", "world", "the", "capital", "of", "France", "is", "Paris", "tokenizer", "ing", "un", "llama",
         "Gemma", "ÄPFEL", "don't", "it's", "x", "a", "I", "e.g.", "...", "!!!", "?", "(", ")", "—", "“quoted”"]
DIGITS = ["0", "7", "42", "3.14159", "1,000,000", "2026-11-25", "0x1F", "1e-9", "333333333", "١٢٣", "१२३"]
SPECIAL_TEXTS = [
    "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "</s>", "<s>",
    "<unused17>", "<table>", "</td>", "[multimodal]", "<start_of_image>", "<0x41>", "<start_of", "_turn>",
    "<|user|>", "<|end|>", "<|assistant|>", "<|endoftext|>", "[PAD32011]", "\u2581",
]
RARE = ["\U00010000", "\U0001d11e", "\ue000", "\uf8ff", "\U000f0000", "\u2fff", "\U0001fbf9", "\u0e3a"]


def random_text(rng: random.Random) -> str:
    pools = [SCRIPTS, EMOJI, WHITESPACE, CODE, WORDS, WORDS, DIGITS, SPECIAL_TEXTS, RARE]
    parts = []
    for _ in range(rng.randint(1, 24)):
        pool = rng.choice(pools)
        piece = rng.choice(pool)
        if pool is WHITESPACE and rng.random() < 0.3:
            piece *= rng.randint(2, 40)  # runs past Gemma's 31-long whitespace tokens too
        if pool is WORDS and rng.random() < 0.1:
            piece *= rng.randint(2, 60)  # long repeats
        parts.append(piece)
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


FIXED_TEXTS = {
    "empty": "",
    "space": " ",
    "spaces": "    ",
    "leading_trailing": "  Hello world  ",
    "tabs_newlines": "a\tb\n\nc\r\n\t\t d\n",
    "whitespace_run_40": "x" + " " * 40 + "y" + "\n" * 35 + "z" + "\t" * 33,
    "cjk": "北京是中国的首都。東京都は日本の首都です。",
    "arabic": "السلام عليكم ورحمة الله وبركاته",
    "devanagari": "नमस्ते दुनिया, यह एक परीक्षण है।",
    "cyrillic": "Съешь же ещё этих мягких французских булок",
    "emoji_zwj": "family 👨\u200d👩\u200d👧\u200d👦 flag 🏳️\u200d🌈 ok 👍🏽 🇫🇷",
    "code": "def f(x):\n    if x > 0:\n        return [i ** 2 for i in range(x)]\n    return None\n",
    "digits": "3.14159 1,000,000 0x1F 333333333 2026",
    "long_repeat": "ab" * 500 + " " + "a" * 300,
    "rare_chars": "\U00010000\U0001d11e\ue000 \U000f0000",
    "chat": "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>",
    "special_like": "<bos>x<eos></s><s><unused5>y<0x41><start_of",
    "html": "<table><tr><td>a</td></tr></table>  <b>bold</b>",
    "literal_u2581": "a\u2581b \u2581",
}


# gemma_path (the real Gemma 3 270M file) comes from conftest.py.
@pytest.fixture(scope="module")
def gemma_tok(gemma_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(gemma_path)


@pytest.fixture(scope="module")
def gemma_ref(gemma_path: Path) -> Llama:
    return Llama(str(gemma_path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module", params=["llama-spm", "phi-3", "baichuan"])
def spm_pair(request: pytest.FixtureRequest) -> tuple[str, Tokenizer, Llama]:
    path = vocab_file(request.param)
    return request.param, Tokenizer.from_gguf(path), Llama(path, vocab_only=True, verbose=False)


@functools.lru_cache(maxsize=None)
def ids_by_kind(tok: Tokenizer) -> dict[int, list[int]]:
    kinds = (Attr.NORMAL, Attr.BYTE, Attr.CONTROL, Attr.USER_DEFINED, Attr.UNKNOWN)
    found = {kind: np.flatnonzero(tok.vocab.attr_array & kind).tolist() for kind in kinds}
    return {kind: ids for kind, ids in found.items() if ids}


def random_ids(rng: random.Random, tok: Tokenizer, n: int) -> list[int]:
    """Ids mixing normal, byte (often not whole characters), control and user-defined tokens."""
    by_kind = ids_by_kind(tok)
    kinds = list(by_kind)
    ids = []
    for _ in range(n):
        kind = rng.choice(kinds + [Attr.NORMAL] * 3)
        ids.append(rng.choice(by_kind[kind]))
    if rng.random() < 0.5 and tok.bos_id is not None:
        ids.insert(0, tok.bos_id)
    return ids


# --- Gemma 3 against llama.cpp ---------------------------------------------------------------------

def test_known_gemma_prompt(gemma_tok: Tokenizer, gemma_ref: Llama) -> None:
    text = "The capital of France is"
    assert gemma_tok.encode(text, add_special_tokens=True) == [2, 818, 5279, 529, 7001, 563]
    assert gemma_tok.encode(text, add_special_tokens=True) == ref_encode(gemma_ref, text, False, add_special=True)


@pytest.mark.parametrize("name", sorted(FIXED_TEXTS))
def test_gemma_fixed_texts_match_llama_cpp(gemma_tok: Tokenizer, gemma_ref: Llama, name: str) -> None:
    text = FIXED_TEXTS[name]
    for parse_special in (False, True):
        assert gemma_tok.encode(text, parse_special=parse_special) == ref_encode(gemma_ref, text, parse_special), \
            f"{name}, parse_special={parse_special}"
    assert gemma_tok.encode(text, add_special_tokens=True) == ref_encode(gemma_ref, text, True, add_special=True)


def test_gemma_random_texts_match_llama_cpp(gemma_tok: Tokenizer, gemma_ref: Llama, seed: int) -> None:
    rng = random.Random(seed)
    for k in range(300):
        text = random_text(rng)
        for parse_special in (False, True):
            assert gemma_tok.encode(text, parse_special=parse_special) == ref_encode(gemma_ref, text, parse_special), \
                f"seed {seed}, text #{k} {text!r}, parse_special={parse_special}"


def test_gemma_special_tokens_recognised_whole(gemma_tok: Tokenizer) -> None:
    turn = gemma_tok.encode("<start_of_turn>user\nhi<end_of_turn>")
    assert turn[0] == gemma_tok.special_tokens["<start_of_turn>"] == 105
    assert turn[-1] == gemma_tok.special_tokens["<end_of_turn>"] == 106
    plain = gemma_tok.encode("<start_of_turn>user", parse_special=False)
    assert 105 not in plain and len(plain) > 2
    # User-defined tokens (HTML tags, whitespace runs) are cut out even with parse_special=False.
    assert gemma_tok.encode("<table>", parse_special=False) == [168]
    assert gemma_tok.encode("a  b", parse_special=False)[1] == 138


def test_partition_fast_path_equals_llama_cpp_order(gemma_tok: Tokenizer, seed: int) -> None:
    """The left-to-right scan with local windows gives the same parts as simulating llama.cpp's
    longest-token-first order over the whole text."""
    rng = random.Random(seed + 1)
    for parse_special in (False, True):
        matcher = gemma_tok._matcher(parse_special)
        for k in range(200):
            text = random_text(rng)
            assert gemma_tok._partition(text, parse_special) == gemma_tok._claim(text, matcher), \
                f"seed {seed}, text #{k} {text!r}, parse_special={parse_special}"


def test_gemma_metadata_attributes(gemma_tok: Tokenizer, gemma_ref: Llama, gemma_path: Path) -> None:
    vocab = gemma_ref._model.vocab
    assert gemma_tok.vocab_size == llama_cpp.llama_vocab_n_tokens(vocab) == 262144
    assert gemma_tok.bos_id == llama_cpp.llama_vocab_bos(vocab) == 2
    assert gemma_tok.eos_ids[:2] == [llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_eot(vocab)] == [1, 106]
    assert gemma_tok.eos_ids == [1, 106, 212]   # and "</s>", an end marker by its text for llama.cpp
    assert gemma_tok.pad_id == 0
    assert gemma_tok.add_bos is True and gemma_tok.add_eos is False
    assert gemma_tok.vocab.add_space_prefix is False  # Gemma 3's file says so
    specials = gemma_tok.special_tokens
    assert specials["<start_of_turn>"] == 105 and specials["<table>"] == 168 and specials["\n\n"] == 108
    assert "▁the" not in specials and "<0x41>" not in specials
    types = read_metadata(gemma_path)["tokenizer.ggml.token_type"]
    assert len(specials) == int(((types == 3) | (types == 4)).sum())


# --- decoding -----------------------------------------------------------------------------------

def test_gemma_roundtrip(gemma_tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed + 2)
    texts = [t for t in FIXED_TEXTS.values() if "\u2581" not in t]
    texts += [t for t in (random_text(rng) for _ in range(200)) if "\u2581" not in t]
    for text in texts:
        for parse_special in (False, True):
            ids = gemma_tok.encode(text, parse_special=parse_special)
            assert gemma_tok.decode(ids) == text, f"seed {seed}, {text!r}, parse_special={parse_special}"


def test_decode_matches_llama_detokenize(gemma_tok: Tokenizer, gemma_ref: Llama, seed: int) -> None:
    rng = random.Random(seed + 3)
    for k in range(200):
        ids = random_ids(rng, gemma_tok, rng.randint(1, 30))
        for skip in (False, True):
            assert gemma_tok.decode(ids, skip_special_tokens=skip) == ref_decode(gemma_ref, ids, skip), \
                f"seed {seed}, ids #{k} {ids}, skip_special_tokens={skip}"


def test_token_to_piece_matches_llama_cpp(gemma_tok: Tokenizer, gemma_ref: Llama, seed: int) -> None:
    rng = random.Random(seed + 4)
    for token_id in rng.sample(range(gemma_tok.vocab_size), 300) + [0, 2, 105, 107, 138, 238, 248, 400, 236743]:
        expected = ref_piece(gemma_ref, token_id)
        assert gemma_tok.token_bytes(token_id) == expected, token_id
        assert gemma_tok.token_to_piece(token_id) == expected.decode("utf-8", "replace")


def test_decode_byte_tokens_reassemble_utf8(gemma_tok: Tokenizer) -> None:
    byte = {b: gemma_tok.vocab.token_to_id[f"<0x{b:02X}>"] for b in range(256)}
    ids = [byte[b] for b in "é🦙".encode()]
    assert gemma_tok.decode(ids) == "é🦙"
    assert gemma_tok.decode(ids[:-1]) == "é\ufffd"  # a cut character becomes U+FFFD, like llama.cpp's bytes
    assert gemma_tok.decode([byte[0xFF], byte[0x41]]) == "\ufffdA"


# --- vocab-only files from llama.cpp -------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_ggml_vocab_expected_tokenizations(name: str) -> None:
    path = vocab_file(name)
    tok = Tokenizer.from_gguf(path)
    for text, expected in expected_tokenizations(path):
        assert tok.encode(text, parse_special=False) == expected, repr(text)


def test_spm_vocabs_random_texts_match_llama_cpp(spm_pair: tuple[str, Tokenizer, Llama], seed: int) -> None:
    name, tok, ref = spm_pair
    rng = random.Random(seed + 5)
    for k in range(200):
        text = random_text(rng)
        for parse_special in (False, True):
            assert tok.encode(text, parse_special=parse_special) == ref_encode(ref, text, parse_special), \
                f"{name}: seed {seed}, text #{k} {text!r}, parse_special={parse_special}"
        assert tok.encode(text, add_special_tokens=True) == ref_encode(ref, text, True, add_special=True)


def test_spm_vocabs_decode_match_llama_cpp(spm_pair: tuple[str, Tokenizer, Llama], seed: int) -> None:
    name, tok, ref = spm_pair
    rng = random.Random(seed + 6)
    for k in range(200):
        ids = random_ids(rng, tok, rng.randint(1, 20))
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref_decode(ref, ids, skip), \
                f"{name}: seed {seed}, ids #{k} {ids}, skip={skip}"
    text = "  Hello world"  # the space prefix added by encode is removed again
    assert tok.decode(tok.encode(text, parse_special=False)) == text


def test_phi3_special_tokens_strip_following_whitespace(spm_pair: tuple[str, Tokenizer, Llama]) -> None:
    name, tok, ref = spm_pair
    text = "<|user|>\n  Hi there <|end|>\n<|assistant|>  </s>  x <s>  y"
    assert tok.encode(text) == ref_encode(ref, text, True)
    differs = tok.encode(text) != tok.encode(text.replace("|>\n  ", "|>"))
    assert differs == (name != "phi-3")  # only Phi-3's tokens swallow the whitespace after them


def test_spm_end_of_turn_ids(spm_pair: tuple[str, Tokenizer, Llama]) -> None:
    name, tok, ref = spm_pair
    vocab = ref._model.vocab
    assert tok.eos_ids[0] == llama_cpp.llama_vocab_eos(vocab)
    for token_id in tok.eos_ids:
        assert llama_cpp.llama_vocab_is_eog(vocab, token_id)
    if name == "phi-3":
        assert tok.eos_ids == [32000, 32007, 2]  # <|endoftext|>, <|end|>, and "</s>" by its text


@pytest.fixture(scope="module")
def overlapping_vocab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Llama]:
    """llama-spm's vocabulary with some tokens retyped so that special tokens overlap in text:
    user-defined "he", "ell", "lo", "hello" and control "ello". In "hell" the leftmost-longest
    scan would take "he"; llama.cpp takes the longer "ell" first."""
    metadata = read_metadata(vocab_file("llama-spm"))
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata["tokenizer.ggml.token_type"].copy()
    for text, token_type in (("he", 4), ("ell", 4), ("lo", 4), ("hello", 4), ("ello", 3)):
        types[tokens.index(text)] = token_type
    path = str(tmp_path_factory.mktemp("vocab") / "overlapping.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(metadata["tokenizer.ggml.scores"].tolist())
    writer.add_token_types(types.tolist())
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    return write_and_load(writer, path)


def test_overlapping_special_tokens_longest_first(overlapping_vocab: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = overlapping_vocab
    assert tok._partition("hell", False) == ["h", tok.vocab.token_to_id["ell"]]
    rng = random.Random(seed + 8)
    for k in range(400):
        text = "".join(rng.choice("helo hx\n") for _ in range(rng.randint(1, 40)))
        for parse_special in (False, True):
            assert tok.encode(text, parse_special=parse_special) == ref_encode(ref, text, parse_special), \
                f"seed {seed}, text #{k} {text!r}, parse_special={parse_special}"
            assert tok._partition(text, parse_special) == tok._claim(text, tok._matcher(parse_special))


# --- streaming ----------------------------------------------------------------------------------

def test_stream_holds_back_partial_characters(gemma_tok: Tokenizer) -> None:
    char = "\U00010000"  # not in the vocabulary: four byte tokens
    ids = gemma_tok.encode(f"a{char}b", parse_special=False)
    byte_ids = [gemma_tok.vocab.token_to_id[f"<0x{b:02X}>"] for b in char.encode()]
    start = ids.index(byte_ids[0])
    assert ids[start:start + 4] == byte_ids
    stream = StreamDecoder(gemma_tok)
    pieces = [stream.push(i) for i in ids]
    assert pieces[start:start + 4] == ["", "", "", char]
    assert "".join(pieces) + stream.flush() == f"a{char}b"


def test_stream_equals_decode(gemma_tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed + 7)
    for k in range(150):
        if k % 2:
            ids = gemma_tok.encode(random_text(rng))
        else:
            ids = random_ids(rng, gemma_tok, rng.randint(1, 30))
        for skip in (True, False):
            stream = StreamDecoder(gemma_tok, skip_special_tokens=skip)
            pieces = [stream.push(i) for i in ids]
            tail = stream.flush()
            assert "".join(pieces) + tail == gemma_tok.decode(ids, skip_special_tokens=skip), f"seed {seed}, {ids}"
            if k % 2:  # valid text: no piece ever ends in the middle of a character
                assert all("\ufffd" not in p for p in pieces) and tail == ""


def test_stream_spm_leading_space(spm_pair: tuple[str, Tokenizer, Llama]) -> None:
    _, tok, _ = spm_pair
    for add in (False, True):
        ids = tok.encode("Hello  world ü", add_special_tokens=add)
        stream = StreamDecoder(tok)
        assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids, skip_special_tokens=True)


# --- errors and construction ---------------------------------------------------------------------

def test_out_of_range_ids_raise(gemma_tok: Tokenizer) -> None:
    n = gemma_tok.vocab_size
    for bad in (n, n + 5, -1):
        with pytest.raises(TokenizerError, match=rf"{bad}.*{n}"):
            gemma_tok.decode([5, bad])
        with pytest.raises(TokenizerError, match=rf"{bad}.*{n}"):
            gemma_tok.token_to_piece(bad)
        with pytest.raises(TokenizerError, match=rf"{bad}.*{n}"):
            StreamDecoder(gemma_tok).push(bad)


def _tiny_metadata(**extra: object) -> dict[str, object]:
    tokens = ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab"]
    metadata: dict[str, object] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.array([0, 0, 0, -1, -2, -3, -1.5, -0.5, -0.25], dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1, 1, 1, 1, 1], dtype=np.int32),
    }
    metadata.update(extra)
    return metadata


def test_metadata_errors_name_the_key() -> None:
    metadata = _tiny_metadata()
    del metadata["tokenizer.ggml.tokens"]
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_gguf_metadata(metadata)
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.model.*'wordpiece-xyz'"):
        Tokenizer.from_gguf_metadata(_tiny_metadata(**{"tokenizer.ggml.model": "wordpiece-xyz"}))
    metadata = _tiny_metadata()
    del metadata["tokenizer.ggml.model"]
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.model.*missing"):
        Tokenizer.from_gguf_metadata(metadata)
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.scores.*2 entries.*9"):
        Tokenizer.from_gguf_metadata(_tiny_metadata(**{"tokenizer.ggml.scores": np.zeros(2, np.float32)}))
    with pytest.raises(TokenizerError, match="duplicate token 'a'"):
        Tokenizer.from_gguf_metadata(_tiny_metadata(**{"tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "▁", "a",
                                                                                 "a", "▁a", "ab", "▁ab"]}))


def test_unknown_character_without_byte_tokens_is_unk() -> None:
    tok = Tokenizer.from_gguf_metadata(_tiny_metadata())
    # "▁ab" scores best; "c" is outside a vocabulary that has no <0xXX> tokens.
    assert tok.encode("ab c a") == [8, 3, 0, 6]
    assert tok.encode("ab", add_special_tokens=True) == [1, 8]
    assert tok.decode([1, 8, 3, 0, 6]) == "<s> ab <unk> a"
    assert tok.decode([1, 8, 3, 0, 6], skip_special_tokens=True) == " ab  a"


def test_stream_continuation_keeps_leading_space() -> None:
    """Generated ids continue a prompt: their first piece keeps its space, unlike decode() of the same ids."""
    tok = Tokenizer.from_gguf(vocab_file("llama-spm"))
    ids = tok.encode("world again")   # the space prefix makes the first piece "▁world"
    stream = StreamDecoder(tok, skip_special_tokens=True, continuation=True)
    assert "".join(stream.push(i) for i in ids) + stream.flush() == " world again"
    assert tok.decode(ids) == "world again"
