"""StringArray, the compact form of GGUF string arrays: same items as a list, lookups without decoding all."""

from __future__ import annotations

import random
import struct

import pytest

from oxide.weights.string_array import StringArray, TruncatedStringArray

# Short and long items (signatures cover 16 bytes exactly, beyond that only the ends), items equal in
# length and both ends, multi-byte and non-UTF-8 (surrogateescape) texts, and the empty string.
POOL = ["", "a", "ab", "▁द्वारा", "▁सरकार", "abcdefghijklmnopqrstuvwxyz", "abcdefghijXlmnopqrstuvwxyz",
        "\udcff", "x" * 7, "x" * 8, "x" * 9, "x" * 17, "<eos>", "<unused12>"]


def gguf_entries(items: list[str]) -> bytes:
    return b"".join(struct.pack("<Q", len(b)) + b for b in (t.encode("utf-8", "surrogateescape") for t in items))


def first_repeat(items: list[str]) -> tuple[int, int] | None:
    seen: dict[str, int] = {}
    for i, t in enumerate(items):
        if t in seen:
            return seen[t], i
        seen[t] = i
    return None


def test_matches_a_list(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        items = [rng.choice(POOL) for _ in range(rng.randint(0, 10))]
        for strings in (StringArray.from_strings(items), StringArray.from_buffer(b"xx" + gguf_entries(items), 2,
                                                                                   len(items))):
            assert list(strings) == items and len(strings) == len(items)
            assert [strings[i] for i in range(-len(items), len(items))] == items + items
            assert strings[1:5] == items[1:5] and strings[::-2] == items[::-2]
            assert strings.find(POOL) == {t: items.index(t) for t in POOL if t in items}
            assert strings.first_repeat() == first_repeat(items)
        with pytest.raises(IndexError):
            strings[len(items)]


def test_truncated_buffer_names_the_entry() -> None:
    whole = gguf_entries(["one", "two", "three"])
    assert StringArray.from_buffer(whole, 0, 3).nbytes == len(whole)
    for cut, index in ((len(whole) - 1, 2), (len(whole) - 9, 2), (14, 1), (3, 0)):
        with pytest.raises(TruncatedStringArray, match=f"string {index} of 3"):
            StringArray.from_buffer(whole[:cut], 0, 3)
