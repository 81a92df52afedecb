"""The Triton attention kernels (``oxide.kernels.attention``) against :func:`oxide.ops.reference.attention`.

Without a CUDA device the kernels run under Triton's interpreter (tests/conftest.py). Inputs are seeded
random normals laid out as the model passes them: q a transposed (B, T, H, hd) projection, k and v a
narrowed view of a larger cache; every buffer the kernels fill (output, split partials, their
log-sum-exps) is pre-poisoned with NaN, so an unwritten element fails. Shapes are odd (T 19, S 37, hd 80,
576) and span several query tiles, key tiles and decode splits. The reference runs in float64 on the same
inputs. Tolerances: float32 rtol 1e-5, atol 2e-6 (sums in another order, an online softmax, a tanh from
exp); float16 rtol atol 2e-3 (probabilities rounded to float16 before the values' product, as the
reference does, and the output rounded once); bfloat16 (CUDA only) rtol atol 2e-2.
"""

from __future__ import annotations

import pytest
import torch

import oxide.ops as ops
from oxide.errors import InvalidOptionError
from oxide.kernels import attention as kernel
from oxide.ops import dispatch, reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TOL = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
EMPTY = torch.iinfo(torch.int64).max   # an empty slot's position: after every query, so never attended


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    monkeypatch.setattr(kernel, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype,
                                                                                device=device))


def inputs(B: int, H: int, Hkv: int, T: int, S: int, hd: int, seed: int, dtype: torch.dtype = torch.float32,
           device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (B, H, T, hd) as a transposed view; k, v (B, Hkv, S, hd) as the first S slots of a larger cache."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, hd, generator=g).transpose(1, 2)
    k, v = (torch.randn(B, Hkv, S + 5, hd, generator=g)[:, :, :S] for _ in range(2))
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def check(q, k, v, q_pos, k_pos, **kwargs) -> torch.Tensor:
    """The kernel's output, compared with the float64 reference within its dtype's tolerance."""
    got = kernel.attention(q, k, v, q_pos, k_pos, **kwargs)
    assert got.shape == q.shape and got.dtype == q.dtype and got.is_contiguous()
    want = reference.attention(q.double(), k.double(), v.double(), q_pos, k_pos, **kwargs)
    torch.testing.assert_close(got.double(), want, **TOL[q.dtype])
    return got


def splits(q: torch.Tensor, k: torch.Tensor) -> int:
    (B, H, T, hd), (_, Hkv, S, _) = q.shape, k.shape
    return kernel.plan(B, H, Hkv, T, S, hd, q.dtype, q.device).splits


# --- prefill -------------------------------------------------------------------------------------------

PREFILL = {   # B, H, Hkv, T, S, hd, window, softcap
    "causal-gqa": (2, 6, 2, 19, 37, 64, 0, 0.0),
    "window-softcap-hd80": (2, 6, 2, 19, 37, 80, 7, 5.0),
    "mha-hd40-softcap": (1, 3, 3, 19, 19, 40, 0, 30.0),
    "several-tiles-window": (1, 6, 2, 150, 161, 64, 40, 0.0),
    "latent-hd576": (1, 4, 1, 7, 23, 576, 0, 0.0),
}


@pytest.mark.parametrize("shape", PREFILL.values(), ids=PREFILL.keys())
def test_prefill_float32(shape):
    B, H, Hkv, T, S, hd, window, softcap = shape
    q, k, v = inputs(B, H, Hkv, T, S, hd, seed=T * S + hd)
    check(q, k, v, torch.arange(S - T, S), torch.arange(S), scale=hd ** -0.5, window=window, softcap=softcap)


def test_prefill_float16():
    q, k, v = inputs(1, 6, 2, 19, 37, 64, seed=5, dtype=torch.float16)
    check(q, k, v, torch.arange(18, 37), torch.arange(37), scale=0.125, window=7, softcap=5.0)


@pytest.mark.parametrize("q_first, T, window", [(0, 40, 0), (140, 10, 16)], ids=["above-diagonal", "before-window"])
def test_prefill_skips_masked_key_tiles(q_first, T, window):
    """Key tiles that no query may see are never loaded: their values are NaN (which any product with a
    zero probability would spread), yet the output matches the reference on clean values."""
    S, hd = 150, 64
    q, k, v = inputs(1, 6, 2, T, S, hd, seed=T)
    q_pos, k_pos = torch.arange(q_first, q_first + T), torch.arange(S)
    tile = kernel.plan(1, 6, 2, T, S, hd, q.dtype, q.device).block_n
    seen_lo = max(q_first - window + 1, 0) if window else 0      # the keys some query sees: seen_lo..seen_hi
    seen_hi = q_first + T - 1
    poisoned = v.clone()
    poisoned[:, :, : seen_lo // tile * tile] = float("nan")
    poisoned[:, :, (seen_hi // tile + 1) * tile:] = float("nan")
    assert poisoned.isnan().any()
    got = kernel.attention(q, k, poisoned, q_pos, k_pos, scale=0.125, window=window)
    want = reference.attention(q.double(), k.double(), v.double(), q_pos, k_pos, scale=0.125, window=window)
    torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


def test_any_strides():
    """Keys and values stored dim-major, (B, Hkv, hd, S) transposed: no dim of them is contiguous as read."""
    q, k, v = inputs(1, 4, 2, 9, 21, 24, seed=8)
    k, v = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (k, v))
    assert k.stride(-1) == 21
    check(q, k, v, torch.arange(12, 21), torch.arange(21), scale=0.2)


def test_prefill_over_a_ring():
    """A chunk over a sliding window's ring, as ``LayerCache.update`` passes it: the ring's 40 slots hold
    positions 60..99 out of order (slot = position % 40), then the chunk's own 9 keys."""
    ring = torch.arange(60, 100).roll(20)                                   # slot s holds 60 + ((s - 20) % 40)
    assert (ring % 40 == torch.arange(40)).all()
    q, k, v = inputs(1, 6, 2, 9, 49, 64, seed=9)
    check(q, k, v, torch.arange(100, 109), torch.cat((ring, torch.arange(100, 109))), scale=0.125, window=40)


# --- decode --------------------------------------------------------------------------------------------

def full_cache(slots: int, written: int) -> torch.Tensor:
    """Positions of a full cache of ``slots`` slots with ``written`` positions stored; the rest empty."""
    return torch.cat((torch.arange(written), torch.full((slots - written,), EMPTY)))


def ring_cache(slots: int, written: int) -> torch.Tensor:
    """Positions of a ring of ``slots`` slots after positions 0..written-1: slot s holds the latest p = s mod slots."""
    p = torch.arange(written - slots, written)
    return p[torch.argsort(p % slots)]


DECODE = {   # B, H, Hkv, T, k_pos, window, softcap
    "empty-slots": (1, 6, 2, 1, full_cache(300, 230), 0, 0.0),
    "empty-slots-T3-softcap": (2, 6, 2, 3, full_cache(300, 230), 0, 10.0),
    "ring": (1, 8, 2, 1, ring_cache(130, 401), 130, 0.0),
    "ring-narrower-window": (1, 8, 1, 2, ring_cache(130, 401), 50, 0.0),
}


@pytest.mark.parametrize("shape", DECODE.values(), ids=DECODE.keys())
def test_decode_split_kv(shape):
    B, H, Hkv, T, k_pos, window, softcap = shape
    last = int(k_pos[k_pos != EMPTY].max())
    q, k, v = inputs(B, H, Hkv, T, k_pos.numel(), 80, seed=k_pos.numel() + T)
    assert splits(q, k) > 1
    check(q, k, v, torch.arange(last - T + 1, last + 1), k_pos, scale=0.1, window=window, softcap=softcap)


def test_decode_float16():
    k_pos = full_cache(300, 230)
    q, k, v = inputs(1, 6, 2, 1, 300, 64, seed=11, dtype=torch.float16)
    assert splits(q, k) > 1
    check(q, k, v, torch.tensor([229]), k_pos, scale=0.125, softcap=5.0)


# --- edges, errors, dispatch ----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value encountered in divide")   # the interpreter's 0 / 0
@pytest.mark.parametrize("T", [1, 6], ids=["decode", "prefill"])
def test_rows_without_keys_are_nan_like_the_reference(T):
    q, k, v = inputs(1, 4, 2, T, 70, 32, seed=T)
    q_pos, k_pos = torch.arange(T), torch.arange(2, 72)                    # query 0 and 1 see no key
    got = kernel.attention(q, k, v, q_pos, k_pos, scale=0.2)
    want = reference.attention(q, k, v, q_pos, k_pos, scale=0.2)
    torch.testing.assert_close(got, want, equal_nan=True, **TOL[torch.float32])
    assert got[:, :, :2].isnan().all() and not got[:, :, 2:].isnan().any()


def test_no_keys_give_zeros_like_the_reference():
    q, k, v = inputs(1, 4, 2, 3, 0, 32, seed=1)
    got = kernel.attention(q, k, v, torch.arange(3), torch.zeros(0, dtype=torch.long), scale=0.2)
    assert torch.equal(got, reference.attention(q, k, v, torch.arange(3), torch.zeros(0, dtype=torch.long), scale=0.2))


def test_heads_wider_than_served_go_to_the_reference():
    q, k, v = inputs(1, 2, 1, 2, 3, kernel.MAX_HEAD_DIM + 8, seed=4)
    torch.testing.assert_close(kernel.attention(q, k, v, torch.arange(1, 3), torch.arange(3), scale=0.03),
                               reference.attention(q, k, v, torch.arange(1, 3), torch.arange(3), scale=0.03),
                               rtol=0, atol=0)


def test_bad_input():
    q, k, v = inputs(1, 6, 4, 2, 5, 16, seed=2)
    with pytest.raises(InvalidOptionError, match="H = 6 a multiple of Hkv"):
        kernel.attention(q, k, v, torch.arange(2), torch.arange(5), scale=1.0)
    q, k, v = inputs(1, 4, 2, 2, 5, 16, seed=2)
    with pytest.raises(InvalidOptionError, match="k_pos"):
        kernel.attention(q, k, v, torch.arange(2), torch.arange(5.0), scale=1.0)
    with pytest.raises(InvalidOptionError, match="dtypes"):
        kernel.attention(q, k.half(), v.half(), torch.arange(2), torch.arange(5), scale=1.0)


def test_dispatch_picks_the_kernel(monkeypatch):
    """``OXIDE_IMPL=triton`` sends the functional API's attention to the kernel, float32 on the CPU included."""
    monkeypatch.setenv("OXIDE_IMPL", "triton")
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    q, k, v = inputs(1, 6, 2, 5, 11, 48, seed=3)
    assert dispatch.chosen_name("attention", "cpu", torch.float32, torch.float32, torch.float32) == "triton"
    got = ops.attention(q, k, v, torch.arange(6, 11), torch.arange(11), scale=0.15, window=4)
    torch.testing.assert_close(got, kernel.attention(q, k, v, torch.arange(6, 11), torch.arange(11), scale=0.15,
                                                     window=4), rtol=0, atol=0)


# --- CUDA: real sizes ----------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hd, window, softcap", [(128, 0, 0.0), (256, 1024, 50.0), (80, 0, 0.0)], ids=str)
def test_prefill_cuda(dtype, hd, window, softcap):
    q, k, v = inputs(2, 16, 4, 1531, 2047, hd, seed=hd, dtype=dtype, device="cuda")
    check(q, k, v, torch.arange(516, 2047, device="cuda"), torch.arange(2047, device="cuda"), scale=hd ** -0.5,
          window=window, softcap=softcap)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("H, Hkv, T, hd, window", [(32, 8, 1, 128, 0), (16, 1, 2, 576, 0), (8, 4, 4, 256, 4096)],
                         ids=str)
def test_decode_cuda(dtype, H, Hkv, T, hd, window):
    k_pos = (ring_cache(4096, 9001) if window else full_cache(8192, 7001)).cuda()
    last = int(k_pos[k_pos != EMPTY].max())
    q, k, v = inputs(1, H, Hkv, T, k_pos.numel(), hd, seed=H + T, dtype=dtype, device="cuda")
    assert splits(q, k) > 1
    check(q, k, v, torch.arange(last - T + 1, last + 1, device="cuda"), k_pos, scale=hd ** -0.5, window=window)
