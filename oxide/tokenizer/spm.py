"""SentencePiece vocabularies (``tokenizer.ggml.model == "llama"``: Llama 1/2, Gemma, Phi-3, ...),
tokenized as llama.cpp's ``llm_tokenizer_spm`` does.

For each raw-text part (special tokens are already cut out by :meth:`Tokenizer._partition`):

1. A space is prepended when ``tokenizer.ggml.add_space_prefix`` is true (the default) and the part
   starts the text or follows a special token; every ``" "`` becomes ``"▁"`` (U+2581).
2. The part is split into characters. The adjacent pair whose concatenation is a vocabulary token
   with the highest score is merged (ties: the leftmost pair), again and again until no adjacent
   pair forms a token: a heap of candidate pairs over a linked list of symbols, entries made stale
   by an earlier merge being skipped when popped.
3. Each remaining symbol is its token; a character outside the vocabulary becomes its UTF-8 bytes
   as ``<0xXX>`` tokens (or ``<unk>`` when the vocabulary has no byte tokens).

Merges cannot cross a position just before a ``"▁"`` unless some token has ``"▁"`` after its first
character preceded by the same text, so the part is cut into words there and each word's ids are
cached: the result is identical to merging the whole part at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import TokenizerError
from ..once import locked_cached_property
from .base import Vocab, VocabTokenizer, WordCache, merge_pairs, symbols_of

SPACE = "▁"  # U+2581, SentencePiece's visible space
_PIECES = re.compile(f"[^{SPACE}]+|{SPACE}[^{SPACE}]*")  # each piece starts at a ▁ (or at the text start)


class SPMTokenizer(VocabTokenizer):
    """SentencePiece BPE: merges by token score, byte fallback.

    Runs a GGUF ``llama`` vocabulary (see the module docstring)."""


    def __init__(self, vocab: Vocab) -> None:
        super().__init__(vocab)
        self._word_ids_cached = WordCache(self._merge)

    @classmethod
    def _from_metadata(cls, metadata: Mapping[str, Any]) -> SPMTokenizer:
        vocab = Vocab(metadata, defaults={"bos": 1, "eos": 2, "unk": 0, "pad": None},
                      add_bos=True, add_eos=False, add_space_prefix=True)
        return cls(vocab)

    @locked_cached_property
    def _byte_ids(self) -> list[int | None]:
        """byte -> id: the <0xXX> token, else llama.cpp's fallback to the one-byte text itself (a byte
        >= 0x80 alone is not UTF-8; such texts are read with surrogateescape)."""
        get = self.vocab.token_to_id.get
        return [get(f"<0x{b:02X}>", get(chr(b) if b < 0x80 else chr(0xDC00 + b))) for b in range(256)]

    @locked_cached_property
    def _glue(self) -> tuple[frozenset[str], tuple[int, ...]]:
        """Texts that, ending a word, may merge with the next ``"▁"``: every ``t[:k]`` with ``t[k] == "▁"``,
        ``k > 0``, over the vocabulary (and their lengths). The texts are read as the keys of the text -> id
        map, which encoding builds anyway, rather than decoded a second time."""
        glue = set()
        for t in self.vocab.token_to_id:
            k = t.find(SPACE, 1)
            while k > 0:
                glue.add(t[:k])
                k = t.find(SPACE, k + 1)
        return frozenset(glue), tuple(sorted({len(g) for g in glue}))

    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        if after_special and self.vocab.add_space_prefix:
            text = " " + text
        return [i for word in self._words(text.replace(" ", SPACE)) for i in self._word_ids_cached(word)]

    def _words(self, text: str) -> list[str]:
        """``text`` cut before each ``"▁"`` where no vocabulary token can span the cut."""
        pieces = _PIECES.findall(text)
        glue, lengths = self._glue
        if not glue:
            return pieces
        words = []
        word = pieces[0]
        for piece in pieces[1:]:
            if any(word[-k:] in glue for k in lengths):
                word += piece
            else:
                words.append(word)
                word = piece
        words.append(word)
        return words

    def _merge(self, word: str) -> list[int]:
        """Ids of one word by greedy highest-score merging (llama.cpp's ``llm_tokenizer_spm_session``)."""
        get = self.vocab.token_to_id.get
        if len(word) == 1:
            token = get(word)
            return [token] if token is not None else self._fallback(word)
        scores = self.vocab.scores

        def priority(left: str, right: str) -> float | None:
            token = get(left + right)
            return None if token is None else -scores[token]   # the highest score merges first

        out: list[int] = []
        for symbol in symbols_of(word, merge_pairs(word, priority)):
            token = get(symbol)
            if token is not None:
                out.append(token)
            else:  # only single characters can be missing: merged symbols are tokens
                out.extend(self._fallback(symbol))
        return out

    def _fallback(self, char: str) -> list[int]:
        """A character outside the vocabulary: its UTF-8 bytes as byte tokens, else ``<unk>``."""
        ids = [self._byte_ids[b] for b in char.encode("utf-8", "surrogatepass")]
        if None in ids:
            if self.vocab.unk_id is None:
                raise TokenizerError(
                    f"character {char!r} is not in the vocabulary, which has neither byte tokens <0xXX> "
                    f"nor an unknown token (tokenizer.ggml.unknown_token_id); remove it from the text"
                )
            return [self.vocab.unk_id]
        return ids  # type: ignore[return-value]

    def _normal_piece(self, text: str) -> bytes:
        return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")
