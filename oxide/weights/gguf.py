"""Memory-mapped GGUF reading.

Layout (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 metadata
count, the metadata key/value pairs, the tensor infos (name, n_dims, dims in ggml order, type,
offset), padding to ``general.alignment`` (default 32), then the tensor data.

The type codes and block sizes come from the ``gguf`` package. The header is parsed here rather
than with ``gguf.GGUFReader`` because that reader builds one numpy view per array element: on a
262,144-token vocabulary it takes ~20 s. Here a string array is one copy of its bytes plus an offset
per string (:class:`~.string_array.StringArray`, ~5.5 MB and 35 ms for that vocabulary, where a list
of ``str`` took ~21 MB). ggml lists dims fastest-first; shapes are reversed once, here, into PyTorch order.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import ModelFormatError, ModelNotFoundError, UnsupportedQuantType
from ..log import format_bytes, get_logger
from .string_array import StringArray, TruncatedStringArray

log = get_logger("load")

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4           # GGML_MAX_DIMS

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor's entry in the GGUF header.

    ``shape`` is in PyTorch order (ggml's dims reversed); ``offset`` is absolute in the file.
    """

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    offset: int
    nbytes: int


class _Cursor:
    """Bounds-checked little-endian reader over a buffer; overruns name the file."""

    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ModelFormatError(
                f"{self.path}: truncated GGUF header while reading {what} at byte {self.pos} "
                f"(file has {len(self.buf)} bytes); the file is incomplete or corrupt: download it again"
            )
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.scalar("<Q", what)
        # Some vocabularies hold byte sequences that are not valid UTF-8; surrogateescape keeps them lossless.
        return str(self.take(length, what), "utf-8", "surrogateescape")

    def value(self, vtype: int, key: str) -> Any:
        try:
            kind = GGUFValueType(vtype)
        except ValueError:
            raise ModelFormatError(
                f"{self.path}: metadata key {key!r} has unknown value type {vtype}; the file is corrupt "
                f"or written by a newer GGUF version"
            ) from None
        if kind == GGUFValueType.STRING:
            return self.string(key)
        if kind == GGUFValueType.ARRAY:
            item_type = self.scalar("<I", key)
            count = self.scalar("<Q", key)
            return self.array(item_type, count, key)
        return self.scalar(_SCALAR_FORMATS[kind], key)

    def array(self, item_type: int, count: int, key: str) -> Any:
        try:
            kind = GGUFValueType(item_type)
        except ValueError:
            raise ModelFormatError(f"{self.path}: array {key!r} has unknown item type {item_type}") from None
        if kind in _NUMPY_DTYPES:
            dtype = np.dtype(_NUMPY_DTYPES[kind])
            raw = self.take(count * dtype.itemsize, key)
            return np.frombuffer(raw, dtype=dtype).copy()
        if kind == GGUFValueType.STRING:
            return self.string_array(count, key)
        return [self.value(item_type, key) for _ in range(count)]

    def string_array(self, count: int, key: str) -> StringArray:
        """``count`` strings, kept in one buffer (vocabularies hold hundreds of thousands)."""
        try:
            strings = StringArray.from_buffer(self.buf, self.pos, count)
        except TruncatedStringArray as e:
            raise ModelFormatError(
                f"{self.path}: truncated GGUF header while reading {key} ({e}); "
                f"the file is incomplete or corrupt: download it again"
            ) from None
        self.pos += strings.nbytes
        return strings


def _open_mmap(path: str | os.PathLike[str]) -> tuple[Path, mmap.mmap]:
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file; check the path or download the model first")
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a directory, expected a .gguf file")
    size = path.stat().st_size
    if size == 0:
        raise ModelFormatError(f"{path}: the file is empty; the download or copy did not finish: fetch it again")
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return path, mapped


def _parse_header(path: Path, buf: memoryview) -> tuple[dict[str, Any], list[GGUFTensorInfo]]:
    cur = _Cursor(buf, path)
    magic = bytes(cur.take(4, "magic"))
    if magic != GGUF_MAGIC:
        raise ModelFormatError(
            f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}); pass a .gguf model, "
            f"a Hugging Face model directory, or a Hub id"
        )
    version = cur.scalar("<I", "version")
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors = cur.scalar("<Q", "tensor count")
    n_kv = cur.scalar("<Q", "metadata count")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        metadata[key] = cur.value(cur.scalar("<I", f"type of {key}"), key)

    raw_infos = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.scalar("<I", f"dims of {name}")
        if n_dims > MAX_DIMS:
            raise ModelFormatError(f"{path}: tensor {name!r} claims {n_dims} dimensions (GGUF allows {MAX_DIMS}); "
                                   f"the file is corrupt")
        dims = [cur.scalar("<Q", f"dims of {name}") for _ in range(n_dims)]
        qtype_code = cur.scalar("<I", f"type of {name}")
        offset = cur.scalar("<Q", f"offset of {name}")
        raw_infos.append((name, dims, qtype_code, offset))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFormatError(f"{path}: general.alignment={alignment!r} is not a positive power of two; "
                               f"the file is corrupt")
    data_start = -(-cur.pos // alignment) * alignment
    tensors = [_tensor_info(path, name, dims, code, data_start + off, len(buf)) for name, dims, code, off in raw_infos]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ModelFormatError(f"{path}: tensor {duplicate!r} is listed twice; the file is corrupt")
    return metadata, tensors


def _tensor_info(path: Path, name: str, dims: list[int], code: int, offset: int, file_size: int) -> GGUFTensorInfo:
    try:
        qtype = GGMLQuantizationType(code)
    except ValueError:
        raise UnsupportedQuantType(
            f"{path}: tensor {name!r} has unknown GGML type code {code}; this file needs a newer engine"
        ) from None
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    numel = math.prod(dims)   # Python ints: a corrupt header cannot overflow this
    if dims and dims[0] % block_size:
        raise ModelFormatError(
            f"{path}: tensor {name!r} row length {dims[0]} is not a multiple of the {qtype.name} block size {block_size}"
        )
    nbytes = numel // block_size * type_size
    if offset + nbytes > file_size:
        raise ModelFormatError(
            f"{path}: tensor {name!r} data ends at byte {offset + nbytes} but the file has {file_size} bytes; "
            f"the file is truncated: download it again"
        )
    return GGUFTensorInfo(name=name, shape=tuple(reversed(dims)), qtype=qtype, offset=offset, nbytes=nbytes)


class GGUFFile:
    """An open, memory-mapped GGUF file: ``metadata`` (key -> Python value) and ``tensors`` (name -> info).

    Tensor bytes are not read until :meth:`raw` is called; they are views on the map, so the page cache
    is shared and nothing is copied until a tensor is converted.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path, self._map = _open_mmap(path)
        self._view = memoryview(self._map)
        metadata, infos = _parse_header(self.path, self._view)
        self.metadata: dict[str, Any] = metadata
        self.tensors: dict[str, GGUFTensorInfo] = {t.name: t for t in infos}
        log.debug("%s: %d metadata keys, %d tensors, %s", self.path, len(metadata), len(infos),
                  format_bytes(self.path.stat().st_size))

    @property
    def architecture(self) -> str:
        return str(self.require("general.architecture"))

    def require(self, key: str) -> Any:
        """The metadata value at ``key``; a missing key is a :class:`ModelFormatError` naming it."""
        if key not in self.metadata:
            raise ModelFormatError(f"{self.path}: required metadata key {key!r} is missing; the GGUF file is incomplete")
        return self.metadata[key]

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's raw bytes as a 1-D uint8 tensor viewing the memory map (read-only; do not write)."""
        info = self.tensors[name]
        array = np.frombuffer(self._view, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        with _quiet_readonly_warning():
            return torch.from_numpy(array)

    def close(self) -> None:
        self._view.release()
        self._map.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a GGUF file: strings as ``str``, scalars as Python numbers, numeric arrays as numpy
    arrays, string arrays as :class:`~.string_array.StringArray` (a sequence of ``str``)."""
    with GGUFFile(path) as f:
        return f.metadata


class _quiet_readonly_warning:
    """torch warns when wrapping a read-only numpy buffer; the model never writes to weights."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
