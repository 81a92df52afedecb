"""The one tokenizer interface, and the constructors that pick an implementation.

Two families sit behind it: vocabularies read from GGUF metadata (``tokenizer.ggml.*``, exact with
llama.cpp; :mod:`.base` and one module per ``tokenizer.ggml.model``) and Hugging Face
``tokenizer.json`` files (exact with transformers; :mod:`.hf`).
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from ..validation import Values

KEY_MODEL = "tokenizer.ggml.model"


def gguf_values(metadata: Mapping[str, Any]) -> Values:
    """The checked view of ``tokenizer.ggml.*`` metadata: its errors are :class:`TokenizerError` (the file is
    named by :meth:`Tokenizer.from_gguf_metadata`)."""
    return Values(metadata, "", gguf=True, error=TokenizerError,
                  advice="the file's vocabulary is corrupt: convert or download it again")

# tokenizer.ggml.model -> (module, class) of the implementation; imported on first use.
GGUF_MODELS: dict[str, tuple[str, str]] = {
    "llama": ("oxide.tokenizer.spm", "SPMTokenizer"),
    "gpt2": ("oxide.tokenizer.bpe", "BPETokenizer"),
    "gemma4": ("oxide.tokenizer.bpe", "BPETokenizer"),
    "bert": ("oxide.tokenizer.wpm", "WPMTokenizer"),
    "t5": ("oxide.tokenizer.ugm", "UGMTokenizer"),
}


class Tokenizer(ABC):
    """Text <-> token ids.

    ``encode(text, add_special_tokens)`` adds BOS/EOS as the model asks; ``decode(ids)`` is the inverse
    where the tokenizer is lossless; ``token_to_piece(id)`` is one token's text; :class:`StreamDecoder`
    turns ids into text incrementally through :meth:`piece_renderer`.
    """

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """The tokenizer stored in a GGUF file's metadata."""
        from ..weights.gguf import read_metadata

        return cls.from_gguf_metadata(read_metadata(path), source=str(path))

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], *, source: str = "") -> Tokenizer:
        """Build from GGUF metadata (key -> value, as ``oxide.weights.gguf.read_metadata`` returns it),
        choosing the algorithm named by ``tokenizer.ggml.model``; ``source``, the file, prefixes every error."""
        try:
            model = gguf_values(metadata).string(KEY_MODEL, None)
            if model not in GGUF_MODELS:
                what = "is missing" if model is None else f"is {model!r}, which is not supported"
                raise TokenizerError(
                    f"GGUF metadata key {KEY_MODEL!r} {what}; supported tokenizer models: "
                    f"{', '.join(sorted(GGUF_MODELS))}. Use a model whose tokenizer is one of these."
                )
            module, name = GGUF_MODELS[model]
            return getattr(importlib.import_module(module), name)._from_metadata(metadata)
        except TokenizerError as e:
            if not source:
                raise
            raise TokenizerError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike[str],
                  config: str | os.PathLike[str] | None = None) -> Tokenizer:
        """A Hugging Face ``tokenizer.json``, with ``tokenizer_config.json`` (special tokens, flags) when
        given or found beside it."""
        from .hf import HFTokenizer

        path = Path(tokenizer_json)
        config_path = Path(config) if config is not None else path.with_name("tokenizer_config.json")
        return HFTokenizer.load(path, config_path if config_path.exists() else None)

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """The tokenizer of a Hugging Face model directory (``tokenizer.json`` and its configs)."""
        path = Path(directory) / "tokenizer.json"
        if not path.exists():
            raise TokenizerError(f"{path}: missing; oxide reads Hugging Face fast-tokenizer files (tokenizer.json)")
        return cls.from_file(path)

    # the interface --------------------------------------------------------------------------
    vocab_size: int
    bos_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    eos_ids: list[int]
    special_tokens: dict[str, int]

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``parse_special``: special tokens written in the text become their ids."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of ``ids``."""

    @abstractmethod
    def token_to_piece(self, id: int) -> str:  # noqa: A002 - the contract's name
        """The text of one token, special tokens shown."""

    @abstractmethod
    def check_id(self, token_id: int) -> None:
        """Raise :class:`TokenizerError` unless ``0 <= token_id < vocab_size``."""

    @abstractmethod
    def piece_renderer(self, skip_special_tokens: bool, continuation: bool = False) -> Callable[[int], bytes]:
        """A stateful function id -> the bytes it adds to the decoded text, token by token as ``decode`` renders
        them; ``continuation``: the ids follow text decoded elsewhere (no first-token adjustments)."""
