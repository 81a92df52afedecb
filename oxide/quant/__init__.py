"""GGML quantized tensors: block geometry, ``QuantTensor`` and reference dequantization."""

from oxide.quant.dequant import dequantize
from oxide.quant.tensor import QuantTensor
from oxide.quant.types import (
    SUPPORTED_TYPES,
    BlockGeometry,
    GGMLType,
    block_geometry,
    bits_per_weight,
    qtype_name,
)

__all__ = [
    "SUPPORTED_TYPES",
    "BlockGeometry",
    "GGMLType",
    "QuantTensor",
    "bits_per_weight",
    "block_geometry",
    "dequantize",
    "qtype_name",
]
