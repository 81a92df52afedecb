"""Tokenizers built from GGUF metadata, reproducing llama.cpp's tokenization.

``Tokenizer.from_gguf(path)`` / ``Tokenizer.from_gguf_metadata(metadata)`` pick the algorithm named
by ``tokenizer.ggml.model``; :class:`StreamDecoder` turns ids into text incrementally.
"""

from .base import TokenType, VocabTokenizer
from .interface import Tokenizer
from .stream import StreamDecoder

__all__ = ["StreamDecoder", "TokenType", "Tokenizer", "VocabTokenizer"]
