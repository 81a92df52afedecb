"""Attention's non-causal, block-diagonal form (``causal=False``, segment ids ``q_seg``/``k_seg``): the reference
against a direct masked softmax, the compiled CPU core (which hands these calls to the reference) and the Triton
kernel (under the interpreter without a CUDA device) against the reference.

Inputs are seeded normals; the kernel's buffers are poisoned with NaN. Shapes are odd (T 23, S 23 or 37, hd 40)
and span several query and key tiles; segments are runs of unequal lengths, as packed images are.
Tolerances: float64 inputs against the direct float64 softmax rtol 1e-5, atol 1e-6 (the reference takes its
softmax in float32, as every op does its statistics); float32 rtol 1e-5, atol 2e-6 for the kernel
(an online softmax), float16 rtol atol 2e-3 (as tests/test_triton_attention.py states for each dtype).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import oxide
import oxide.ops as ops
from oxide.errors import InvalidOptionError
from oxide.kernels import attention as kernel
from oxide.ops import reference

F32_SOFTMAX = dict(rtol=1e-5, atol=1e-6)
TOL = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.float16: dict(rtol=2e-3, atol=2e-3)}


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(kernel, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                                device=device))


def qkv(H: int, Hkv: int, T: int, S: int, hd: int, seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, T, H, hd, generator=g, dtype=torch.float64).transpose(1, 2)   # a transposed projection
    k, v = (torch.randn(1, Hkv, S, hd, generator=g, dtype=torch.float64) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def segments(lengths: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def direct(q, k, v, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax over the allowed keys of ``scale * q.k``, per query head (kv head h // G), written out plainly."""
    G = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    for h in range(q.shape[1]):
        scores = scale * q[0, h] @ k[0, h // G].T                                     # (T, S)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[0, h] = torch.softmax(scores, dim=-1) @ v[0, h // G]
    return out


def test_reference_block_diagonal_non_causal_equals_a_masked_softmax() -> None:
    q, k, v = qkv(4, 2, 23, 23, 40, seed=1)
    seg = segments([9, 4, 10])
    pos = torch.arange(23)
    got = reference.attention(q, k, v, pos, pos, scale=0.2, causal=False, q_seg=seg, k_seg=seg)
    allowed = seg[:, None] == seg[None, :]
    torch.testing.assert_close(got, direct(q, k, v, allowed, 0.2), **F32_SOFTMAX)
    # a query sees nothing of another segment: changing another image's values leaves it unchanged
    v2 = v.clone()
    v2[..., 13:, :] += 1.0
    again = reference.attention(q, k, v2, pos, pos, scale=0.2, causal=False, q_seg=seg, k_seg=seg)
    assert torch.equal(again[..., :13, :], got[..., :13, :])


def test_reference_non_causal_and_causal_segments() -> None:
    q, k, v = qkv(2, 2, 11, 11, 16, seed=2)
    pos = torch.arange(11)
    full = reference.attention(q, k, v, pos, pos, scale=0.3, causal=False)
    torch.testing.assert_close(full, direct(q, k, v, torch.ones(11, 11, dtype=torch.bool), 0.3), **F32_SOFTMAX)
    seg = segments([5, 6])
    causal = reference.attention(q, k, v, pos, pos, scale=0.3, q_seg=seg, k_seg=seg)
    allowed = (pos[:, None] >= pos[None, :]) & (seg[:, None] == seg[None, :])
    torch.testing.assert_close(causal, direct(q, k, v, allowed, 0.3), **F32_SOFTMAX)
    # the defaults are unchanged: causal, no segments
    torch.testing.assert_close(reference.attention(q, k, v, pos, pos, scale=0.3),
                               direct(q, k, v, pos[:, None] >= pos[None, :], 0.3), **F32_SOFTMAX)


def test_bad_segments_are_typed_errors() -> None:
    q, k, v = qkv(2, 2, 5, 5, 8, seed=3)
    pos = torch.arange(5)
    with pytest.raises(InvalidOptionError, match="q_seg and k_seg go together"):
        reference.attention(q, k, v, pos, pos, scale=1.0, q_seg=pos)
    with pytest.raises(InvalidOptionError, match=r"k_seg must be an integer tensor of shape \(5,\)"):
        reference.attention(q, k, v, pos, pos, scale=1.0, q_seg=pos, k_seg=pos[:4])
    with pytest.raises(InvalidOptionError, match="q_seg must be an integer tensor"):
        kernel.attention(q.float(), k.float(), v.float(), pos, pos, scale=1.0, q_seg=pos.float(), k_seg=pos)


def test_functional_api_on_the_cpu_serves_the_new_form() -> None:
    """The compiled core's attention is causal only: it hands these calls to the reference (same result)."""
    q, k, v = qkv(4, 2, 23, 23, 40, seed=4, dtype=torch.float32)
    seg, pos = segments([9, 4, 10]), torch.arange(23)
    got = ops.attention(q, k, v, pos, pos, scale=0.2, causal=False, q_seg=seg, k_seg=seg)
    torch.testing.assert_close(got, reference.attention(q, k, v, pos, pos, scale=0.2, causal=False, q_seg=seg,
                                                        k_seg=seg), rtol=0, atol=0)


KERNEL_CASES = {   # H, Hkv, T, S, lengths (None: no segments), causal, window
    "images": (4, 2, 23, 23, [9, 4, 10], False, 0),
    "one-image": (2, 2, 37, 37, [37], False, 0),
    "causal-segments": (3, 1, 23, 23, [7, 16], True, 0),
    "non-causal-plain": (2, 1, 19, 19, None, False, 0),
    "decode-split": (2, 2, 3, 37, None, False, 0),
    "window": (2, 2, 23, 23, [12, 11], True, 5),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_triton_kernel_equals_the_reference(case: str, dtype: torch.dtype) -> None:
    H, Hkv, T, S, lengths, causal, window = KERNEL_CASES[case]
    q, k, v = qkv(H, Hkv, T, S, 40, seed=5, dtype=dtype)
    k_pos = torch.arange(S)
    q_pos = k_pos[S - T:]
    seg = {} if lengths is None else dict(q_seg=segments(lengths)[S - T:], k_seg=segments(lengths))
    got = kernel.attention(q, k, v, q_pos, k_pos, scale=0.17, causal=causal, window=window, **seg)
    want = reference.attention(q.double(), k.double(), v.double(), q_pos, k_pos, scale=0.17, causal=causal,
                               window=window, **seg)
    assert got.dtype == dtype and got.is_contiguous()
    torch.testing.assert_close(got.double(), want, **TOL[dtype])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_triton_kernel_on_cuda_many_images(dtype: torch.dtype) -> None:
    """A vision encoder's call at a real size: 3 images of 1024, 300 and 77 patches, 16 heads of 64."""
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == torch.float16 else dict(rtol=2e-2, atol=2e-2)
    q, k, v = (t.cuda() for t in qkv(16, 16, 1401, 1401, 64, seed=6, dtype=dtype))
    seg, pos = segments([1024, 300, 77]).cuda(), torch.arange(1401).cuda()
    got = kernel.attention(q, k, v, pos, pos, scale=0.125, causal=False, q_seg=seg, k_seg=seg)
    want = reference.attention(q.double(), k.double(), v.double(), pos, pos, scale=0.125, causal=False, q_seg=seg,
                               k_seg=seg)
    torch.testing.assert_close(got.double(), want, **tol)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernel for their device")
@pytest.mark.skipif("nvidia" not in triton.backends.backends, reason="Triton's NVIDIA backend is not installed")
def test_kernel_compiles_for_sm90() -> None:
    """The interpreter runs any Python; the compiler does not. Without it (a subprocess), the causal and the
    segmented variants compile to sm_90 cubins, no GPU needed (see tests/_sm90_compile_attention.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = Path(__file__).parent
    root = str(Path(oxide.__file__).parent.parent)                      # the oxide under test, not another checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, str(here), env.get("PYTHONPATH"))))
    script = here / "_sm90_compile_attention.py"
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
