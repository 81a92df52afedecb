"""GGML tensor types: block geometry, names and validation of raw byte sizes.

The geometry (weights per block, bytes per block) is read from gguf-py's
``GGML_QUANT_SIZES`` so it never drifts from the file format; this module only adds
lookups, the set of types oxide can dequantize, and the size checks every entry point
shares.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from oxide.errors import ModelFormatError, UnsupportedQuantType

GGMLType = GGMLQuantizationType

QTypeLike = GGMLType | int | str

SUPPORTED_TYPES: frozenset[GGMLType] = frozenset(
    {
        GGMLType.F32,
        GGMLType.F16,
        GGMLType.BF16,
        GGMLType.Q4_0,
        GGMLType.Q4_1,
        GGMLType.Q5_0,
        GGMLType.Q5_1,
        GGMLType.Q8_0,
        GGMLType.Q2_K,
        GGMLType.Q3_K,
        GGMLType.Q4_K,
        GGMLType.Q5_K,
        GGMLType.Q6_K,
        GGMLType.IQ4_NL,
        GGMLType.IQ4_XS,
    }
)


# Byte offsets, inside one block, of the f16 scale fields (d, dmin/m) of each block type.
F16_FIELDS: dict[GGMLType, tuple[int, ...]] = {
    GGMLType.F32: (),
    GGMLType.F16: (),
    GGMLType.BF16: (),
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (80, 82),
    GGMLType.Q3_K: (108,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (208,),
    GGMLType.IQ4_NL: (0,),
    GGMLType.IQ4_XS: (0,),
}


@dataclass(frozen=True)
class BlockGeometry:
    """How a GGML type packs weights: ``block_size`` weights in ``type_size`` bytes."""

    block_size: int
    type_size: int


def _supported_list() -> str:
    return ", ".join(t.name for t in sorted(SUPPORTED_TYPES, key=int))


def as_qtype(qtype: QTypeLike) -> GGMLType:
    """Normalise an enum member, its integer id or its name (``"Q4_K"``) to ``GGMLType``.

    Raises ``UnsupportedQuantType`` when the value names no GGML type at all.
    """
    if isinstance(qtype, GGMLType):
        return qtype
    try:
        if isinstance(qtype, str):
            return GGMLType[qtype.upper()]
        return GGMLType(int(qtype))
    except (KeyError, ValueError, TypeError):
        raise UnsupportedQuantType(
            f"unknown GGML tensor type {qtype!r}; known types are the members of "
            f"gguf.GGMLQuantizationType, and oxide can dequantize: {_supported_list()}"
        ) from None


def qtype_name(qtype: QTypeLike) -> str:
    """The GGML name of a type, e.g. ``qtype_name(12) == "Q4_K"``."""
    return as_qtype(qtype).name


def require_supported(qtype: QTypeLike) -> GGMLType:
    """Return ``qtype`` as ``GGMLType`` or raise ``UnsupportedQuantType`` listing the supported ones."""
    t = as_qtype(qtype)
    if t not in SUPPORTED_TYPES:
        raise UnsupportedQuantType(
            f"GGML tensor type {t.name} (id {int(t)}) cannot be dequantized by oxide; "
            f"supported types: {_supported_list()}. Re-quantize the model to one of these "
            f"(e.g. with llama.cpp's llama-quantize) or use an F16/BF16 file."
        )
    return t


def block_geometry(qtype: QTypeLike) -> BlockGeometry:
    """Weights per block and bytes per block of any GGML type known to gguf-py."""
    t = as_qtype(qtype)
    block_size, type_size = GGML_QUANT_SIZES[t]
    return BlockGeometry(block_size, type_size)


def bits_per_weight(qtype: QTypeLike) -> float:
    """Storage cost per weight, scales included: ``8 * type_size / block_size`` (Q4_K: 4.5)."""
    g = block_geometry(qtype)
    return 8.0 * g.type_size / g.block_size


def expected_nbytes(qtype: QTypeLike, shape: Sequence[int], what: str = "tensor") -> int:
    """Bytes a tensor of logical ``shape`` (PyTorch order, blocks along the last dim) occupies.

    Raises ``ModelFormatError`` when the shape is empty or negative, or when its last dim
    is not a whole number of blocks. ``what`` names the tensor in messages.
    """
    t = as_qtype(qtype)
    g = block_geometry(t)
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        dims = ()
    if not dims or min(dims) < 0:
        raise ModelFormatError(
            f"{what}: shape {shape!r} is not a valid {t.name} shape; it needs at least one "
            f"dimension and non-negative integer sizes"
        )
    if dims[-1] % g.block_size != 0:
        raise ModelFormatError(
            f"{what}: last dimension {dims[-1]} of shape {dims} is not a multiple of the "
            f"{t.name} block size {g.block_size}; the shape is wrong or not reversed from "
            f"GGUF (ggml) order to PyTorch order"
        )
    return math.prod(dims) // g.block_size * g.type_size


def check_nbytes(qtype: QTypeLike, shape: Sequence[int], actual: int, what: str = "tensor") -> int:
    """Validate that ``actual`` bytes hold a ``qtype`` tensor of ``shape``; return the byte count."""
    t = as_qtype(qtype)
    expected = expected_nbytes(t, shape, what)
    if actual != expected:
        g = block_geometry(t)
        n_blocks = expected // g.type_size
        raise ModelFormatError(
            f"{what}: a {t.name} tensor of shape {tuple(int(d) for d in shape)} needs {expected} bytes "
            f"({n_blocks} blocks x {g.type_size} bytes), but {actual} bytes were given; "
            f"the file is truncated or the type/shape recorded for it is wrong"
        )
    return expected
