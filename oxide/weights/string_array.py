"""``StringArray``: the string arrays of GGUF metadata (vocabularies, merges) kept compact.

As a ``list[str]``, a 262,144-token vocabulary takes ~21 MB: one object of 50 to 80 bytes per token,
plus the list. Kept as GGUF lays it out (one buffer of entries, each a little-endian u64 length and
that many UTF-8 bytes) with the offset of every entry, it takes ~5.5 MB and is read with one copy.
Items are decoded when accessed (``surrogateescape``, so bytes that are not UTF-8 round-trip); a
caller that needs every item as ``str`` at once (a text -> id map) builds that once itself.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import overload

import numpy as np

_LENGTH = struct.Struct("<Q")
_HEAD = _LENGTH.size


class TruncatedStringArray(ValueError):
    """The buffer ends inside the ``index``-th entry."""

    def __init__(self, index: int, count: int) -> None:
        super().__init__(f"string {index} of {count}")


class StringArray(Sequence[str]):
    """An immutable sequence of strings in one buffer of GGUF string entries (see the module docstring)."""

    __slots__ = ("_data", "_offsets")

    def __init__(self, data: bytes, offsets: array) -> None:
        """``data``: the entries back to back; ``offsets``: where each entry starts, then ``len(data)``."""
        self._data = data
        self._offsets = offsets

    @classmethod
    def from_buffer(cls, buf: bytes | memoryview, start: int, count: int) -> StringArray:
        """The ``count`` entries found at ``buf[start:]``, copied out in one piece.

        Raises :class:`TruncatedStringArray` when ``buf`` ends before the last entry does.
        """
        size = len(buf)
        offsets = array("I" if size - start < 2**32 else "q")
        append = offsets.append
        unpack = _LENGTH.unpack_from
        pos = start
        for index in range(count):
            append(pos - start)
            if pos + _HEAD > size:
                raise TruncatedStringArray(index, count)
            pos += _HEAD + unpack(buf, pos)[0]
            if pos > size:
                raise TruncatedStringArray(index, count)
        append(pos - start)
        return cls(bytes(buf[start:pos]), offsets)

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringArray:
        """``strings`` laid out as GGUF does (for metadata that did not come from a file)."""
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        offsets = array("q", [0])
        for item in encoded:
            offsets.append(offsets[-1] + _HEAD + len(item))
        return cls(b"".join(part for item in encoded for part in (_LENGTH.pack(len(item)), item)), offsets)

    @property
    def nbytes(self) -> int:
        """Size of the entries (as in the file: lengths included)."""
        return len(self._data)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.raw(index).decode("utf-8", "surrogateescape")

    def raw(self, index: int) -> bytes:
        """The UTF-8 bytes of item ``index``."""
        n = len(self._offsets) - 1
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"StringArray index {index} out of range for {n} items")
        return self._data[self._offsets[index] + _HEAD:self._offsets[index + 1]]

    def __iter__(self) -> Iterator[str]:
        data = self._data
        for start, end in zip(self._offsets, islice(self._offsets, 1, None)):
            yield data[start + _HEAD:end].decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"StringArray({len(self)} items, {self.nbytes} bytes)"

    def find(self, texts: Iterable[str]) -> dict[str, int]:
        """The index of the first item equal to each of ``texts`` that occurs (the others are left out).

        Only the items whose :meth:`_signatures` match one of ``texts`` are compared.
        """
        wanted = StringArray.from_strings(texts)
        if not len(wanted) or not len(self):
            return {}
        by_bytes = {wanted.raw(i): text for i, text in enumerate(wanted)}
        found: dict[str, int] = {}
        for index in np.flatnonzero(np.isin(self._signatures(), wanted._signatures())).tolist():
            text = by_bytes.get(self.raw(index))
            if text is not None and text not in found:
                found[text] = index
        return found

    def first_repeat(self) -> tuple[int, int] | None:
        """``(first, repeat)``: the indices of the earliest item equal to an earlier one, or None if all differ.

        Only the items whose :meth:`_signatures` are shared are compared.
        """
        signatures = self._signatures()
        order = np.argsort(signatures)
        shared = np.flatnonzero(signatures[order[1:]] == signatures[order[:-1]])
        candidates = np.zeros(len(self), dtype=bool)
        candidates[order[shared]] = candidates[order[shared + 1]] = True
        seen: dict[bytes, int] = {}
        for index in np.flatnonzero(candidates).tolist():
            first = seen.setdefault(self.raw(index), index)
            if first != index:
                return first, index
        return None

    def _signatures(self) -> np.ndarray:
        """A 64-bit hash per item, of its byte length, first 8 and last 8 bytes: equal items share theirs.

        Two gathers of unaligned little-endian u64 words. The last 8 bytes of an item shorter than 8 run
        back into its length field, which depends on the item only; its first 8 are then left out.
        """
        if not len(self):
            return np.zeros(0, dtype=np.uint64)
        offsets = np.frombuffer(self._offsets, dtype=self._offsets.typecode).astype(np.int64)
        lengths, starts = np.diff(offsets) - _HEAD, offsets[:-1] + _HEAD
        # words[i]: bytes i..i+7 (every entry has 8 bytes of length, so the buffer holds at least one word)
        words = np.ndarray((len(self._data) - 7,), dtype="<u8", buffer=self._data, strides=(1,))
        head = np.where(lengths >= 8, words[np.minimum(starts, len(words) - 1)], 0)
        tail = words[starts + lengths - 8]
        return (head * np.uint64(0x9E3779B97F4A7C15) + tail * np.uint64(0xBF58476D1CE4E5B9)
                + lengths.astype(np.uint64) * np.uint64(0x94D049BB133111EB))
