"""The Triton rope kernel (``oxide.kernels.rope``) against :func:`oxide.ops.reference.rope`, and the reference's
own pairings against a complex rotation.

Without a CUDA device the kernel runs under Triton's interpreter (tests/conftest.py). Inputs are seeded
random normals at odd sizes, as the transposed views the model passes; the output is pre-poisoned with
NaN so an unwritten element fails. Tolerances: float32 rtol 1e-5, atol 1e-6 (the same products, one
rounding each); float16 against the float32 reference of the same inputs, rtol atol 1e-3 (one rounding
to float16, where the reference rounds cos/sin and each product to float16 too); bfloat16 (CUDA only)
rtol atol 1e-2.
"""

from __future__ import annotations

import pytest
import torch

import oxide.ops as ops
from oxide.errors import InvalidOptionError
from oxide.kernels import rope as kernel
from oxide.ops import dispatch, reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
F32 = dict(rtol=1e-5, atol=1e-6)
F16 = dict(rtol=1e-3, atol=1e-3)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(kernel, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                                device=device))


def case(B: int, H: int, T: int, hd: int, rotated: int, seed: int, device: str = "cpu"):
    """x as the model passes it, a (B, T, H, hd) projection viewed as (B, H, T, hd); the tables of
    ``rotated`` dims at positions 5..5+T."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, hd, generator=g).to(device).transpose(1, 2)          # (B, H, T, hd), strided
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotated, 2, dtype=torch.float32) / rotated)
    cos, sin = reference.rope_cos_sin(torch.arange(5, 5 + T), inv_freq)           # (T, rotated/2)
    return x, cos.to(device), sin.to(device)


@pytest.mark.parametrize("pairs", ["half", "adjacent"])
@pytest.mark.parametrize("hd, rotated", [(64, 64), (80, 80), (80, 32), (24, 18)], ids=lambda v: str(v))
def test_rope_float32(pairs, hd, rotated):
    x, cos, sin = case(2, 3, 7, hd, rotated, seed=hd + rotated)
    got = kernel.rope(x, cos, sin, pairs=pairs)
    assert got.is_contiguous() and got.shape == x.shape
    torch.testing.assert_close(got, reference.rope(x, cos, sin, pairs=pairs), **F32)


@pytest.mark.parametrize("pairs", ["half", "adjacent"])
def test_rope_float16_sliced_view(pairs):
    """A float16 slice of a wider transposed tensor (no dim contiguous but the last), 40 of its 48 dims rotated."""
    x, cos, sin = case(1, 5, 9, 50, 40, seed=3)
    x = x.half()[:, :, 1:, 1:49]                                               # (1, 5, 8, 48), a view
    assert x.stride() == (2250, 50, 250, 1)
    cos, sin = cos[1:], sin[1:]
    got = kernel.rope(x, cos, sin, pairs=pairs)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), reference.rope(x.float(), cos, sin, pairs=pairs), **F16)


@pytest.mark.parametrize("pairs", ["half", "adjacent"])
def test_rope_every_other_dim(pairs):
    """A view with a last-dim stride of 2."""
    x, cos, sin = case(2, 3, 5, 36, 18, seed=8)
    x = x[..., ::2]                                                            # (2, 3, 5, 18)
    torch.testing.assert_close(kernel.rope(x, cos, sin, pairs=pairs), reference.rope(x, cos, sin, pairs=pairs), **F32)


def test_adjacent_pairs_rotate_neighbours():
    """The reference's adjacent pairing is the complex rotation of (x[2i], x[2i+1]); its partial rotation
    leaves the rest."""
    x, cos, sin = case(1, 2, 6, 12, 8, seed=4)
    x = x.double()
    out = reference.rope(x, cos.double(), sin.double(), pairs="adjacent")
    z = torch.complex(x[..., 0:8:2], x[..., 1:8:2]) * torch.complex(cos.double(), sin.double())
    torch.testing.assert_close(out[..., 0:8:2], z.real)
    torch.testing.assert_close(out[..., 1:8:2], z.imag)
    torch.testing.assert_close(out[..., 8:], x[..., 8:], rtol=0, atol=0)


def test_rope_bad_input():
    x, cos, sin = case(1, 2, 3, 16, 16, seed=5)
    with pytest.raises(InvalidOptionError, match="pairs='interleaved'"):
        kernel.rope(x, cos, sin, pairs="interleaved")
    with pytest.raises(InvalidOptionError, match="cos"):
        kernel.rope(x, torch.cat((cos, cos), 1), sin)                            # rotates 32 dims of 16
    with pytest.raises(InvalidOptionError, match="x must be"):
        kernel.rope(x[0], cos, sin)


def test_dispatch_picks_the_kernel(monkeypatch):
    """``OXIDE_IMPL=triton`` sends the functional API's rope to the kernel, float32 on the CPU included."""
    monkeypatch.setenv("OXIDE_IMPL", "triton")
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    x, cos, sin = case(1, 4, 5, 32, 16, seed=6)
    assert dispatch.chosen_name("rope", "cpu", torch.float32) == "triton"
    torch.testing.assert_close(ops.rope(x, cos, sin, pairs="adjacent"),
                               reference.rope(x, cos, sin, pairs="adjacent"), **F32)


@cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float16, F16), (torch.bfloat16, dict(rtol=1e-2, atol=1e-2))])
@pytest.mark.parametrize("pairs", ["half", "adjacent"])
def test_rope_cuda(dtype, tol, pairs):
    x, cos, sin = case(3, 16, 333, 128, 96, seed=7, device="cuda")
    got = kernel.rope(x.to(dtype), cos, sin, pairs=pairs)
    torch.testing.assert_close(got.float(), reference.rope(x.to(dtype).float(), cos, sin, pairs=pairs), **tol)
