"""Rotary embedding in Triton: :func:`oxide.ops.reference.rope`, half-split or adjacent pairs, whole or
partial heads.

One program rotates a block of rows (a row: one (b, h, t) head vector of x) in float32 and writes them to a
new contiguous output; each row reads its token's row of cos/sin, so the positions (and any RoPE scaling)
arrive through the tables that ``rope_cos_sin`` computed once for the step. x may be any strided view
(the model passes the transposed (B, T, H, hd) projections as (B, H, T, hd)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from oxide.errors import InvalidOptionError
from oxide.ops.reference import ROPE_PAIRS
from oxide.ops.triton_kernels import interpreting

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ELEMENTS_PER_PROGRAM = 4096   # rows x pairs of one program: enough work per program, few registers each


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, n_rows, H, T,
                 sx_b, sx_h, sx_t, sx_d, sc_t, sc_d, ss_t, ss_d,
                 HD: tl.constexpr, HALF: tl.constexpr, ADJACENT: tl.constexpr,
                 BLOCK_ROWS: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_rows
    rows = tl.minimum(rows, n_rows - 1).to(tl.int64)       # rows past the end re-read the last one, unstored
    t = rows % T
    h = (rows // T) % H
    b = rows // (T * H)
    x_row = x_ptr + (b * sx_b + h * sx_h + t * sx_t)[:, None]   # (BLOCK_ROWS, 1)
    out_row = out_ptr + (rows * HD)[:, None]                    # the output is contiguous (B, H, T, hd)

    i = tl.arange(0, BLOCK_HALF)[None, :]                       # pair index, (1, BLOCK_HALF)
    ok = row_ok[:, None] & (i < HALF)
    if ADJACENT:
        d1, d2 = 2 * i, 2 * i + 1
    else:
        d1, d2 = i, i + HALF
    x1 = tl.load(x_row + d1 * sx_d, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + d2 * sx_d, mask=ok, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + t[:, None] * sc_t + i * sc_d, mask=ok, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + t[:, None] * ss_t + i * ss_d, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_row + d1, (x1 * c - x2 * s).to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(out_row + d2, (x2 * c + x1 * s).to(out_ptr.dtype.element_ty), mask=ok)

    if 2 * HALF < HD:                                           # dims past the rotated ones pass through
        d = 2 * HALF + tl.arange(0, BLOCK_PASS)[None, :]
        ok = row_ok[:, None] & (d < HD)
        tl.store(out_row + d, tl.load(x_row + d * sx_d, mask=ok), mask=ok)


def serves_rope(dtype: torch.dtype) -> bool:
    """float32, float16 and bfloat16 activations (bfloat16 not under the interpreter, which lacks it)."""
    return dtype in _DTYPES and not (dtype == torch.bfloat16 and interpreting())


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, pairs: str = "half") -> torch.Tensor:
    """:func:`oxide.ops.reference.rope`: x (B, H, T, hd) any strides, cos/sin (T, r/2) with r <= hd;
    the first r dims of each head rotate in ``pairs`` ("half": i with i + r/2, "adjacent": 2i with 2i + 1),
    the rest pass through. Returns a new contiguous (B, H, T, hd) tensor of x's dtype."""
    if pairs not in ROPE_PAIRS:
        raise InvalidOptionError(f"rope: pairs={pairs!r} is not one of {', '.join(ROPE_PAIRS)}")
    if x.dim() != 4 or x.dtype not in _DTYPES:
        raise InvalidOptionError(f"rope: x must be a (B, H, T, hd) float tensor, got {x.dtype} {tuple(x.shape)}")
    B, H, T, hd = x.shape
    half = cos.shape[-1] if cos.dim() == 2 else -1
    for name, table in (("cos", cos), ("sin", sin)):
        if table.shape != (T, half) or not 0 < 2 * half <= hd or table.device != x.device:
            raise InvalidOptionError(f"rope: {name} {tuple(table.shape)} on {table.device} must be (T, r/2) = "
                                     f"({T}, r/2) with 0 < r <= head_dim {hd}, on {x.device} like x")
    out = _empty((B, H, T, hd), x.dtype, x.device)
    n_rows = B * H * T
    if n_rows == 0:
        return out
    block_half = triton.next_power_of_2(half)
    block_rows = min(triton.next_power_of_2(n_rows), max(1, _ELEMENTS_PER_PROGRAM // block_half))
    _rope_kernel[(triton.cdiv(n_rows, block_rows),)](
        x, cos, sin, out, n_rows, H, T, *x.stride(), *cos.stride(), *sin.stride(),
        HD=hd, HALF=half, ADJACENT=pairs == "adjacent", BLOCK_ROWS=block_rows, BLOCK_HALF=block_half,
        BLOCK_PASS=triton.next_power_of_2(max(hd - 2 * half, 1)))
    return out


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new output for the kernel to fill (the tests poison it with NaN, so unwritten elements show)."""
    return torch.empty(shape, dtype=dtype, device=device)
