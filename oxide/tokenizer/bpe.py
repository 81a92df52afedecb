"""Byte-pair-encoding vocabularies (``tokenizer.ggml.model == "gpt2"``: GPT-2, Llama 3, Qwen, DeepSeek,
Falcon, StarCoder, Command-R, ...; and ``"gemma4"``), tokenized as llama.cpp's ``llm_tokenizer_bpe``
does.

For each raw-text part (special tokens are already cut out by :meth:`VocabTokenizer._partition`):

1. Gemma 4 style vocabularies (``escape_whitespace``) turn every space into ``"▁"`` (U+2581).
2. The pre-tokenizer named by ``tokenizer.ggml.pre`` cuts the text into words
   (:mod:`.pretokenize`; a missing key means ``default``, as in llama.cpp).
3. Each word is written in the vocabulary's alphabet: its UTF-8 bytes through GPT-2's byte-to-
   character map (byte ``b`` is ``chr(b)`` for the printable Latin-1 bytes, else ``chr(256 + k)`` for
   the k-th other byte), or its characters as they are (Gemma 4, ``byte_encode`` false).
4. With ``ignore_merges`` (Llama 3, ...), a word that is itself a token is that token. A Gemma 4 word
   made only of newlines that is a token is that token.
5. Otherwise the word starts as one symbol per character, and the adjacent pair with the lowest
   rank in ``tokenizer.ggml.merges`` (rank = position in the list; the first of duplicates counts)
   is merged, leftmost on ties, until no adjacent pair is a merge.
6. Each symbol is its token. A symbol outside the vocabulary becomes, for each of its UTF-8 bytes,
   the token whose text is that single byte (byte-level vocabularies) or ``<0xXX>`` (Gemma 4);
   bytes without such a token are dropped, as llama.cpp drops them.

Merges never cross a ``"▁"`` that no merge can join to the text before it, so Gemma 4 lines are cut
there and each piece is merged (and cached) on its own: the same result as merging the whole line.

``add_bos`` / ``add_eos`` follow the metadata, with llama.cpp's per-pre-tokenizer defaults (Gemma 4
always adds BOS). ``tokenizer.ggml.add_space_prefix`` only affects decoding: llama.cpp's BPE
tokenizer never prepends a space.

Decoding: normal tokens map their characters back to bytes (a character outside GPT-2's map is
rendered as llama.cpp renders it: ``[UNK_BYTE_0x..<token text>]``), or ``"▁"`` back to a space (Gemma
4); user-defined and control tokens are their text as is. ``decode`` then applies llama.cpp's
``clean_spaces`` passes where the pre-tokenizer asks for them (:func:`clean_spaces`), as
``llama_detokenize`` does; streamed text (:class:`StreamDecoder`) is rendered token by token, as
llama.cpp streams ``token_to_piece``, and keeps the spaces those passes would remove.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from operator import methodcaller
from typing import Any

from ..errors import TokenizerError
from ..log import get_logger
from .base import Vocab, VocabTokenizer, WordCache, clean_spaces, merge_pairs, symbols_of
from .interface import gguf_values
from .pretokenize import PreSpec, pre_spec, pre_tokenizer

log = get_logger("tokenizer")

KEY_MODEL = "tokenizer.ggml.model"
KEY_PRE = "tokenizer.ggml.pre"
KEY_MERGES = "tokenizer.ggml.merges"
SPACE = "▁"  # U+2581, Gemma 4's visible space


def _byte_to_char() -> list[str]:
    """GPT-2's byte -> character map: printable Latin-1 bytes stand for themselves, the other 68
    bytes (controls, space, DEL, NBSP, soft hyphen) take the characters from U+0100 in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    extra = iter(range(0x100, 0x200))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


BYTE_TO_CHAR = _byte_to_char()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_CHARS = str.maketrans({chr(b): c for b, c in enumerate(BYTE_TO_CHAR)})

_SPACE_RUN = re.compile(f"(?<!{SPACE}){SPACE}")  # the first "▁" of each run


class BPETokenizer(VocabTokenizer):
    """Byte-level BPE: merges by rank after the pre-tokenizer's regex split.

    Runs a GGUF ``gpt2`` or ``gemma4`` vocabulary (see the module docstring). ``pre``: the
    ``tokenizer.ggml.pre`` value in effect."""

    _HEAP_MIN_SYMBOLS = 64  # words at least this long are merged with a heap (O(n log n))
    _NO_MERGE = 1 << 62  # rank of a pair that is not a merge

    def __init__(self, vocab: Vocab, merges: Sequence[str], pre: str, spec: PreSpec) -> None:
        super().__init__(vocab)
        self.pre = pre
        self.spec = spec
        self._split = pre_tokenizer(spec.patterns).split
        self._ranks, self._sep = _merge_ranks(merges)
        self._word_ids_cached = WordCache(self._word_ids)
        get = vocab.token_to_id.get
        if spec.byte_encode:  # the token whose text is the single byte (bytes >= 0x80 only as surrogateescape)
            self._byte_ids = [get(chr(b) if b < 0x80 else chr(0xDC00 + b)) for b in range(256)]
        else:
            self._byte_ids = [get(f"<0x{b:02X}>") for b in range(256)]
        # Texts after which a "▁" may be merged into the same symbol: left parts of merges whose right
        # part starts with "▁". Gemma 4 lines are cut before the other "▁" that follow a character
        # other than "▁" (so left parts ending in "▁" never apply).
        self._glue: tuple[frozenset[str], tuple[int, ...]] | None = None
        if spec.escape_whitespace and not spec.ignore_merges:
            pairs = (_split_key(key, self._sep) for key in self._ranks if self._sep + SPACE in key)
            left = {a for a, b in pairs if b.startswith(SPACE) and not a.endswith(SPACE)}
            self._glue = frozenset(left), tuple(sorted({len(a) for a in left}))

    @classmethod
    def _from_metadata(cls, metadata: Mapping[str, Any]) -> BPETokenizer:
        meta = gguf_values(metadata)
        model = meta.string(KEY_MODEL)
        if model == "gemma4":  # llama.cpp ignores the file's pre-tokenizer for this model
            pre = "gemma4"
        else:
            pre = meta.string(KEY_PRE, "") or "default"
            if KEY_PRE not in metadata:
                log.warning("GGUF metadata has no %r: using llama.cpp's 'default' pre-tokenizer, which may "
                            "not be the model's; convert the model again for exact tokenization", KEY_PRE)
        spec = pre_spec(pre)
        if KEY_MERGES not in meta:
            raise TokenizerError(f"GGUF metadata key {KEY_MERGES!r} is missing: a BPE vocabulary needs its "
                                 f"merges. Convert the model again with llama.cpp's convert_hf_to_gguf.py")
        merges = meta.strings(KEY_MERGES)
        if model == "gemma4":
            defaults: dict[str, int | None] = {"bos": None, "eos": None, "unk": None, "pad": None}
        else:
            defaults = {"bos": 11 if spec.default_bos else None, "eos": 11, "unk": None, "pad": None}
        vocab = Vocab(metadata, defaults=defaults, add_bos=spec.add_bos, add_eos=False, add_space_prefix=False)
        if spec.newline_tokens and not vocab.add_bos:
            if vocab.bos_id is None:
                raise TokenizerError("a Gemma 4 vocabulary always adds BOS, but tokenizer.ggml.bos_token_id is "
                                     "not set to a token of the vocabulary; fix the file's metadata")
            vocab.add_bos = True
        return cls(vocab, merges, pre, spec)

    # encoding -------------------------------------------------------------------------------
    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        if self.spec.escape_whitespace:
            text = text.replace(" ", SPACE)
        out: list[int] = []
        for word in self._split(text):
            for piece in self._cut_at_spaces(word) if self._glue else (word,):
                out.extend(self._word_ids_cached(piece))
        return out

    def _cut_at_spaces(self, word: str) -> list[str]:
        """``word`` cut before each ``"▁"`` that no merge can join to the text before it."""
        glue, lengths = self._glue  # type: ignore[misc]
        if SPACE not in word:
            return [word]
        pieces = []
        last = 0
        for m in _SPACE_RUN.finditer(word, 1):  # fewer cuts are always safe: runs of "▁" stay whole
            i = m.start()
            if not any(word[max(last, i - k):i] in glue for k in lengths):
                pieces.append(word[last:i])
                last = i
        pieces.append(word[last:])
        return pieces

    def _word_ids(self, word: str) -> list[int]:
        """Token ids of one word (steps 3 to 6 of the module docstring)."""
        get = self.vocab.token_to_id.get
        spec = self.spec
        text = word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_CHARS) \
            if spec.byte_encode else word
        if spec.ignore_merges or (spec.newline_tokens and not text.strip("\n")):
            token = get(text)
            if token is not None:
                return [token]
        symbols = self._merge_heap(text) if len(text) >= self._HEAP_MIN_SYMBOLS else self._merge(text)
        out: list[int] = []
        for symbol in symbols:
            token = get(symbol)
            if token is not None:
                out.append(token)
            else:
                ids = (self._byte_ids[b] for b in symbol.encode("utf-8", "surrogatepass"))
                out.extend(i for i in ids if i is not None)
        return out

    def _merge(self, text: str) -> list[str]:
        """Symbols of ``text`` after merging, lowest rank first and leftmost on ties (llama.cpp's
        ``llm_tokenizer_bpe_session``): a rank list beside the symbol list, the minimum found by scan."""
        symbols = list(text)
        if len(symbols) < 2:
            return symbols
        rank = self._ranks.get
        sep, none = self._sep, self._NO_MERGE
        ranks = [rank(a + sep + b, none) for a, b in pairwise(symbols)]
        while True:
            best = min(ranks)
            if best == none:
                return symbols
            i = ranks.index(best)
            merged = symbols[i] = symbols[i] + symbols.pop(i + 1)
            del ranks[i]
            if not ranks:
                return symbols
            if i > 0:
                ranks[i - 1] = rank(symbols[i - 1] + sep + merged, none)
            if i < len(ranks):
                ranks[i] = rank(merged + sep + symbols[i + 1], none)

    def _merge_heap(self, text: str) -> list[str]:
        """:meth:`_merge` for long words, through the shared heap loop (:func:`merge_pairs`)."""
        rank = self._ranks.get
        sep = self._sep
        return symbols_of(text, merge_pairs(text, lambda left, right: rank(left + sep + right)))

    # decoding -------------------------------------------------------------------------------
    def _normal_piece(self, text: str) -> bytes:
        if self.spec.escape_whitespace:
            return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")
        out = bytearray()
        for c in text:
            b = CHAR_TO_BYTE.get(c)
            if b is not None:
                out.append(b)
            else:  # llama.cpp's rendering of a character outside the byte map
                out += b"[UNK_BYTE_0x" + c.encode("utf-8", "surrogateescape").hex().encode() \
                    + text.encode("utf-8", "surrogateescape") + b"]"
        return bytes(out)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` as ``llama_detokenize`` renders it, ``clean_spaces`` passes included."""
        text = super().decode(ids, skip_special_tokens)
        return clean_spaces(text) if self.spec.clean_spaces else text


def _merge_ranks(merges: Sequence[str]) -> tuple[dict[str, int], str]:
    """``tokenizer.ggml.merges`` -> (key -> rank, separator): the key of the pair ``(a, b)`` is
    ``a + separator + b``. llama.cpp splits each entry at its first space after the first character
    and keeps the first rank of a pair listed twice.

    When no entry has two spaces after its first character (every vocabulary seen), the entries
    themselves are the keys, separator ``" "``; otherwise the pairs are re-joined with a separator
    that occurs in no entry.
    """
    merges = list(merges)   # decoded once (a StringArray decodes on every pass): the entries become the keys
    count = methodcaller("count", " ", 1)
    if max(map(count, merges), default=0) <= 1:
        return dict(zip(reversed(merges), range(len(merges) - 1, -1, -1))), " "
    joined = "".join(merges)
    sep = next(chr(c) for c in range(1, 0x110000) if chr(c) not in joined)
    keys = []
    for m in merges:
        cut = m.find(" ", 1)
        keys.append(m[:cut] + sep + m[cut + 1:] if cut > 0 else sep)  # no space: llama.cpp's ("", "") pair
    return dict(zip(reversed(keys), range(len(keys) - 1, -1, -1))), sep


def _split_key(key: str, sep: str) -> tuple[str, str]:
    """The pair ``(a, b)`` of a key of :func:`_merge_ranks`."""
    cut = key.find(sep, 1) if sep == " " else key.find(sep)
    return (key[:cut], key[cut + 1:]) if cut >= 0 else ("", "")
