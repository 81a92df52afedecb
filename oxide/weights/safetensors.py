"""Listing and memory-mapped reading of Hugging Face safetensors checkpoints.

A directory holds either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` (``weight_map``: tensor name -> shard file).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ModelFormatError

INDEX_FILE = "model.safetensors.index.json"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
SINGLE_FILE = "model.safetensors"


def shard_map(directory: Path) -> dict[str, Path]:
    """Tensor name -> the file holding it."""
    index = directory / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelFormatError(f"{index}: unreadable shard index ({e}); re-download the model") from None
        missing = sorted({f for f in weight_map.values() if not (directory / f).exists()})
        if missing:
            raise ModelFormatError(f"{index}: lists shards that are missing: {', '.join(missing)}; download them")
        for shard in sorted(set(weight_map.values())):
            check_header(directory / shard)
        return {name: directory / f for name, f in weight_map.items()}
    single = directory / SINGLE_FILE
    if not single.exists():
        raise ModelFormatError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}; oxide reads safetensors checkpoints")
    return {name: single for name in _keys(single)}


def check_header(path: Path) -> None:
    """Each tensor of the file's header must span exactly its shape times its dtype's size, inside the
    file; the first that does not is named (a header that lies would otherwise read other bytes)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
            data = f.seek(0, 2) - 8 - length
    except (OSError, ValueError, struct.error) as e:
        raise ModelFormatError(f"{path}: not a readable safetensors file ({e}); re-download it") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: the header is a JSON {type(header).__name__}, not an object; re-download it")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end, size = _span(path, name, entry)
        if not (0 <= start <= end <= data and end - start == size):
            raise ModelFormatError(
                f"{path}: tensor {name!r} claims bytes {start}..{end} for {entry['dtype']} {entry['shape']} "
                f"({size} bytes) in {data} bytes of data; the header is corrupt, re-download the file")


def _span(path: Path, name: str, entry: object) -> tuple[int, int, int]:
    """(start, end, bytes its dtype and shape need) of one header entry, each field's type checked."""
    def integer(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    fields = entry if isinstance(entry, dict) else {}
    offsets, shape, dtype = fields.get("data_offsets"), fields.get("shape"), fields.get("dtype")
    problem = ("is not an object" if not isinstance(entry, dict) else
               f"has data_offsets {offsets!r}, not two integers" if not (
                   isinstance(offsets, list) and len(offsets) == 2 and all(map(integer, offsets))) else
               f"has shape {shape!r}, not a list of non-negative integers" if not (
                   isinstance(shape, list) and all(integer(d) and d >= 0 for d in shape)) else
               f"has dtype {dtype!r}, not one of {', '.join(_DTYPE_BYTES)}" if not (
                   isinstance(dtype, str) and dtype in _DTYPE_BYTES) else "")
    if problem:
        raise ModelFormatError(f"{path}: tensor {name!r} {problem} in the header; the file is corrupt, re-download it")
    return offsets[0], offsets[1], math.prod(shape) * _DTYPE_BYTES[dtype]


def _keys(path: Path) -> list[str]:
    check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ModelFormatError(f"{path}: not a readable safetensors file ({e}); re-download it") from None


class SafetensorsReader:
    """Reads tensors by name across shards, keeping each shard open (memory-mapped) once."""

    def __init__(self, directory: Path) -> None:
        self.files = shard_map(directory)
        self._open: dict[Path, object] = {}

    def names(self) -> list[str]:
        return list(self.files)

    def _handle(self, name: str):
        path = self.files[name]
        handle = self._open.get(path)
        if handle is None:
            handle = self._open[path] = safe_open(str(path), framework="pt")
        return handle

    def describe(self, name: str) -> tuple[str, tuple[int, ...], int]:
        """(dtype name as safetensors spells it, e.g. ``BF16``; shape; bytes), without reading the data."""
        try:
            view = self._handle(name).get_slice(name)
            shape = tuple(view.get_shape())
            dtype = view.get_dtype()
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ModelFormatError(f"{self.files[name]}: tensor {name!r} cannot be read ({e}); the file is corrupt") \
                from None
        return dtype, shape, math.prod(shape) * _DTYPE_BYTES.get(dtype, 0)

    def get(self, name: str) -> torch.Tensor:
        path = self.files[name]
        handle = self._handle(name)
        try:
            return handle.get_tensor(name)
        except Exception as e:
            raise ModelFormatError(f"{path}: tensor {name!r} cannot be read ({e}); the file is corrupt") from None
