"""Hugging Face ``tokenizer.json`` tokenizers, run by the ``tokenizers`` library (exact with transformers).

Special tokens and flags come from ``tokenizer_config.json`` (``bos_token``, ``eos_token``,
``add_bos_token``...) and, for the end-of-generation ids transformers' ``generate`` stops on,
``generation_config.json``. Streaming renders each token to the bytes it adds: byte-level BPE
tokens through the GPT-2 byte <-> character table, SentencePiece-style tokens by turning ``▁``
into a space and ``<0xXX>`` into that byte (with the first-token space removed as the Metaspace
or Strip decoder does), and anything else through the library's own decoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as FastTokenizer

from ..errors import TokenizerError
from ..once import locked_cached_property
from .interface import Tokenizer

SPIECE_SPACE = "\u2581"


def _byte_level_table() -> dict[str, int]:
    """GPT-2's reversible map from printable characters back to bytes: printable Latin-1 bytes stand for
    themselves, the other 68 bytes for the code points from 256 upwards, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_LEVEL = _byte_level_table()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: cannot be read as JSON ({e}); re-download the file") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    """``"<s>"`` or ``{"content": "<s>", ...}`` (tokenizer_config.json spells both) -> the text."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _decoder_kinds(spec: dict[str, Any] | None) -> set[str]:
    """The decoder types in a tokenizer.json ``decoder`` (flattening ``Sequence``)."""
    if not spec:
        return set()
    if spec.get("type") == "Sequence":
        return set().union(*(_decoder_kinds(d) for d in spec.get("decoders", [])))
    return {spec.get("type", "")}


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` through the ``tokenizers`` library. Safe to share between threads: no call changes
    the library tokenizer's settings; ``parse_special=False`` uses a second one, built once, that treats
    special-token text as plain text."""

    def __init__(self, fast: FastTokenizer, spec: dict[str, Any], config: dict[str, Any],
                 generation_eos: list[int]) -> None:
        self._fast = fast
        self._decoders = _decoder_kinds(spec.get("decoder"))
        self._added = {t["id"]: t for t in spec.get("added_tokens", [])}
        self.vocab_size = fast.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._config_id(config, "bos_token")
        self.pad_id = self._config_id(config, "pad_token")
        eos = self._config_id(config, "eos_token")
        self.eos_ids = list(dict.fromkeys(([eos] if eos is not None else []) + generation_eos))
        probe = fast.encode("", add_special_tokens=True).ids
        self.add_bos = bool(probe) and probe[0] == self.bos_id if self.bos_id is not None else False
        self.add_eos = bool(probe) and probe[-1] in self.eos_ids
        self.special_tokens = {t["content"]: i for i, t in self._added.items() if t.get("special")}

    @classmethod
    def load(cls, path: Path, config_path: Path | None) -> HFTokenizer:
        spec = _read_json(path)
        try:
            fast = FastTokenizer.from_str(json.dumps(spec))
        except Exception as e:  # the library raises plain Exceptions for malformed specs
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
        config = _read_json(config_path) if config_path is not None else {}
        generation = path.with_name("generation_config.json")
        eos: list[int] = []
        if generation.exists():
            value = _read_json(generation).get("eos_token_id")
            eos = [value] if isinstance(value, int) else [int(v) for v in value or []]
        return cls(fast, spec, config, eos)

    def _config_id(self, config: dict[str, Any], key: str) -> int | None:
        text = _token_text(config.get(key))
        return None if text is None else self._fast.token_to_id(text)

    # the interface --------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        fast = self._fast if parse_special else self._literal_specials
        return fast.encode(text, add_special_tokens=add_special_tokens).ids

    @locked_cached_property
    def _literal_specials(self) -> FastTokenizer:
        """A copy of the tokenizer that splits special-token text like any other (``encode_special_tokens``)."""
        fast = FastTokenizer.from_str(self._fast.to_str())
        fast.encode_special_tokens = True
        return fast

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        for i in ids:
            self.check_id(i)
        return self._fast.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_piece(self, id: int) -> str:  # noqa: A002 - the contract's name
        return self.token_bytes(int(id)).decode("utf-8", "replace")

    def check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is out of range for this vocabulary of {self.vocab_size}")

    def piece_renderer(self, skip_special_tokens: bool, continuation: bool = False) -> Callable[[int], bytes]:
        # Metaspace (and Llama's Replace+Fuse+Strip sequence) drops the first token's leading space.
        strip_first = bool({"Metaspace", "Strip"} & self._decoders) and not continuation

        def render(token_id: int) -> bytes:
            nonlocal strip_first
            piece = self.token_bytes(token_id, special=not skip_special_tokens)
            if strip_first and piece:
                strip_first = False
                if token_id not in self._added and piece.startswith(b" "):
                    piece = piece[1:]
            return piece

        return render

    def token_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes one token adds to decoded text."""
        return self._pieces[special][token_id]

    @locked_cached_property
    def _pieces(self) -> dict[bool, list[bytes]]:
        shown = [self._piece(i, True) for i in range(self.vocab_size)]
        hidden = [b"" if self._added.get(i, {}).get("special") else p for i, p in enumerate(shown)]
        return {True: shown, False: hidden}

    def _piece(self, token_id: int, special: bool) -> bytes:
        text = self._fast.id_to_token(token_id) or ""
        if token_id in self._added:
            return text.encode()
        if "ByteLevel" in self._decoders:
            return bytes(_BYTE_LEVEL.get(ch, 0) for ch in text) if all(ch in _BYTE_LEVEL for ch in text) \
                else text.encode()
        if "ByteFallback" in self._decoders and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            return bytes([int(text[3:5], 16)])
        if "Metaspace" in self._decoders or "Replace" in self._decoders:
            return text.replace(SPIECE_SPACE, " ").encode()
        return self._fast.decode([token_id], skip_special_tokens=False).encode()
