"""The tokenizer interface, and the vocabulary read from GGUF ``tokenizer.ggml.*`` metadata.

The behaviour reproduces llama.cpp (``src/llama-vocab.cpp``) so that token ids match its
``llama_tokenize`` / ``llama_detokenize`` exactly:

* Token types (``tokenizer.ggml.token_type``: 1 normal, 2 unknown, 3 control, 4 user-defined,
  5 unused, 6 byte) become attribute bit flags (:class:`Attr`), then llama.cpp's load-time fixes
  are applied: tokens whose text marks an end of turn / end of generation / fill-in-the-middle role
  (``<end_of_turn>``, ``</s>``, ``<|eot_id|>``, ...) are forced to *control* (except gpt-oss's
  ``<|end|>``, then user-defined, and Gemma 4's ``</s>``, then normal); for vocabularies named
  Phi-3 the special tokens swallow the whitespace after them (*rstrip*).
* Before the model-specific algorithm runs, special tokens written in the text are cut out whole
  (:meth:`VocabTokenizer._partition`): control and unknown tokens only when ``parse_special`` is true,
  user-defined tokens always. Longer tokens are cut first, each at its leftmost free occurrences.
* Decoding renders each token as bytes (control/unknown: their text, or nothing when special tokens
  are skipped; user-defined: their text; byte tokens ``<0xXX>``: that byte), removes one leading
  space of the first piece when the vocabulary adds a space prefix, and decodes UTF-8 with U+FFFD
  for invalid sequences.

The concrete algorithms live in submodules (``spm.py`` for ``tokenizer.ggml.model == "llama"``,
``bpe.py`` for ``"gpt2"`` and ``"gemma4"``, ...);
:meth:`Tokenizer.from_gguf_metadata` picks one from :data:`.interface.GGUF_MODELS`.
"""

from __future__ import annotations

from array import array

import re
import threading
from heapq import heapify, heappop, heappush
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import IntEnum
from typing import Any

import numpy as np

from ..errors import TokenizerError
from ..once import locked_cached_property
from ..validation import LIMITS
from ..weights.string_array import StringArray
from .interface import Tokenizer, gguf_values
from ..log import get_logger

log = get_logger("tokenizer")

KEY_TOKENS = "tokenizer.ggml.tokens"
KEY_SCORES = "tokenizer.ggml.scores"
KEY_TOKEN_TYPE = "tokenizer.ggml.token_type"
KEY_ADD_BOS = "tokenizer.ggml.add_bos_token"
KEY_ADD_EOS = "tokenizer.ggml.add_eos_token"
KEY_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"


class TokenType(IntEnum):
    """Values of ``tokenizer.ggml.token_type`` (gguf-py's ``TokenType``)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class Attr:
    """Per-token attribute bits (llama.cpp's ``llama_token_attr``), as plain ints for speed."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8


# Token type -> attribute; types outside the table are UNDEFINED (rendered as nothing).
_TYPE_TO_ATTR = np.zeros(256, dtype=np.int32)
_TYPE_TO_ATTR[TokenType.NORMAL] = Attr.NORMAL
_TYPE_TO_ATTR[TokenType.UNKNOWN] = Attr.UNKNOWN
_TYPE_TO_ATTR[TokenType.CONTROL] = Attr.CONTROL
_TYPE_TO_ATTR[TokenType.USER_DEFINED] = Attr.USER_DEFINED
_TYPE_TO_ATTR[TokenType.UNUSED] = Attr.UNUSED
_TYPE_TO_ATTR[TokenType.BYTE] = Attr.BYTE

_SPECIAL = Attr.CONTROL | Attr.UNKNOWN  # rendered only when special tokens are wanted
_CUT_OUT = Attr.CONTROL | Attr.UNKNOWN | Attr.USER_DEFINED  # matched whole in the raw text

# Roles llama.cpp fills from the metadata key, or else by looking the texts up in the vocabulary
# (the token found is then forced to CONTROL). The deprecated prefix/suffix/middle keys override
# the fim_* ones when both are present.
_ROLE_KEYS: dict[str, tuple[str, ...]] = {
    "eot": ("tokenizer.ggml.eot_token_id",),
    "eom": ("tokenizer.ggml.eom_token_id",),
    "fim_pre": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    "fim_suf": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    "fim_mid": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
    "fim_pad": ("tokenizer.ggml.fim_pad_token_id",),
    "fim_rep": ("tokenizer.ggml.fim_rep_token_id",),
    "fim_sep": ("tokenizer.ggml.fim_sep_token_id",),
}
_ROLE_TEXTS: dict[str, tuple[str, ...]] = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
            "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Texts llama.cpp treats as end of generation whatever their type (they are forced to CONTROL).
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
)
# Tokens that are always rendered, whatever their stored type (gpt-oss chat markers).
_FORCED_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")
# Phi-3's special tokens strip the whitespace after them; these texts say whether they do (True) or not.
_PHI3_RSTRIP = (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False))
# Every text the load-time rules look up (in the `named` map Vocab.__init__ builds; "</s>" comes with
# _PHI3_RSTRIP): they run before the full text -> id map exists.
_NAMED_TEXTS = frozenset({*(t for texts in _ROLE_TEXTS.values() for t in texts), *_EOG_TEXTS, *_FORCED_USER_DEFINED,
                          *(t for t, _ in _PHI3_RSTRIP), "<|end|>", "<|call|>", "<|calls|>", "<|return|>",
                          "<|flush|>", "<|tool_response>"})

_ASCII_SPACE = frozenset(" \t\n\v\f\r")  # C isspace() in the "C" locale


def _bytes_of(text: str) -> bytes:
    """UTF-8 bytes of a vocabulary string (strings that were not valid UTF-8 in the file round-trip)."""
    return text.encode("utf-8", "surrogateescape")


class Vocab:
    """The vocabulary shared by every tokenizer model: texts, scores, attributes and special ids.

    Built from metadata with no per-token objects: the texts stay one :class:`StringArray`, scores and
    attributes flat arrays. The text -> id map that encoding needs (``token_to_id``) is built on first use.
    """

    def __init__(self, metadata: Mapping[str, Any], *, defaults: Mapping[str, int | None],
                 add_bos: bool, add_eos: bool, add_space_prefix: bool) -> None:
        meta = gguf_values(metadata)
        if KEY_TOKENS not in meta:
            raise TokenizerError(
                f"GGUF metadata key {KEY_TOKENS!r} is missing: the file has no vocabulary. "
                f"Use a GGUF converted with its tokenizer (llama.cpp's convert_hf_to_gguf.py writes it)."
            )
        tokens = meta.strings(KEY_TOKENS, non_empty=True)
        n = len(tokens)
        if not LIMITS["vocab_size"].admits(n):
            raise meta.fail(KEY_TOKENS, f"has {n} tokens, outside {LIMITS['vocab_size']} "
                                        f"({LIMITS['vocab_size'].reason})")
        texts = tokens if isinstance(tokens, StringArray) else StringArray.from_strings(tokens)
        named = texts.find(_NAMED_TEXTS | {""})
        if "" in named:  # llama.cpp gives empty entries a placeholder text
            texts = StringArray.from_strings(t or f"[EMPTY_{i}]" for i, t in enumerate(texts))
            named = texts.find(_NAMED_TEXTS)
        repeat = texts.first_repeat()
        if repeat is not None:
            raise TokenizerError(f"{KEY_TOKENS!r}: duplicate token {texts[repeat[1]]!r} has ids {repeat[0]} and "
                                 f"{repeat[1]}; the vocabulary is corrupt")
        self.tokens: StringArray = texts
        # float32 scores as array('f'): indexing gives Python floats as a list would, at 4 bytes a token
        # instead of 32 (8 MB less for a 262k vocabulary).
        self.scores: array = array("f", _per_token_array(metadata, KEY_SCORES, n, np.float32, 0.0).tobytes())
        types = _per_token_array(metadata, KEY_TOKEN_TYPE, n, np.int32, int(TokenType.NORMAL))
        attrs = _TYPE_TO_ATTR[np.clip(types, 0, 255)]  # (n,) int32

        ids = {role: _metadata_id(metadata, f"tokenizer.ggml.{key}", default, n)
               for role, key, default in (("bos", "bos_token_id", defaults.get("bos")),
                                          ("eos", "eos_token_id", defaults.get("eos")),
                                          ("unk", "unknown_token_id", defaults.get("unk")),
                                          ("pad", "padding_token_id", defaults.get("pad")))}
        roles = self._detect_roles(metadata, attrs, n, named)
        self._force_attrs(attrs, named)
        self._not_end_markers(attrs, roles, named)
        self._name_rules(metadata, attrs, named)
        self.attr_array: np.ndarray = attrs  # (n,) int32
        self.attrs: memoryview = memoryview(attrs)  # the same values, indexed as Python ints

        self.bos_id: int | None = ids["bos"]
        self.eos_id: int | None = ids["eos"]
        self.unk_id: int | None = ids["unk"]
        self.pad_id: int | None = ids["pad"]
        self.eog_ids: list[int] = self._end_of_generation(ids["eos"], roles, attrs, named)
        self.add_bos: bool = meta.flag(KEY_ADD_BOS, add_bos)
        self.add_eos: bool = meta.flag(KEY_ADD_EOS, add_eos)
        self.add_space_prefix: bool = meta.flag(KEY_ADD_SPACE_PREFIX, add_space_prefix)
        for flag, key, token in ((self.add_bos, KEY_ADD_BOS, "bos"), (self.add_eos, KEY_ADD_EOS, "eos")):
            if flag and ids[token] is None:
                raise TokenizerError(f"GGUF metadata key {key!r} is true but tokenizer.ggml.{token}_token_id "
                                     f"is not set to a token of the vocabulary; fix the file's metadata")

    @locked_cached_property
    def token_to_id(self) -> dict[str, int]:
        """Text -> id of every token, built on first use: encoding needs it, loading and decoding do not
        (for a 262,144-token vocabulary it holds ~38 MB of ``str`` keys, ``int`` values and hash table).
        The load-time rules look their few texts up in a small map instead (:data:`_NAMED_TEXTS`)."""
        return dict(zip(self.tokens, range(len(self.tokens))))

    @staticmethod
    def _detect_roles(metadata: Mapping[str, Any], attrs: np.ndarray, n: int,
                      named: dict[str, int]) -> dict[str, list[int]]:
        """Ids of each role: the metadata's, else every token whose text names it (forced to CONTROL).

        llama.cpp keeps one of several matches (whichever its hash map yields first); all are kept
        here, so that e.g. Phi-3's ``<|endoftext|>`` and ``<|end|>`` both end generation.
        """
        roles: dict[str, list[int]] = {}
        for role, keys in _ROLE_KEYS.items():
            found = None
            for key in keys:
                found = _metadata_id(metadata, key, found, n)
            if found is not None:
                roles[role] = [found]
                continue
            roles[role] = sorted(named[t] for t in _ROLE_TEXTS[role] if t in named)
            for i in roles[role]:
                attrs[i] |= Attr.CONTROL
        return roles

    @staticmethod
    def _force_attrs(attrs: np.ndarray, named: dict[str, int]) -> None:
        for text in _EOG_TEXTS:
            i = named.get(text)
            if i is not None:
                attrs[i] |= Attr.CONTROL
        for text in _FORCED_USER_DEFINED:
            i = named.get(text)
            if i is not None:
                attrs[i] = Attr.USER_DEFINED

    @staticmethod
    def _not_end_markers(attrs: np.ndarray, roles: dict[str, list[int]], named: dict[str, int]) -> None:
        """llama.cpp's exceptions to the end-of-generation texts: with gpt-oss's ``<|return|>`` and
        ``<|call|>`` (or Solar Open's ``<|calls|>`` and ``<|flush|>``), ``<|end|>`` ends a message only and
        becomes user-defined; with Gemma 4's ``<|tool_response>``, ``</s>`` is a normal token."""
        has = named.__contains__
        end = named.get("<|end|>")
        if end is not None and (has("<|call|>") or has("<|calls|>")) and (has("<|return|>") or has("<|flush|>")):
            attrs[end] = Attr.USER_DEFINED
            for role in ("eot", "eom"):
                roles[role] = [i for i in roles[role] if i != end]
        close = named.get("</s>")
        if close is not None and has("<|tool_response>"):
            attrs[close] = Attr.NORMAL

    @staticmethod
    def _end_of_generation(eos: int | None, roles: dict[str, list[int]], attrs: np.ndarray,
                           named: dict[str, int]) -> list[int]:
        """llama.cpp's end-of-generation set: EOS, then the end of turn/message and FIM pad/repo/separator
        tokens, then every token whose text is an end marker and is still a control token after the
        exceptions of :meth:`_not_end_markers`."""
        by_role = [i for role in ("eot", "eom", "fim_pad", "fim_rep", "fim_sep") for i in roles[role]]
        by_text = [named[t] for t in _EOG_TEXTS if t in named]
        by_text = [i for i in by_text if attrs[i] & Attr.CONTROL]
        return list(dict.fromkeys(([] if eos is None else [eos]) + by_role + sorted(by_text)))

    @staticmethod
    def _name_rules(metadata: Mapping[str, Any], attrs: np.ndarray, named: dict[str, int]) -> None:
        """Whitespace-stripping rules llama.cpp keys on the model name (only Phi-3 for these vocabularies)."""
        name = str(metadata.get("general.name", "")).lower()
        if "phi-3" in name or "phi3" in name:
            attrs[(attrs & _CUT_OUT) != 0] |= Attr.RSTRIP
            for text, strip in _PHI3_RSTRIP:
                i = named.get(text)
                if i is not None:
                    attrs[i] = attrs[i] | Attr.RSTRIP if strip else attrs[i] & ~Attr.RSTRIP

    def check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self.tokens):
            raise TokenizerError(f"token id {token_id} is out of range for this vocabulary of "
                                 f"{len(self.tokens)} tokens (valid ids: 0..{len(self.tokens) - 1})")


def _per_token_array(metadata: Mapping[str, Any], key: str, n: int, dtype: type, default: float) -> np.ndarray:
    value = metadata.get(key)
    if value is None:
        return np.full(n, default, dtype=dtype)
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise TokenizerError(f"GGUF metadata key {key!r} must be a numeric array, got {type(value).__name__}; "
                             f"the file is corrupt: convert it again")
    if len(array) < n:
        raise TokenizerError(f"GGUF metadata key {key!r} has {len(array)} entries but {KEY_TOKENS!r} has {n}; "
                             f"the file is corrupt: convert it again")
    return array[:n].astype(dtype, copy=False)


def _metadata_id(metadata: Mapping[str, Any], key: str, default: int | None, n: int) -> int | None:
    """A token id from ``key`` (an integer, else a :class:`TokenizerError`); like llama.cpp, an out-of-range
    value is ignored with a warning."""
    if default is not None and not 0 <= default < n:
        default = None
    value = gguf_values(metadata).integer(key, None, None)
    if value is None:
        return default
    if not 0 <= value < n:
        log.warning("metadata %s = %s is outside the vocabulary of %d tokens; using %s", key, value, n, default)
        return default
    return value


class _SpecialMatcher:
    """Finds the special tokens written in a text (those of one ``parse_special`` mode).

    A regular expression built as a character trie finds the longest special token starting at a
    position; ``rank`` is llama.cpp's processing order (longest in UTF-8 bytes first; ties by id here).
    """

    def __init__(self, vocab: Vocab, ids: np.ndarray) -> None:
        texts = {vocab.tokens[i]: i for i in ids.tolist()}
        ordered = sorted(texts, key=lambda t: (-len(_bytes_of(t)), texts[t]))
        self.texts = ordered
        self.rank = {t: r for r, t in enumerate(ordered)}
        self.ids = [texts[t] for t in ordered]
        self.strip = [vocab.attrs[i] & (Attr.LSTRIP | Attr.RSTRIP) for i in self.ids]
        self.any_strip = any(self.strip)
        self.max_len = max(map(len, ordered))
        self._trie = _trie(ordered)
        pattern = _trie_pattern(self._trie)
        self.finditer = re.compile(pattern).finditer
        self.overlapping = re.compile(f"(?=({pattern}))").finditer
        self._prefixes: dict[str, list[int]] = {}
        self._straddle: dict[str, frozenset[str]] = {}

    def prefixes(self, t: str) -> list[int]:
        """Ranks of the special tokens that are prefixes of ``t`` (``t`` included)."""
        found = self._prefixes.get(t)
        if found is None:
            found = [self.rank[t[:k]] for k in range(1, len(t) + 1) if t[:k] in self.rank]
            self._prefixes[t] = found
        return found

    def straddle(self, t: str) -> frozenset[str]:
        """Characters ``c`` such that a proper suffix of ``t`` followed by ``c`` begins a special token."""
        found = self._straddle.get(t)
        if found is None:
            follow: set[str] = set()
            for j in range(1, len(t)):
                node: dict[str, Any] | None = self._trie
                for ch in t[j:]:
                    node = node.get(ch)
                    if node is None:
                        break
                if node is not None:
                    follow.update(ch for ch in node if ch)
            found = self._straddle[t] = frozenset(follow)
        return found


def _trie(words: Iterable[str]) -> dict[str, Any]:
    """Nested dicts keyed by character; the key ``""`` marks the end of a word."""
    root: dict[str, Any] = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}
    return root


def _trie_pattern(node: dict[str, Any]) -> str:
    """A regex matching the words of a trie, preferring the longest at a position."""
    branches = [re.escape(ch) + _trie_pattern(child) for ch, child in node.items() if ch]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:  # a word ends here: the longer continuations are optional (greedy)
        return (body if len(branches) > 1 else f"(?:{body})") + "?"
    return body


_SPACE_BEFORE_PUNCT = re.compile(r" (?=[?!.,])")
_SPACE_BEFORE_CONTRACTION = re.compile(r" (?='(?:[sm]|[rv]e))")


def clean_spaces(text: str) -> str:
    """llama.cpp's ``clean_spaces`` passes over detokenized text (BPE and WordPiece), in order: remove a space
    before ``?``, ``!``, ``.`` or ``,``; turn ``" ' "`` into ``"'"`` (left to right, no overlaps); remove the
    space before ``'s``, ``'m``, ``'re`` and ``'ve``. (llama.cpp edits bytes; only ASCII is touched, so
    working on the decoded text gives the same result.)"""
    text = _SPACE_BEFORE_PUNCT.sub("", text)
    text = text.replace(" ' ", "'")
    return _SPACE_BEFORE_CONTRACTION.sub("", text)


def merge_pairs(text: str, priority: Callable[[str, str], float | None]) -> list[int]:
    """Greedy pairwise merging, the loop shared by the SentencePiece and BPE algorithms.

    Start from single characters; repeatedly join the adjacent pair whose ``priority(left, right)`` is
    lowest (leftmost on ties); pairs with priority None never join. Candidate pairs wait in a heap
    keyed by (priority, position); an entry made stale by a later merge is skipped when popped.
    Returns ``end`` where the symbols are ``text[i:end[i]]`` for the chain i = 0, end[0], ...
    """
    n = len(text)
    end = list(range(1, n + 1))    # symbol i is text[i:end[i]]; end[i] == 0 once merged into its left
    prev = list(range(-1, n - 1))
    heap = [(p, i, i + 1, 2) for i in range(n - 1) if (p := priority(text[i], text[i + 1])) is not None]
    heapify(heap)
    while heap:
        _, left, right, size = heappop(heap)
        right_end = end[right]
        if end[left] != right or right_end == 0 or right_end - left != size:
            continue  # one side was merged into something else since this pair was pushed
        end[left] = right_end
        end[right] = 0
        if right_end < n:
            prev[right_end] = left
        before = prev[left]
        if before >= 0 and (p := priority(text[before:left], text[left:right_end])) is not None:
            heappush(heap, (p, before, left, right_end - before))
        if right_end < n:
            after_end = end[right_end]
            if (p := priority(text[left:right_end], text[right_end:after_end])) is not None:
                heappush(heap, (p, left, right_end, after_end - left))
    return end


def symbols_of(text: str, end: list[int]) -> list[str]:
    """The symbols :func:`merge_pairs` left, in order."""
    out = []
    i = 0
    while i < len(text):
        out.append(text[i:end[i]])
        i = end[i]
    return out


class WordCache:
    """Memo of a word's ids (the model's algorithm is the slow part of encoding and real text repeats
    words). Words longer than ``max_word`` are computed every time; the memo is emptied past
    ``max_entries`` words, which bounds its memory. Shared by threads without a lock: two threads meeting
    a new word at once may both compute its ids (the same ids), and each dict operation is atomic, so the
    memo stays consistent; callers must not change the lists it returns."""

    def __init__(self, compute: Callable[[str], list[int]], max_word: int = 64, max_entries: int = 1 << 16) -> None:
        self._compute = compute
        self._max_word = max_word
        self._max_entries = max_entries
        self._memo: dict[str, list[int]] = {}

    def clear(self) -> None:
        self._memo.clear()

    def __call__(self, word: str) -> list[int]:
        ids = self._memo.get(word)
        if ids is None:
            ids = self._compute(word)
            if len(word) <= self._max_word:
                if len(self._memo) >= self._max_entries:
                    self._memo.clear()
                self._memo[word] = ids
        return ids


class VocabTokenizer(Tokenizer):
    """Text <-> token ids from a GGUF vocabulary (``tokenizer.ggml.*``); reproduces llama.cpp's tokenization.

    Attributes: ``bos_id``, ``eos_ids`` (end of sequence plus end of turn/message ids), ``pad_id``,
    ``vocab_size``, ``add_bos``/``add_eos`` (what ``encode(..., add_special_tokens=True)`` adds) and
    ``special_tokens`` (text -> id of the control and user-defined tokens). Subclasses implement one
    ``tokenizer.ggml.model``: ``_from_metadata``, ``_encode_text`` and ``_normal_piece``.
    """

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._pieces: dict[bool, dict[int, bytes]] = {True: {}, False: {}}  # special -> id -> bytes
        self._matchers: dict[bool, _SpecialMatcher | None] = {}
        self._matchers_lock = threading.Lock()   # each mode's matcher is built once, whichever thread asks first

    @classmethod
    def _from_metadata(cls, metadata: Mapping[str, Any]) -> VocabTokenizer:
        raise NotImplementedError

    def check_id(self, token_id: int) -> None:
        self.vocab.check_id(token_id)

    def clear_cache(self) -> None:
        """Forget memoised words (benchmarks measure encoding from a cold start with it)."""
        self._word_ids_cached.clear()

    def piece_renderer(self, skip_special_tokens: bool, continuation: bool = False) -> PieceRenderer:
        return PieceRenderer(self, skip_special_tokens, continuation)

    # public attributes ----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab.tokens)

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def pad_id(self) -> int | None:
        return self.vocab.pad_id

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def eos_ids(self) -> list[int]:
        """The tokens that end generation, as llama.cpp decides them (:meth:`Vocab._end_of_generation`)."""
        return self.vocab.eog_ids

    @locked_cached_property
    def special_tokens(self) -> dict[str, int]:
        """Text -> id of every control and user-defined token."""
        ids = np.flatnonzero(self.vocab.attr_array & (Attr.CONTROL | Attr.USER_DEFINED)).tolist()
        return {self.vocab.tokens[i]: i for i in ids}

    # encoding -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``.

        ``add_special_tokens``: prepend BOS / append EOS as ``tokenizer.ggml.add_bos_token`` /
        ``add_eos_token`` say. ``parse_special``: control tokens written in the text (``<start_of_turn>``)
        become their ids; user-defined tokens are always recognised, as in llama.cpp.
        """
        ids = self._encode_parts(self._partition(text, parse_special))
        if add_special_tokens:
            if self.vocab.add_bos:
                ids.insert(0, self.vocab.bos_id)
            if self.vocab.add_eos:
                ids.append(self.vocab.eos_id)
        return ids

    def _encode_parts(self, parts: list[str | int]) -> list[int]:
        """Ids of a partitioned text: ``int`` parts are ids already, ``str`` parts go through the model's
        algorithm (:meth:`_encode_text`), told whether a special token (or the start) precedes them."""
        out: list[int] = []
        after_special = True
        for part in parts:
            if isinstance(part, int):
                out.append(part)
                after_special = True
            else:
                out.extend(self._encode_text(part, after_special))
                after_special = False
        return out

    def _encode_text(self, text: str, after_special: bool) -> list[int]:
        """Ids of one run of raw text (no special tokens in it)."""
        raise NotImplementedError

    def _matcher(self, parse_special: bool) -> _SpecialMatcher | None:
        """The special-token finder of one mode, built on first use (once, under a lock)."""
        if parse_special not in self._matchers:
            with self._matchers_lock:
                if parse_special not in self._matchers:
                    attrs = self.vocab.attr_array
                    wanted = (attrs & _CUT_OUT) != 0
                    if not parse_special:
                        wanted &= (attrs & _SPECIAL) == 0
                    ids = np.flatnonzero(wanted)
                    self._matchers[parse_special] = _SpecialMatcher(self.vocab, ids) if len(ids) else None
        return self._matchers[parse_special]

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split ``text`` into raw-text parts and special-token ids (llama.cpp's ``tokenizer_st_partition``).

        llama.cpp takes the special tokens longest first, each claiming its leftmost occurrences that
        do not overlap text already claimed. Scanning left to right for the longest token at each
        position gives the same parts, except near a match that an occurrence of another token may
        start inside and end after, or when tokens strip whitespace: there llama.cpp's order is
        simulated (:meth:`_claim`) over a window that no occurrence crosses.
        """
        matcher = self._matcher(parse_special)
        if not text:
            return []
        if matcher is None:
            return [text]
        matches = [(m.start(), m.end(), m.group()) for m in matcher.finditer(text)]
        if not matches:
            return [text]
        if matcher.any_strip:
            return self._claim(text, matcher)
        n = len(text)

        def straddles(end: int, t: str) -> bool:
            return end < n and text[end] in matcher.straddle(t)

        parts: list[str | int] = []
        last = i = 0
        while i < len(matches):
            start, end, t = matches[i]
            _add_text(parts, text[last:start])
            if not straddles(end, t):
                parts.append(matcher.ids[matcher.rank[t]])
                last, i = end, i + 1
                continue
            # Occurrences starting inside a match end before its end + max_len; widen the window
            # until no occurrence starting inside it can reach past it.
            stop = end - 1 + matcher.max_len
            i += 1
            while i < len(matches) and matches[i][0] < stop:
                _, end, t = matches[i]
                stop = max(stop, end - 1 + matcher.max_len if straddles(end, t) else end)
                i += 1
            stop = min(stop, n)
            for part in self._claim(text[start:stop], matcher):
                if isinstance(part, str):
                    _add_text(parts, part)
                else:
                    parts.append(part)
            last = stop
        _add_text(parts, text[last:])
        return parts

    @staticmethod
    def _claim(text: str, matcher: _SpecialMatcher) -> list[str | int]:
        """llama.cpp's partition, literally: for each special token present, longest first, split every
        raw fragment at the token's leftmost occurrences (stripping whitespace next to LSTRIP/RSTRIP
        tokens)."""
        present = {m.group(1) for m in matcher.overlapping(text)}
        # Fragments: (start, end, id) with id -1 for raw text.
        fragments = [(0, len(text), -1)]
        for rank in sorted({r for t in present for r in matcher.prefixes(t)}):
            token, token_id, strip = matcher.texts[rank], matcher.ids[rank], matcher.strip[rank]
            split: list[tuple[int, int, int]] = []
            for start, end, kind in fragments:
                pos = text.find(token, start, end) if kind < 0 else -1
                if pos < 0:
                    split.append((start, end, kind))
                    continue
                while pos >= 0:
                    left = pos
                    if strip & Attr.LSTRIP:
                        while left > start and text[left - 1] in _ASCII_SPACE:
                            left -= 1
                    if left > start:
                        split.append((start, left, -1))
                    split.append((pos, pos + len(token), token_id))
                    start = pos + len(token)
                    if strip & Attr.RSTRIP:
                        while start < end and text[start] in _ASCII_SPACE:
                            start += 1
                    pos = text.find(token, start, end)
                if start < end:
                    split.append((start, end, -1))
            fragments = split
        return [text[start:end] if kind < 0 else kind for start, end, kind in fragments]

    # decoding -------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; control tokens appear as their text unless ``skip_special_tokens``.

        Equals llama.cpp's ``llama_detokenize(remove_special=skip, unparse_special=not skip)``
        decoded as UTF-8 with U+FFFD for invalid bytes.
        """
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        low, high = min(ids), max(ids)
        self.vocab.check_id(low if low < 0 else high)
        stop = len(ids)
        if skip_special_tokens and self.vocab.add_eos and ids[-1] == self.vocab.eos_id:
            stop -= 1
        render = PieceRenderer(self, skip_special_tokens)
        special = not skip_special_tokens
        cache = self._pieces[special]
        rest = [cache[i] if i in cache else self.token_bytes(i, special) for i in ids[1:stop]]
        head = render(ids[0]) if stop else b""
        return (head + b"".join(rest)).decode("utf-8", "replace")

    def token_to_piece(self, id: int) -> str:  # noqa: A002 - the contract's name
        """The text of one token as decoding renders it with special tokens shown (control tokens as
        their text; a byte token that is not a whole character becomes U+FFFD)."""
        token_id = int(id)
        self.vocab.check_id(token_id)
        return self.token_bytes(token_id).decode("utf-8", "replace")

    def token_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes one token contributes to decoded text (llama.cpp's ``token_to_piece``, no lstrip)."""
        cache = self._pieces[special]
        piece = cache.get(token_id)
        if piece is None:
            attr = self.vocab.attrs[token_id]
            text = self.vocab.tokens[token_id]
            if attr & _SPECIAL:
                piece = _bytes_of(text) if special else b""
            elif attr & Attr.USER_DEFINED:
                piece = _bytes_of(text)
            elif attr & Attr.NORMAL:
                piece = self._normal_piece(text)
            elif attr & Attr.BYTE:
                piece = bytes([int(text[3:5], 16)])
            else:  # unused or undefined tokens render as nothing
                piece = b""
            cache[token_id] = piece
        return piece

    def _normal_piece(self, text: str) -> bytes:
        """Bytes of a normal token's text (the model's escaping undone)."""
        raise NotImplementedError


def _add_text(parts: list[str | int], text: str) -> None:
    """Append raw text to ``parts``, joining it to a raw-text part just before it."""
    if text:
        if parts and isinstance(parts[-1], str):
            parts[-1] += text
        else:
            parts.append(text)


class PieceRenderer:
    """Renders ids one at a time as :meth:`Tokenizer.decode` does (the per-token part of llama.cpp's
    ``llama_detokenize``): skips a leading BOS when skipping special tokens, and removes one leading
    space from the first piece when the vocabulary adds a space prefix, unless the ids continue a text
    already decoded (``continuation``: generated tokens after a prompt keep their leading space)."""

    def __init__(self, tokenizer: VocabTokenizer, skip_special_tokens: bool, continuation: bool = False) -> None:
        self._tok = tokenizer
        self._special = not skip_special_tokens
        self._first = not continuation
        self._remove_space = tokenizer.vocab.add_space_prefix and not continuation

    def __call__(self, token_id: int) -> bytes:
        vocab = self._tok.vocab
        if self._first:
            self._first = False
            if not self._special and vocab.add_bos and token_id == vocab.bos_id:
                self._remove_space = False
                return b""
        piece = self._tok.token_bytes(token_id, self._special)
        if self._remove_space:
            self._remove_space = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return piece
