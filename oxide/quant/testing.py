"""Random raw GGML blocks for tests and benchmarks.

Random bytes are valid blocks for every supported type, except that an f16 scale field
may then hold NaN or infinity; ``random_raw`` overwrites those fields (and the values of
the float types) with finite random numbers so results can be compared exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from oxide.quant.types import (
    F16_FIELDS,
    GGMLType,
    QTypeLike,
    block_geometry,
    expected_nbytes,
    require_supported,
)


def random_raw(qtype: QTypeLike, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Raw bytes of a random ``qtype`` tensor of logical ``shape`` (PyTorch order).

    Returns uint8 of shape ``(*shape[:-1], row_bytes)``, gguf-py's byte shape. Scale fields
    are finite f16 spread over several magnitudes (1e-4 .. 1e2, both signs); F32/F16/BF16
    values are finite numbers of the same spread.
    """
    t = require_supported(qtype)
    dims = tuple(shape)
    nbytes = expected_nbytes(t, dims, "random tensor")
    lead = dims[:-1]
    geo = block_geometry(t)
    row_bytes = dims[-1] // geo.block_size * geo.type_size
    if t in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
        values = _spread(rng, math.prod(dims))
        if t == GGMLType.F32:
            raw = values.view(np.uint8)
        elif t == GGMLType.F16:
            raw = values.astype(np.float16).view(np.uint8)
        else:  # bf16: the high 16 bits of each float32
            raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        return raw.reshape(*lead, row_bytes)
    blocks = rng.integers(0, 256, size=nbytes, dtype=np.uint8).reshape(-1, geo.type_size)
    for off in F16_FIELDS[t]:
        scale = _spread(rng, blocks.shape[0]).astype(np.float16)
        blocks[:, off : off + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(*lead, row_bytes)


def _spread(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` finite float32 values: standard normals times 1e-4, 1e-2, 1 or 1e2."""
    magnitude = rng.choice(np.array([1e-4, 1e-2, 1.0, 1e2], dtype=np.float32), size=n)
    return rng.standard_normal(n).astype(np.float32) * magnitude
