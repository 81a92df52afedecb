"""Streaming detokenization: text pieces as ids arrive, never splitting a UTF-8 character.

Each id is rendered to bytes exactly as :meth:`Tokenizer.decode` renders it (same first-token and
special-token rules, through :meth:`Tokenizer.piece_renderer`), and the bytes go through
an incremental UTF-8 decoder that holds back an incomplete trailing sequence until the next bytes
complete it; invalid sequences become U+FFFD as in ``decode``. Hence, for any ids,
``"".join(d.push(i) for i in ids) + d.flush() == tokenizer.decode(ids, skip_special_tokens)``
with two exceptions a stream cannot know about: a trailing EOS of a vocabulary that adds EOS and does
not mark it as a control token (``decode`` drops it when skipping special tokens), and WordPiece's
clean-up of spaces before punctuation and contractions, which looks at the following token (a
``bert`` stream keeps those spaces, as llama.cpp's pieces joined together do). For tokenizer.json
files with byte fallback, invalid byte runs may give a different number of U+FFFD than ``decode``.
"""

from __future__ import annotations

import codecs

from .interface import Tokenizer


class StreamDecoder:
    """Feed ids one at a time with :meth:`push`; call :meth:`flush` at the end."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True, *, continuation: bool = False) -> None:
        """``continuation``: the ids follow text decoded elsewhere (a prompt), so the first piece keeps its
        leading space; otherwise the stream equals :meth:`Tokenizer.decode` of the same ids."""
        self._tokenizer = tokenizer
        self._render = tokenizer.piece_renderer(skip_special_tokens, continuation)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, id: int) -> str:  # noqa: A002 - the contract's name
        """The text completed by this token (``""`` while a character is still incomplete)."""
        token_id = int(id)
        self._tokenizer.check_id(token_id)
        return self._utf8.decode(self._render(token_id))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character comes out as U+FFFD)."""
        return self._utf8.decode(b"", final=True)
