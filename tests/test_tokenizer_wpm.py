"""oxide.tokenizer's WordPiece (``bert``) and unigram (``t5``) vocabularies against llama.cpp
(llama-cpp-python 0.3.36, the version that vendors the ``ggml-vocab-*`` files): ``bert-bge`` with its
expected tokenizations, ``nomic-bert-moe`` (unigram, with a SentencePiece normaliser), and variants
of the latter written here to reach the normaliser's other whitespace modes and user-defined tokens.

Random inputs are drawn fresh on every run; the seed is printed and named in failure messages.
"""

from __future__ import annotations

import random
import unicodedata

import gguf
import llama_cpp
import numpy as np
import pytest
from _llama_ref import assert_decode_matches, expected_tokenizations, ref_decode, ref_encode, ref_piece, vocab_file, write_and_load
from llama_cpp import Llama

from oxide.tokenizer import StreamDecoder, Tokenizer
from oxide.tokenizer.base import Attr
from oxide.tokenizer.ugm import UGMTokenizer
from oxide.tokenizer.base import clean_spaces
from oxide.tokenizer.wpm import WPMTokenizer
from oxide.weights.gguf import read_metadata


FRAGMENTS = [
    # mixed case, accents precomposed and combining, dotted capital I, titlecase digraph
    "Hello", "WORLD", "McDonald's", "ÄPFEL", "naïve café", "Crème Brûlée", "e\u0301\u0302x", "İstanbul", "ǅemal",
    "Ωμέγα", "Ærøskøbing", "Straße", "ﬁ ligature",
    # scripts: CJK is split per ideograph, Hangul syllables lose all but their first jamo, Thai, Arabic
    "北京是中国的首都", "東京都は日本の首都です", "한국어 문장입니다", "ภาษาไทย", "مرحبا بالعالم", "नमस्ते दुनिया",
    "Привет, мир!", "\U00020000\U0002b920\uf900",
    # punctuation and symbols, ASCII and not
    "!!!", "...", "?!", "(a)", "[b]", "{c}", "a-b_c", "#tag", "@user", "$5", "100%", "a+b=c", "x^2", "|", "~",
    "“quoted”", "«guillemets»", "—", "…", "§", "©", "€", "→", "∀x", "'", " ' ", "'s", " 's", "'re", "'ve", "'m",
    "'t", "'ll", "don't", "y'all", " , ", " . ", " ?", " !",
    # digits
    "0", "42", "3.14159", "1,000,000", "2026-11-25", "0x1F", "333333333", "١٢٣", "१२३", "½", "²",
    # emoji, joiners, controls, private use, characters new in Unicode 15
    "🦙", "🚀", "👨\u200d👩\u200d👧", "👍🏽", "🇫🇷", "\u200b", "\u200d", "\ufeff", "\x00", "\x07", "\x1c", "\x1f",
    "\x7f", "\ue000", "\U000f0000", "\ufffd", "\u0cf3", "\U00011b00", "\U00013439", "\U0001e4ec", "\U00011f43",
    # special-token texts, whole and cut
    "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[unused5]", "##ing", "<s>", "</s>", "<unk>", "<pad>", "<mask>",
    "[SE", "P]", "▁", "▁the",
    # long words (llama.cpp has no length limit: a long word is cut into pieces, or is one [UNK])
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis" * 3, "x" * 150,
    "a\U000f0000b" * 20,
]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2003", "\u0085", "\u2028", "\u1680", "\u000b"]


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 20)):
        if rng.random() < 0.3:
            piece = rng.choice(WHITESPACE) * rng.randint(1, 4)
        else:
            piece = rng.choice(FRAGMENTS)
            if rng.random() < 0.1:
                piece = piece.upper() if rng.random() < 0.5 else piece * rng.randint(2, 20)
        parts.append(piece)
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


@pytest.fixture(scope="module")
def bert() -> tuple[Tokenizer, Llama]:
    path = vocab_file("bert-bge")
    return Tokenizer.from_gguf(path), Llama(path, vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def nomic() -> tuple[Tokenizer, Llama]:
    path = vocab_file("nomic-bert-moe")
    return Tokenizer.from_gguf(path), Llama(path, vocab_only=True, verbose=False)


def assert_encodes_like(tok: Tokenizer, ref: Llama, text: str, where: str) -> None:
    for parse_special in (False, True):
        for add_special in (False, True):
            assert tok.encode(text, add_special_tokens=add_special, parse_special=parse_special) == \
                ref_encode(ref, text, parse_special, add_special), \
                f"{where}: {text!r}, parse_special={parse_special}, add_special={add_special}"


def random_ids(rng: random.Random, tok: Tokenizer, n: int) -> list[int]:
    """Ids mixing normal tokens with the control, unknown and unused ones."""
    attrs = tok.vocab.attr_array
    rare = np.flatnonzero((attrs & (Attr.CONTROL | Attr.UNKNOWN | Attr.UNUSED | Attr.USER_DEFINED)) != 0).tolist()
    ids = [rng.choice(rare) if rng.random() < 0.2 else rng.randrange(tok.vocab_size) for _ in range(n)]
    if rng.random() < 0.5 and tok.bos_id is not None:
        ids.insert(0, tok.bos_id)
    return ids


# --- WordPiece (bert-bge) --------------------------------------------------------------------------

def test_bert_is_wordpiece(bert: tuple[Tokenizer, Llama]) -> None:
    tok, ref = bert
    vocab = ref._model.vocab
    assert isinstance(tok, WPMTokenizer) and tok.lowercase and tok.strip_accents
    assert tok.vocab_size == llama_cpp.llama_vocab_n_tokens(vocab) == 30522
    assert (tok.bos_id, tok.sep_id, tok.pad_id, tok.vocab.unk_id) == (101, 102, 0, 100)
    assert tok.bos_id == llama_cpp.llama_vocab_bos(vocab) and tok.sep_id == llama_cpp.llama_vocab_sep(vocab)
    assert tok.add_bos is True and tok.add_eos is False
    assert tok.special_tokens == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def test_bert_ggml_vocab_expected_tokenizations(bert: tuple[Tokenizer, Llama]) -> None:
    tok, _ = bert
    path = vocab_file("bert-bge")
    for text, expected in expected_tokenizations(path):
        assert tok.encode(text, parse_special=False) == expected, repr(text)


@pytest.mark.parametrize("text", FRAGMENTS + WHITESPACE + ["", "The Quick, Brown FOX!"])
def test_bert_fragments_match_llama_cpp(bert: tuple[Tokenizer, Llama], text: str) -> None:
    tok, ref = bert
    assert_encodes_like(tok, ref, text, "bert")
    assert_encodes_like(tok, ref, f"Ab{text}cD {text}", "bert")


def test_bert_random_texts_match_llama_cpp(bert: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = bert
    rng = random.Random(seed)
    for k in range(300):
        assert_encodes_like(tok, ref, random_text(rng), f"seed {seed}, text #{k}")


def test_bert_every_kind_of_code_point_matches_llama_cpp(bert: tuple[Tokenizer, Llama], seed: int) -> None:
    """Per-character normalisation (NFD first code point, case, accents, classes) on random code points
    of every plane, each alone between letters and as a word of its own."""
    tok, ref = bert
    rng = random.Random(seed + 1)
    points = [rng.randrange(0x30000) for _ in range(6000)] + [rng.randrange(0xE0000, 0x110000) for _ in range(300)]
    points += list(range(0x20)) + [0x130, 0x1C4, 0x1C5, 0xDF, 0x3000, 0x2FFC, 0x31EF, 0x1C89]
    chars = [chr(c) for c in points if not 0xD800 <= c < 0xE000]
    for start in range(0, len(chars), 200):
        chunk = chars[start:start + 200]
        text = " ".join(f"q{c}z {c}" for c in chunk)
        if tok.encode(text, parse_special=False) != ref_encode(ref, text, False):
            for c in chunk:  # name the character at fault
                one = f"q{c}z {c}"
                assert tok.encode(one, parse_special=False) == ref_encode(ref, one, False), \
                    f"seed {seed}: U+{ord(c):04X} {unicodedata.name(c, '?')}"
            raise AssertionError(f"seed {seed}: characters agree alone but not together: {chunk!r}")


def test_bert_special_tokens_written_in_text(bert: tuple[Tokenizer, Llama]) -> None:
    tok, ref = bert
    text = "Paris is the [MASK] of France.[SEP]It is big"
    ids = tok.encode(text, add_special_tokens=True)
    assert ids == ref_encode(ref, text, True, add_special=True)
    assert ids[0] == 101 and ids[-1] == 102 and 103 in ids and ids.count(102) == 2
    plain = tok.encode(text, parse_special=False)
    assert plain == ref_encode(ref, text, False) and 103 not in plain and 102 not in plain
    assert tok.encode("", add_special_tokens=True) == ref_encode(ref, "", False, add_special=True) == [101, 102]


def test_bert_unknown_words(bert: tuple[Tokenizer, Llama]) -> None:
    tok, ref = bert
    # A word with a character no token covers is one [UNK], however long; the words around it are kept.
    text = "good " + "ab\U0001f999" * 50 + " day \U0001f999\U000f0001"  # private use is dropped
    ids = tok.encode(text)
    assert ids == ref_encode(ref, text, True)
    assert ids.count(100) == 2 and len(ids) == 4


def test_bert_decode_matches_llama_detokenize(bert: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = bert
    rng = random.Random(seed + 2)
    assert_decode_matches(tok, ref, seed, lambda: random_text(rng), lambda: random_ids(rng, tok, rng.randint(1, 30)))


def test_bert_decode_space_clean_up(bert: tuple[Tokenizer, Llama], seed: int) -> None:
    """llama.cpp's clean-up passes, on ids dense in spaces, apostrophes and ``?!.,``."""
    tok, ref = bert
    texts = ["▁?", "▁!", "▁.", "▁,", "▁'", "'", "▁s", "s", "m", "▁re", "re", "ve", "▁t", "d", "ll", "▁a", "?", ","]
    pool = [tok.vocab.token_to_id[t] for t in texts] + [101, 102]
    rng = random.Random(seed + 3)
    for k in range(400):
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref_decode(ref, ids, skip), f"seed {seed}, {ids}"
    assert clean_spaces(" a , b ' c 's d ' ' e 're 't") == " a, b'c's d'' e're 't"


def test_bert_token_to_piece_matches_llama_cpp(bert: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = bert
    rng = random.Random(seed + 4)
    for token_id in rng.sample(range(tok.vocab_size), 500) + [0, 1, 100, 101, 102, 103, 1010, 7592]:
        assert tok.token_bytes(token_id) == ref_piece(ref, token_id), token_id
        assert tok.token_to_piece(token_id) == ref_piece(ref, token_id).decode()


def test_bert_lossy_and_lossless(bert: tuple[Tokenizer, Llama], seed: int) -> None:
    """Case, accents, controls and whitespace are lost; lower-case words with ``?!.,`` attached come
    back, after the leading space llama.cpp's decoding keeps."""
    tok, ref = bert
    lossy = "Crème  BRÛLÉE\tx\u200by"
    assert tok.decode(tok.encode(lossy)) == ref_decode(ref, ref_encode(ref, lossy, True), False) == " creme brulee xy"
    rng = random.Random(seed + 5)
    words = [t[1:] for t in tok.vocab.tokens if t[:1] == "▁" and t[1:].isascii() and t[1:].isalpha()
             and t[1:].islower()]
    for k in range(200):
        text = " ".join(rng.choice(words) + rng.choice(["", "", "", ".", ",", "!", "?", "..."])
                        for _ in range(rng.randint(1, 12)))
        assert tok.decode(tok.encode(text)) == " " + text, f"seed {seed}, {text!r}"
        assert tok.decode(tok.encode(text, add_special_tokens=True), skip_special_tokens=True) == " " + text


def test_bert_stream_renders_each_token_like_llama_cpp(bert: tuple[Tokenizer, Llama], seed: int) -> None:
    """Streaming concatenates llama.cpp's pieces; it equals ``decode`` where the clean-up has nothing
    to remove."""
    tok, ref = bert
    rng = random.Random(seed + 6)
    for k in range(100):
        ids = tok.encode(random_text(rng))
        stream = StreamDecoder(tok, skip_special_tokens=False)
        text = "".join(stream.push(i) for i in ids) + stream.flush()
        assert text == b"".join(ref_piece(ref, i) for i in ids).decode("utf-8", "replace"), f"seed {seed}, {ids}"
        if clean_spaces(text) == text:
            assert text == tok.decode(ids)


# --- unigram (nomic-bert-moe) ----------------------------------------------------------------------

def test_nomic_is_unigram(nomic: tuple[Tokenizer, Llama]) -> None:
    tok, ref = nomic
    vocab = ref._model.vocab
    assert isinstance(tok, UGMTokenizer) and tok.charsmap is not None and tok.remove_extra_whitespaces
    assert tok.vocab_size == llama_cpp.llama_vocab_n_tokens(vocab) == 250048
    assert (tok.bos_id, tok.vocab.eos_id, tok.vocab.unk_id) == (llama_cpp.llama_vocab_bos(vocab),
                                                                 llama_cpp.llama_vocab_eos(vocab), 3)
    assert tok.add_bos and tok.add_eos and tok.vocab.add_space_prefix


def test_nomic_ggml_vocab_inputs_match_llama_cpp(nomic: tuple[Tokenizer, Llama]) -> None:
    """The bert-bge test inputs (no expected file exists for this vocabulary)."""
    tok, ref = nomic
    for text, _ in expected_tokenizations(vocab_file("bert-bge")):
        assert_encodes_like(tok, ref, text, "nomic")


@pytest.mark.parametrize("text", ["", " ", "ｆｕｌｌｗｉｄｔｈ　①②㈱ ﬁ ㍿", "  a  b  ", "Hello, World!",
                                  "<s>x</s><mask>y<unk><pad>", "\u3000\u00a0x\t\ty", "e\u0301 é", "\x00a\x00"])
def test_nomic_fixed_texts_match_llama_cpp(nomic: tuple[Tokenizer, Llama], text: str) -> None:
    tok, ref = nomic
    assert_encodes_like(tok, ref, text, "nomic")


def test_nomic_random_texts_match_llama_cpp(nomic: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = nomic
    rng = random.Random(seed + 8)
    for k in range(300):
        assert_encodes_like(tok, ref, random_text(rng), f"seed {seed}, text #{k}")


def test_nomic_normaliser_on_random_code_points(nomic: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = nomic
    rng = random.Random(seed + 9)
    points = [rng.randrange(0x30000) for _ in range(3000)] + list(range(0xFF00, 0xFF60)) + list(range(0x2460, 0x24A0))
    chars = [chr(c) for c in points if not 0xD800 <= c < 0xE000]
    for start in range(0, len(chars), 100):
        text = "".join(f"{c}a{c}{c} " for c in chars[start:start + 100])
        assert tok.encode(text, parse_special=False) == ref_encode(ref, text, False), f"seed {seed}: {text!r}"


def test_nomic_decode_matches_llama_detokenize(nomic: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = nomic
    rng = random.Random(seed + 10)
    assert_decode_matches(tok, ref, seed, lambda: random_text(rng), lambda: random_ids(rng, tok, rng.randint(1, 30)))
    for token_id in rng.sample(range(tok.vocab_size), 300) + [0, 1, 2, 3, 6, 250001, 250047]:
        assert tok.token_bytes(token_id) == ref_piece(ref, token_id), token_id


def test_nomic_roundtrip_of_normalised_text(nomic: tuple[Tokenizer, Llama], seed: int) -> None:
    """Text the normaliser leaves alone (single spaces, no leading/trailing space) and that needs no
    ``<unk>`` comes back whole."""
    tok, _ = nomic
    rng = random.Random(seed + 11)
    checked = 0
    for k in range(200):
        text = " ".join(random_text(rng).split())
        ids = tok.encode(text, parse_special=False)
        if not text or tok.normalize(text).decode().replace("▁", " ")[1:] != text or tok.vocab.unk_id in ids:
            continue
        assert tok.decode(ids) == text, f"seed {seed}, {text!r}"
        # After a skipped BOS, llama.cpp keeps the space the normaliser put before the first word.
        with_bos = tok.encode(text, add_special_tokens=True, parse_special=False)
        assert tok.decode(with_bos, skip_special_tokens=True) == " " + text, f"seed {seed}, {text!r}"
        checked += 1
    assert checked > 5, f"seed {seed}: only {checked} texts were lossless"


# --- unigram variants: the other whitespace modes, user-defined tokens, no normaliser ---------------

@pytest.fixture(scope="module", params=[(False, True, True), (False, False, True), (True, True, False)],
                ids=["spaces_kept+prefix", "spaces_kept", "no_charsmap"])
def ugm_variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Llama]:
    """nomic-bert-moe's first 30000 tokens with some retyped as user-defined (score 0 for the search,
    kept whole by the normaliser), written with the given remove_extra_whitespaces / add_space_prefix,
    with or without the precompiled charsmap."""
    remove_extra, prefix, charsmap = request.param
    metadata = read_metadata(vocab_file("nomic-bert-moe"))
    n = 30000
    tokens = list(metadata["tokenizer.ggml.tokens"][:n])
    types = np.asarray(metadata["tokenizer.ggml.token_type"][:n]).copy()
    for text in ("▁de", "ing", "▁the", "ab", "ﬁ"):
        if text not in tokens:
            tokens[n - 1 - len(text)] = text
        types[tokens.index(text)] = 4
    path = str(tmp_path_factory.mktemp("ugm") / "variant.gguf")
    writer = gguf.GGUFWriter(path, "t5")
    writer.add_tokenizer_model("t5")
    writer.add_token_list(tokens)
    writer.add_token_scores(np.asarray(metadata["tokenizer.ggml.scores"][:n]).tolist())
    writer.add_token_types(types.tolist())
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(3)
    writer.add_add_space_prefix(prefix)
    writer.add_remove_extra_whitespaces(remove_extra)
    if charsmap:
        writer.add_precompiled_charsmap(bytes(np.asarray(metadata["tokenizer.ggml.precompiled_charsmap"],
                                                         dtype=np.uint8)))
    return write_and_load(writer, path)


def test_ugm_variants_match_llama_cpp(ugm_variant: tuple[Tokenizer, Llama], seed: int) -> None:
    tok, ref = ugm_variant
    rng = random.Random(seed + 12)
    for text in ["  x  ", "ab abab ﬁ the  the", "\t", ""]:
        assert_encodes_like(tok, ref, text, "variant")
    for k in range(150):
        assert_encodes_like(tok, ref, random_text(rng), f"seed {seed}, text #{k}")
    for k in range(100):
        ids = random_ids(rng, tok, rng.randint(1, 20))
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref_decode(ref, ids, skip), f"seed {seed}, {ids}"

