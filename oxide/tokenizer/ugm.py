"""Unigram vocabularies (``tokenizer.ggml.model == "t5"``: T5, XLM-RoBERTa, nomic-bert-moe, ...),
tokenized as llama.cpp's ``llm_tokenizer_ugm`` does.

For each raw-text part (special tokens are already cut out by :meth:`VocabTokenizer._partition`),
working on UTF-8 bytes:

1. **Normalise.** At each position the longest prefix of a user-defined token is kept as it is
   (llama.cpp keeps prefixes too, not only whole tokens: with a user-defined ``"▁x"``, the first byte
   of any character starting with byte ``E2`` is cut off, and its other bytes become U+FFFD); otherwise the
   longest input prefix found in the SentencePiece normaliser (``tokenizer.ggml.precompiled_charsmap``,
   :class:`CharsMap`) is replaced by its replacement string; otherwise one character is copied.
   Spaces in the result become ``"▁"``: with ``remove_extra_whitespaces`` every run of non-spaces gets
   one ``"▁"`` before it and spaces vanish; otherwise each space is one ``"▁"`` and, with
   ``add_space_prefix``, a ``"▁"`` goes before the first non-space of the part.
2. **Viterbi.** ``best[e]`` is the highest sum of scores over tokenizations of the first ``e`` bytes:
   for each character start ``s`` in order and each vocabulary token ``t`` (normal, user-defined with
   score 0, or unused) equal to ``text[s:e]``, ``best[e] = max(best[e], best[s] + score(t))`` (a tie keeps
   the earlier candidate); a character no single token covers may also be ``<unk>`` with score
   ``min(normal scores) - 10`` (in float32). Sums are in double precision, in this order.
3. The best path is read back from the end; runs of ``<unk>`` become one ``<unk>``.

Decoding renders ``"▁"`` as a space and, when ``add_space_prefix``, drops the first piece's leading
space (:class:`PieceRenderer`). The normaliser makes unigram tokenization lossy (NFKC-like folding,
whitespace runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import TokenizerError
from .base import Attr, Vocab, VocabTokenizer
from .interface import gguf_values

SPACE = "▁"  # U+2581
_SPACE_BYTES = SPACE.encode()
KEY_CHARSMAP = "tokenizer.ggml.precompiled_charsmap"
KEY_REMOVE_EXTRA_WS = "tokenizer.ggml.remove_extra_whitespaces"
_UNKNOWN_PENALTY = np.float32(10.0)
_REPLACEMENT = "\ufffd".encode()
# Length of a UTF-8 sequence from its first byte's high nibble (continuation bytes count as 1).
_UTF8_LEN = (1,) * 12 + (2, 2, 3, 4)


def _utf8_length(data: bytes, pos: int) -> int:
    """Length of the UTF-8 sequence at ``pos``, 0 when it is cut or malformed (llama.cpp's check: the
    lead byte's length and continuation bytes only; a prefix of a user-defined token may have ended
    inside a character)."""
    lead = data[pos]
    if lead < 0x80:
        return 1
    length = next((k for k, bit in ((2, 0x20), (3, 0x10), (4, 0x08)) if lead & 0x40 and not lead & bit), 0)
    if not length or pos + length > len(data):
        return 0
    return length if all(b & 0xC0 == 0x80 for b in data[pos + 1:pos + length]) else 0


class CharsMap:
    """SentencePiece's precompiled normaliser: a little-endian ``uint32`` blob size, then a
    XOR-compressed compact double array (XCDA; Kanda 2018) over input bytes, then NUL-terminated
    replacement strings.

    Node entry bits: BASE in bits 10..30 (shifted left by 8 when bit 9 is set), LEAF in bit 8, LCHECK
    (the byte leading to the node) in bits 0..7 plus bit 31; a leaf's ``BASE``-linked entry holds the
    offset of its replacement in its low 31 bits. A child of node ``s`` by byte ``c`` is at ``s ^ c``.
    """

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 4:
            raise TokenizerError(f"GGUF metadata key {KEY_CHARSMAP!r} is too short ({len(blob)} bytes); "
                                 f"the file is corrupt: convert it again")
        size = int.from_bytes(blob[:4], "little")
        if size + 4 >= len(blob) or size % 4:
            raise TokenizerError(f"GGUF metadata key {KEY_CHARSMAP!r}: its double array of {size} bytes does "
                                 f"not fit in {len(blob)} bytes; the file is corrupt: convert it again")
        self.nodes: list[int] = np.frombuffer(blob, dtype="<u4", count=size // 4, offset=4).tolist()
        self.replacements = blob[4 + size:]

    def _base(self, index: int) -> int:
        node = self.nodes[index]
        return (node >> 10) << ((node & (1 << 9)) >> 6)

    def longest_prefix(self, data: bytes, start: int) -> tuple[int, bytes]:
        """Length of the longest prefix of ``data[start:]`` the map replaces (0 if none) and its
        replacement."""
        nodes = self.nodes
        try:
            index = self._base(0)
            length = 0
            value = 0
            for pos in range(start, len(data)):
                c = data[pos]
                if c == 0:
                    break
                index ^= c
                node = nodes[index]
                if node & 0x800000FF != c:
                    break
                index ^= self._base(index)
                if node & 0x100:  # leaf: the replacement's offset sits at the next index
                    length = pos - start + 1
                    value = nodes[index] & 0x7FFFFFFF
        except IndexError:
            raise TokenizerError(f"GGUF metadata key {KEY_CHARSMAP!r} points outside its double array; "
                                 f"the file is corrupt: convert it again") from None
        if not length:
            return 0, b""
        end = self.replacements.find(b"\0", value)
        if value >= len(self.replacements) or end < 0:
            raise TokenizerError(f"GGUF metadata key {KEY_CHARSMAP!r}: replacement at offset {value} is outside "
                                 f"the map or unterminated; the file is corrupt: convert it again")
        return length, self.replacements[value:end]


class UGMTokenizer(VocabTokenizer):
    """Unigram: best-scoring segmentation (Viterbi) after the precompiled charsmap normaliser.

    Runs a GGUF ``t5`` vocabulary (see the module docstring)."""

    def __init__(self, vocab: Vocab, charsmap: CharsMap | None, remove_extra_whitespaces: bool) -> None:
        super().__init__(vocab)
        if vocab.unk_id is None:
            raise TokenizerError("a unigram vocabulary needs an unknown token: set tokenizer.ggml.unknown_token_id")
        self.charsmap = charsmap
        self.remove_extra_whitespaces = remove_extra_whitespaces
        attrs = vocab.attr_array
        normal = (attrs & Attr.NORMAL) != 0
        user = (attrs & Attr.USER_DEFINED) != 0
        matchable = np.flatnonzero(normal | user | ((attrs & Attr.UNUSED) != 0)).tolist()
        # bytes -> (id, score) of the tokens the Viterbi search may use
        self._tokens: dict[bytes, tuple[int, float]] = {
            vocab.tokens[i].encode("utf-8", "surrogateescape"): (i, 0.0 if user[i] else vocab.scores[i])
            for i in matchable
        }
        self._max_len = max(map(len, self._tokens), default=0)
        # Every byte prefix of a user-defined token: llama.cpp's normaliser keeps the longest of these
        # found at a position, whether or not it is a whole token (and even if it ends inside a character).
        user_texts = [t.encode("utf-8", "surrogateescape") for t, u in zip(vocab.tokens, user) if u]
        self._user_prefixes = {t[:k] for t in user_texts for k in range(1, len(t) + 1)}
        self._user_lengths = sorted({len(t) for t in self._user_prefixes}, reverse=True)
        scores = np.asarray(vocab.scores, dtype=np.float32)[normal]
        low = scores.min() if len(scores) else np.float32(np.finfo(np.float32).max)
        self._unknown_score = float(np.float32(low) - _UNKNOWN_PENALTY)

    @classmethod
    def _from_metadata(cls, metadata: Mapping[str, Any]) -> UGMTokenizer:
        vocab = Vocab(metadata, defaults={"bos": None, "eos": 1, "unk": 2, "pad": 0},
                      add_bos=False, add_eos=True, add_space_prefix=False)
        blob = metadata.get(KEY_CHARSMAP)
        charsmap = None
        if blob is not None and len(blob):
            array = np.asarray(blob)
            if array.ndim != 1 or array.dtype.kind not in "iu" or array.dtype.itemsize != 1:
                raise TokenizerError(f"GGUF metadata key {KEY_CHARSMAP!r} must be an array of bytes, "
                                     f"got {array.dtype}; the file is corrupt: convert it again")
            charsmap = CharsMap(array.tobytes())
        return cls(vocab, charsmap, gguf_values(metadata).flag(KEY_REMOVE_EXTRA_WS, False))

    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        return self._viterbi(self.normalize(text))

    def normalize(self, text: str) -> bytes:
        """UTF-8 bytes of one raw-text part after step 1 of the module docstring."""
        data = text.encode("utf-8", "surrogatepass")
        n = len(data)
        merge = self.remove_extra_whitespaces
        prepend = self.vocab.add_space_prefix
        out = bytearray()
        in_word = False
        pos = 0
        while pos < n:
            piece, used = self._normalize_prefix(data, pos)
            for c in piece:
                if c != 0x20:
                    if not in_word:
                        in_word = True
                        if prepend or merge:
                            out += _SPACE_BYTES
                            prepend = False
                    out.append(c)
                else:
                    in_word = False
                    if not merge:
                        out += _SPACE_BYTES
            pos += used
        return bytes(out)

    def _normalize_prefix(self, data: bytes, pos: int) -> tuple[bytes, int]:
        """(normalised bytes, input bytes consumed) at ``pos``."""
        for k in self._user_lengths:
            if data[pos:pos + k] in self._user_prefixes:
                return data[pos:pos + k], k
        if self.charsmap is not None:
            length, replacement = self.charsmap.longest_prefix(data, pos)
            if length:
                return replacement, length
        k = _utf8_length(data, pos)
        return (data[pos:pos + k], k) if k else (_REPLACEMENT, 1)

    def _viterbi(self, text: bytes) -> list[int]:
        """Ids of the best-scoring tokenization of normalised ``text`` (steps 2 and 3)."""
        n = len(text)
        if not n:
            return []
        unk = self.vocab.unk_id
        tokens = self._tokens.get
        best = [-math.inf] * (n + 1)
        best[0] = 0.0
        back_id = [unk] * (n + 1)
        back_start = [0] * (n + 1)
        unknown_score = self._unknown_score
        max_len = self._max_len
        start = 0
        while start < n:
            char_len = min(_UTF8_LEN[text[start] >> 4], n - start)
            base = best[start]
            whole_char = False
            for end in range(start + 1, min(n, start + max_len) + 1):
                found = tokens(text[start:end])
                if found is None:
                    continue
                if end - start == char_len:
                    whole_char = True
                score = base + found[1]
                if score > best[end]:
                    best[end], back_id[end], back_start[end] = score, found[0], start
            if not whole_char:
                end = start + char_len
                score = base + unknown_score
                if score > best[end]:
                    best[end], back_id[end], back_start[end] = score, unk, start
            start += char_len
        ids: list[int] = []
        end = n
        previous_unknown = False
        while True:
            token = back_id[end]
            is_unknown = token == unk
            if not (previous_unknown and is_unknown):
                ids.append(token)
            if back_start[end] == 0:
                break
            previous_unknown = is_unknown
            end = back_start[end]
        ids.reverse()
        return ids

    def _normal_piece(self, text: str) -> bytes:
        return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")
