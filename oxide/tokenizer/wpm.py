"""WordPiece vocabularies (``tokenizer.ggml.model == "bert"``: BERT, BGE, MiniLM, ...), tokenized as
llama.cpp's ``llm_tokenizer_wpm`` does.

The converter stores word-initial pieces with a ``"▁"`` (U+2581) prefix and continuation pieces
(``##ing`` in the Hugging Face vocabulary) without one. For each raw-text part (special tokens are
already cut out by :meth:`VocabTokenizer._partition`):

1. Each code point ``c`` is mapped on its own (no context): with ``strip_accents``, ``c`` becomes the
   first code point of its canonical decomposition (``NFD(c)[0]``: ``é`` -> ``e``, a Hangul syllable
   -> its leading jamo). Then whitespace ends the current word; NUL, U+FFFD and control/format
   characters (``\\p{C}``) are dropped; with ``strip_accents`` combining marks (``\\p{M}``) are
   dropped; the rest is lower-cased (simple case mapping) when ``lowercase``. Punctuation
   (``\\p{P}``), ASCII symbols and CJK ideographs form one-character words; other characters extend
   the current word.
2. Each word, prefixed with ``"▁"``, is cut greedily into the longest vocabulary tokens from left
   to right; if some position starts no token, the whole word becomes ``[UNK]``. There is no length
   limit on words (Hugging Face turns words over 100 characters into ``[UNK]``; llama.cpp does not).

``encode(..., add_special_tokens=True)`` wraps the ids in ``[CLS] ... [SEP]`` (the BOS and separator
ids) whatever ``add_bos_token`` / ``add_eos_token`` say, as llama.cpp does for this model.

Decoding renders ``"▁"`` as a space and then applies llama.cpp's ``clean_up_tokenization_spaces``
passes (:func:`clean_up_spaces`). Streamed text (:class:`StreamDecoder`) is rendered token by token
and keeps the spaces those passes would remove, as they depend on the characters that follow.
WordPiece is lossy: case, accents, control characters and the amount and kind of whitespace are
lost, and decoded text starts with a space.

Character classes come from Python's :mod:`unicodedata` with llama.cpp's exceptions: its whitespace
set (U+001C..U+001F are not whitespace), and the code points its Unicode 15.1 tables know but
Python's older database leaves unassigned (:data:`_NEWER_CLASSES`). A Python whose database is newer
than 15.1 (3.14: Unicode 16) would class the characters added since then, which llama.cpp treats as
unassigned letters.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import TokenizerError
from .base import Vocab, VocabTokenizer, WordCache, _metadata_id, clean_spaces
from .interface import gguf_values

SPACE = "▁"  # U+2581, the word-start marker of the converted vocabulary
KEY_SEP = "tokenizer.ggml.seperator_token_id"  # sic: llama.cpp's spelling
KEY_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
KEY_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"

# llama.cpp's \s: C isspace() plus the Unicode White_Space property.
_WHITESPACE = frozenset(map(chr, [
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
]))
# (first, last, general category class) of code points assigned by Unicode 15.0/15.1 that matter here
# (marks, punctuation, format characters); used when unicodedata predates them.
_NEWER_CLASSES = (
    (0x00CF3, 0x00CF3, "M"), (0x00ECE, 0x00ECE, "M"), (0x10EFD, 0x10EFF, "M"), (0x11241, 0x11241, "M"),
    (0x11B00, 0x11B09, "P"), (0x11F00, 0x11F01, "M"), (0x11F03, 0x11F03, "M"), (0x11F34, 0x11F3A, "M"),
    (0x11F3E, 0x11F42, "M"), (0x11F43, 0x11F4F, "P"), (0x13439, 0x1343F, "C"), (0x13440, 0x13440, "M"),
    (0x13447, 0x13455, "M"), (0x1E08F, 0x1E08F, "M"), (0x1E4EC, 0x1E4EF, "M"),
)
# CJK ideograph blocks that are split into one-character words (llama.cpp's list, which follows the
# Hugging Face BERT tokenizer, including its 0x2B920 start).
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _category_class(c: str) -> str:
    """First letter of the general category as llama.cpp's tables have it; ``"U"`` for unassigned."""
    category = unicodedata.category(c)
    if category == "Cn":
        cp = ord(c)
        for first, last, cls in _NEWER_CLASSES:
            if first <= cp <= last:
                return cls
        return "U"
    return category[0]


def _is_cjk(cp: int) -> bool:
    return any(first <= cp <= last for first, last in _CJK)


class _CharMap(dict):
    """``str.translate`` table, filled on demand: code point -> ``""`` (dropped), ``" "`` (word break),
    ``" x "`` (a one-character word) or ``x`` (extends the word); see the module docstring, step 1."""

    def __init__(self, lowercase: bool, strip_accents: bool) -> None:
        super().__init__()
        self.lowercase = lowercase
        self.strip_accents = strip_accents

    def __missing__(self, cp: int) -> str:
        c = chr(cp)
        if self.strip_accents:
            c = unicodedata.normalize("NFD", c)[0]
        cls = _category_class(c)
        if c in _WHITESPACE:
            out = " "
        elif c in "\0\ufffd" or cls == "C" or (self.strip_accents and cls == "M"):
            out = ""
        else:
            out = c.lower()[0] if self.lowercase else c  # [0]: the simple mapping (U+0130 -> "i")
            if cls == "P" or (ord(c) < 0x7F and cls == "S") or _is_cjk(ord(c)):
                out = f" {out} "
        self[cp] = out
        return out


class WPMTokenizer(VocabTokenizer):
    """WordPiece: BERT normalisation, then greedy longest-match pieces with `##` continuations.

    Runs a GGUF ``bert`` vocabulary (see the module docstring).

    ``sep_id``: the separator appended by ``encode(..., add_special_tokens=True)``.
    """


    def __init__(self, vocab: Vocab, sep_id: int | None, lowercase: bool, strip_accents: bool) -> None:
        super().__init__(vocab)
        self.sep_id = sep_id
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self._charmap = _CharMap(lowercase, strip_accents)
        self._max_len = max(map(len, vocab.tokens))  # in characters
        self._word_ids_cached = WordCache(self._cut)
        if vocab.unk_id is None:
            raise TokenizerError("a WordPiece vocabulary needs an unknown token: set "
                                 "tokenizer.ggml.unknown_token_id (llama.cpp's default, 100, is outside this one)")

    @classmethod
    def _from_metadata(cls, metadata: Mapping[str, Any]) -> WPMTokenizer:
        vocab = Vocab(metadata, defaults={"bos": 101, "eos": None, "unk": 100, "pad": 0},
                      add_bos=True, add_eos=False, add_space_prefix=False)
        meta = gguf_values(metadata)
        lowercase = meta.flag(KEY_LOWERCASE, True)
        strip_accents = meta.flag(KEY_STRIP_ACCENTS, lowercase)
        sep_id = _metadata_id(metadata, KEY_SEP, 102, len(vocab.tokens))
        return cls(vocab, sep_id, lowercase, strip_accents)

    @property
    def add_bos(self) -> bool:
        """``encode(..., add_special_tokens=True)`` always starts with ``[CLS]`` (the BOS id)."""
        return True

    @property
    def add_eos(self) -> bool:
        """It ends with the separator ``[SEP]``, not an end-of-sequence token."""
        return False

    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens``: ``[CLS]`` first and ``[SEP]`` last."""
        ids = self._encode_parts(self._partition(text, parse_special))
        if add_special_tokens:
            if self.vocab.bos_id is None or self.sep_id is None:
                raise TokenizerError("adding [CLS]/[SEP] needs tokenizer.ggml.bos_token_id and "
                                     f"{KEY_SEP} inside the vocabulary; fix the file's metadata")
            ids = [self.vocab.bos_id, *ids, self.sep_id]
        return ids

    def words(self, text: str) -> list[str]:
        """The normalised words of one raw-text part (step 1 of the module docstring)."""
        return [w for w in text.translate(self._charmap).split(" ") if w]

    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        return [i for word in self.words(text) for i in self._word_ids_cached(word)]

    def _cut(self, word: str) -> list[int]:
        """Greedy longest-match of ``"▁" + word``; ``[UNK]`` when some position starts no token."""
        get = self.vocab.token_to_id.get
        text = SPACE + word
        n = len(text)
        ids: list[int] = []
        i = 0
        while i < n:
            for j in range(min(n, i + self._max_len), i, -1):
                token = get(text[i:j])
                if token is not None:
                    ids.append(token)
                    i = j
                    break
            else:
                return [self.vocab.unk_id]  # type: ignore[list-item]
        return ids

    # decoding -------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (llama.cpp's ``llama_detokenize``, its space clean-up included)."""
        return clean_spaces(super().decode(ids, skip_special_tokens))

    def _normal_piece(self, text: str) -> bytes:
        return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")
