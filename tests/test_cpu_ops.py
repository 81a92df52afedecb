"""The compiled CPU layer ops (``oxide.ops.cpu.layers``) against their references in ``oxide.ops.reference``.

Inputs are seeded random normals (never zeros), at odd sizes, as strided views where the model passes
views, with 1 and 2 threads. Every output buffer the kernels fill is pre-poisoned with NaN (the
``_empty`` hook), so an element left unwritten fails the comparison.

Tolerances (float32): norms, rope, activations and soft-cap: rtol 1e-5, atol 1e-6 (other summation
orders; a polynomial exp/tanh within a few ulp); erf gelu atol 4e-6 (the reference's own tail error). Attention: rtol 1e-5, atol 2e-6 (dot products over
hd in another order, softmax merged over key chunks); its weights sum to 1 within 1e-6.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import oxide.ops as ops
from oxide.ops import cpu, dispatch, reference
from oxide.ops.cpu import layers

pytestmark = pytest.mark.skipif(not cpu.available(),
                                reason="the compiled CPU core oxide._cpu is not built (python setup.py build_ext --inplace)")

F32 = dict(rtol=1e-5, atol=1e-6)
ATTN = dict(rtol=1e-5, atol=2e-6)
LAYER_OPS = ("rms_norm", "add_rms_norm", "rope_cos_sin", "rope", "kv_store", "kv_store_rows", "attention", "attention_rows",
             "gated_activation", "add", "scale", "softcap", "argmax", "sample")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(layers, "_empty", lambda like: torch.full(like.shape, float("nan")))


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# --- rms_norm and add_rms_norm ----------------------------------------------------------------------

def _norm_inputs():
    """(name, x) pairs: contiguous, strided views, many leading dims, and one large enough to use threads."""
    yield "row", randn(1, 640)
    yield "3d", randn(3, 37, 5, seed=1)
    yield "BTHhd-as-BHThd", randn(2, 37, 3, 10, seed=2).transpose(1, 2)        # leading dims strided
    yield "last-dim-strided", randn(2, 9, 7, seed=3).transpose(1, 2)           # (2, 7, 9), last stride 7
    yield "5d", randn(2, 3, 2, 4, 6, seed=4)[:, :, :, 1:]                       # sliced, > 3 leading dims
    yield "vector", randn(13, seed=5)
    yield "large", randn(70, 1001, seed=6)                                     # > 32k elements: threaded


@pytest.mark.parametrize("name,x", list(_norm_inputs()), ids=[n for n, _ in _norm_inputs()])
def test_rms_norm(name, x, threads):
    weight = randn(x.shape[-1], seed=9)
    got = layers.rms_norm(x, weight, 1e-6)
    torch.testing.assert_close(got, reference.rms_norm(x, weight, 1e-6), **F32)


def test_rms_norm_converts_the_weight():
    x, weight = randn(3, 64), randn(64, seed=1).to(torch.bfloat16)
    torch.testing.assert_close(layers.rms_norm(x, weight, 1e-5), reference.rms_norm(x, weight, 1e-5), **F32)


@pytest.mark.parametrize("name,x", list(_norm_inputs()), ids=[n for n, _ in _norm_inputs()])
def test_add_rms_norm(name, x, threads):
    residual = randn(*x.shape, seed=11)
    weight = randn(x.shape[-1], seed=12)
    total, normed = layers.add_rms_norm(x, residual, weight, 1e-6)
    want_total, want_normed = reference.add_rms_norm(x, residual, weight, 1e-6)
    torch.testing.assert_close(total, want_total, rtol=0, atol=0)          # one f32 add: exact
    torch.testing.assert_close(normed, want_normed, **F32)


# --- rope ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 3, 37])
@pytest.mark.parametrize("hd", [2, 6, 34, 256])
def test_rope(T, hd, threads):
    B, H = 2, 3
    x = randn(B, T, H, hd, seed=T + hd).transpose(1, 2)                      # (B, H, T, hd) view, as the model
    positions = torch.randperm(1000, generator=torch.Generator().manual_seed(1))[:T]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    cos, sin = reference.rope_cos_sin(positions, inv_freq)
    torch.testing.assert_close(layers.rope(x, cos, sin), reference.rope(x, cos, sin), **F32)


@pytest.mark.parametrize("T", [1, 5, 600])
@pytest.mark.parametrize("half", [1, 3, 128])
def test_rope_cos_sin(T, half, threads):
    positions = torch.randperm(40000, generator=torch.Generator().manual_seed(T))[:T]   # up to large angles
    inv_freq = 1.0 / (10000 ** (torch.arange(half).float() / half)) * (1.0 + randn(half, seed=half).abs())
    # float32 cos/sin of the same float32 angle: libm's and torch's agree within 2 ulp of 1
    for scale in (1.0, 1.1902380714238083):          # Phi-3's LongRoPE attention factor
        got, want = layers.rope_cos_sin(positions, inv_freq, scale), reference.rope_cos_sin(positions, inv_freq, scale)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=3e-7 * scale)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=3e-7 * scale)


def test_rope_large_and_contiguous(threads):
    x = randn(1, 8, 64, 128, seed=3)                                         # > 32k elements: threaded
    cos, sin = randn(64, 64, seed=4), randn(64, 64, seed=5)
    torch.testing.assert_close(layers.rope(x, cos, sin), reference.rope(x, cos, sin), **F32)


@pytest.mark.parametrize("pairs, rotated", [("adjacent", 32), ("half", 20), ("adjacent", 20)])
def test_rope_hands_other_pairings_to_the_reference(pairs, rotated):
    """The C++ kernel rotates whole heads in half-split pairs; adjacent pairs and partial rotation still work."""
    x = randn(1, 5, 2, 32, seed=7).transpose(1, 2)
    cos, sin = randn(5, rotated // 2, seed=8), randn(5, rotated // 2, seed=9)
    torch.testing.assert_close(layers.rope(x, cos, sin, pairs=pairs), reference.rope(x, cos, sin, pairs=pairs),
                               rtol=0, atol=0)


# --- attention ------------------------------------------------------------------------------------------

def _cache_views(B: int, Hkv: int, S: int, hd: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v: (B, Hkv, S, hd) slices of larger (B, Hkv, S + 7, hd) buffers, as oxide.cache returns them."""
    k_buf, v_buf = randn(B, Hkv, S + 7, hd, seed=seed), randn(B, Hkv, S + 7, hd, seed=seed + 1)
    return k_buf[:, :, :S], v_buf[:, :, :S]


def _attention_case(T: int, S: int, G: int, hd: int, seed: int):
    B, Hkv = 2, 2 if G == 1 else 1
    H = Hkv * G
    q = randn(B, T, H, hd, seed=seed).transpose(1, 2)                        # (B, H, T, hd) view
    k, v = _cache_views(B, Hkv, S, hd, seed + 1)
    # Keys in ring order (positions out of order, as a sliding-window cache holds them); the queries
    # are the last T positions, so each sees at least its own key.
    k_pos = torch.randperm(S, generator=torch.Generator().manual_seed(seed))
    q_pos = torch.arange(S - T, S)
    return q, k, v, q_pos, k_pos


@pytest.mark.parametrize("T,S", [(1, 1), (1, 5), (1, 300), (3, 5), (3, 300), (37, 300)])
@pytest.mark.parametrize("window", [0, 4])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
@pytest.mark.parametrize("G", [1, 4])
@pytest.mark.parametrize("hd", [20, 72])   # 72: two passes of 32 value columns plus a remainder of 8
def test_attention(T, S, window, softcap, G, hd, threads):
    q, k, v, q_pos, k_pos = _attention_case(T, S, G, hd, seed=T * 1000 + S)
    kwargs = dict(scale=hd ** -0.5 if softcap == 0 else 1.0, window=window, softcap=softcap)
    got = layers.attention(q, k, v, q_pos, k_pos, **kwargs)
    torch.testing.assert_close(got, reference.attention(q, k, v, q_pos, k_pos, **kwargs), **ATTN)


@pytest.mark.parametrize("T,S", [(3, 1), (37, 1), (37, 5)])
@pytest.mark.parametrize("window", [0, 64])
def test_attention_more_queries_than_keys(T, S, window, threads):
    """Queries at positions S .. S+T-1 after keys 0 .. S-1 (out of order): each sees every key (window 64)."""
    B, H, Hkv, hd = 2, 4, 2, 20
    q = randn(B, T, H, hd, seed=T).transpose(1, 2)
    k, v = _cache_views(B, Hkv, S, hd, seed=S)
    q_pos, k_pos = torch.arange(S, S + T), torch.randperm(S, generator=torch.Generator().manual_seed(3))
    got = layers.attention(q, k, v, q_pos, k_pos, scale=0.3, window=window)
    torch.testing.assert_close(got, reference.attention(q, k, v, q_pos, k_pos, scale=0.3, window=window), **ATTN)


@pytest.mark.parametrize("G", [2, 3, 5, 6, 8])   # query heads per kv head: blocks of 4 plus 1-3 left over
def test_attention_head_groups(G, threads):
    q, k, v, q_pos, k_pos = _attention_case(3, 300, G, 40, seed=G)
    got = layers.attention(q, k, v, q_pos, k_pos, scale=0.2, window=16)
    torch.testing.assert_close(got, reference.attention(q, k, v, q_pos, k_pos, scale=0.2, window=16), **ATTN)


@pytest.mark.parametrize("S", [512, 2048])
def test_attention_decode_shape(S, threads):
    """Gemma 3 270M decode: H=4, Hkv=1, hd=256, T=1, keys split across threads."""
    q, k, v, q_pos, k_pos = _attention_case(1, S, 4, 256, seed=S)
    q, k, v = q[:1], k[:1], v[:1]
    got = layers.attention(q, k, v, q_pos, k_pos, scale=256 ** -0.5)
    torch.testing.assert_close(got, reference.attention(q, k, v, q_pos, k_pos, scale=256 ** -0.5), **ATTN)


@pytest.mark.parametrize("T,S,window", [(1, 300, 0), (37, 300, 0), (37, 300, 16), (3, 5, 0)])
def test_attention_weights_sum_to_one(T, S, window, threads):
    q, k, _, q_pos, k_pos = _attention_case(T, S, 4, 24, seed=7)
    ones = torch.ones_like(k)
    got = layers.attention(q, k, ones, q_pos, k_pos, scale=0.3, window=window)
    torch.testing.assert_close(got, torch.ones_like(got), rtol=0, atol=1e-6)


def test_attention_rows_without_keys_are_nan_like_the_reference(threads):
    """Queries at positions 0, 1 precede every key (positions 2..): no allowed key, NaN rows; the rest valid."""
    B, H, T, S, hd = 2, 4, 6, 300, 12
    q, k, v = randn(B, H, T, hd), randn(B, 1, S, hd, seed=1), randn(B, 1, S, hd, seed=2)
    q_pos, k_pos = torch.arange(T), torch.arange(S) + 2
    got = layers.attention(q, k, v, q_pos, k_pos, scale=0.25)
    want = reference.attention(q, k, v, q_pos, k_pos, scale=0.25)
    assert want[:, :, :2].isnan().all() and not want[:, :, 2:].isnan().any()
    torch.testing.assert_close(got, want, equal_nan=True, **ATTN)


@pytest.mark.parametrize("window,softcap", [(0, 0.0), (16, 5.0)])
def test_attention_rows_equal_each_row_alone(window, softcap, threads):
    """``attention_rows``: each query row over its own sequence's keys (lengths 1 to 700, so 1 to 3 chunks of 256
    keys), in one call, bit for bit what ``attention`` gives that row alone, and the reference's to tolerance."""
    H, Hkv, hd, size = 4, 1, 40, 704
    lengths = [1, 5, 255, 256, 300, 700]
    caches = [_cache_views(1, Hkv, size, hd, seed=10 + b) for b in range(len(lengths))]
    keys = [k[:, :, :n] for (k, _), n in zip(caches, lengths)]                  # slot caches cut to their length
    values = [v[:, :, :n] for (_, v), n in zip(caches, lengths)]
    key_pos = [torch.arange(n) for n in lengths]
    q = randn(1, len(lengths), H, hd, seed=3).transpose(1, 2)                  # (1, H, B, hd) view
    q_pos = torch.tensor([n - 1 for n in lengths])
    kwargs = dict(scale=0.2, window=window, softcap=softcap)
    got = layers.attention_rows(q, keys, values, q_pos, key_pos, **kwargs)
    assert got.shape == (1, H, len(lengths), hd)
    for b in range(len(lengths)):
        alone = layers.attention(q[:, :, b:b + 1], keys[b], values[b], q_pos[b:b + 1], key_pos[b], **kwargs)
        assert torch.equal(got[:, :, b:b + 1], alone), f"row {b}"
    torch.testing.assert_close(got, reference.attention_rows(q, keys, values, q_pos, key_pos, **kwargs), **ATTN)


def test_a_query_row_computes_alike_in_a_prefill_and_alone(threads):
    """Keys cut into fixed chunks: a query row of a 600-row prefill equals the same row decoded alone over the
    keys up to it, bit for bit (so a prefix-cache hit or a chunk boundary changes no logits)."""
    H, Hkv, hd, S = 4, 1, 24, 600
    q = randn(1, S, H, hd, seed=5).transpose(1, 2)
    k, v = _cache_views(1, Hkv, S, hd, seed=6)
    positions = torch.arange(S)
    prefill = layers.attention(q, k, v, positions, positions, scale=0.3)
    for t in (0, 255, 256, 599):
        alone = layers.attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1], positions[t:t + 1],
                                 positions[:t + 1], scale=0.3)
        assert torch.equal(prefill[:, :, t:t + 1], alone), f"row {t}"


def test_attention_rows_reject_bad_shapes():
    q = randn(1, 4, 2, 8)
    k = randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match="one key set per row"):
        layers.attention_rows(q, [k], [k], torch.tensor([2, 2]), [torch.arange(3)], scale=1.0)
    with pytest.raises(ValueError, match="head_dim"):
        layers.attention_rows(q, [k, randn(1, 1, 3, 6)], [k, randn(1, 1, 3, 6)], torch.tensor([2, 2]),
                              [torch.arange(3)] * 2, scale=1.0)


def test_kv_store_rows_equals_the_reference(threads):
    """Row b into sequence b's cache (a ring of 5 slots, a full cache of 40, positions that wrap the ring), every
    other slot left as it was; the same as the reference's row-by-row stores."""
    n_kv, dk, dv = 2, 12, 8
    k, v = randn(1, 3, n_kv, dk, seed=1).transpose(1, 2), randn(1, n_kv, 3, dv, seed=2)   # (1, Hkv, B, d), strided k
    positions = torch.tensor([7, 0, 33])
    def caches(seed):
        sizes = (5, 40, 40)
        return ([randn(1, n_kv, n, dk, seed=seed + i) for i, n in enumerate(sizes)],
                [randn(1, n_kv, n, dv, seed=seed + 9 + i) for i, n in enumerate(sizes)],
                [torch.full((n,), -1, dtype=torch.long) for n in sizes])
    got, want = caches(20), caches(20)
    layers.kv_store_rows(k, v, positions, *got)
    reference.kv_store_rows(k, v, positions, *want)
    for a, b in zip(got, want):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert got[2][0].tolist() == [-1, -1, 7, -1, -1]                          # the ring's slot 7 % 5 holds position 7
    assert torch.equal(got[0][0][:, :, 2], k[:, :, 0]) and torch.equal(got[1][2][:, :, 33], v[:, :, 2])
    with pytest.raises(ValueError, match="one cache per row"):
        layers.kv_store_rows(k, v, positions, got[0][:2], got[1][:2], got[2][:2])


def test_attention_no_keys_at_all():
    q, k, v = randn(1, 4, 1, 8), randn(1, 1, 0, 8), randn(1, 1, 0, 8)
    got = layers.attention(q, k, v, torch.tensor([5]), torch.zeros(0, dtype=torch.long), scale=1.0)
    torch.testing.assert_close(got, reference.attention(q, k, v, torch.tensor([5]), torch.zeros(0, dtype=torch.long),
                                                        scale=1.0))


_EVERY_OP_SCRIPT = """
import torch
from oxide.ops import reference
from oxide.ops.cpu import extension, layers
assert extension().layer_isa() == {layer_isa!r}, extension().layer_isa()
g = torch.Generator().manual_seed(0)
def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale
def same(got, want, atol=2e-6):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=atol)
q = randn(2, 3, 8, 40).transpose(1, 2)
k, v = randn(2, 2, 310, 40)[:, :, :300], randn(2, 2, 310, 40)[:, :, :300]
qp, kp = torch.arange(297, 300), torch.arange(300)
for w, c in ((0, 0.0), (16, 5.0)):
    same(layers.attention(q, k, v, qp, kp, scale=0.2, window=w, softcap=c),
         reference.attention(q, k, v, qp, kp, scale=0.2, window=w, softcap=c))
x, r, wt = randn(5, 3, 37), randn(5, 3, 37), randn(37)
same(layers.rms_norm(x, wt, 1e-6), reference.rms_norm(x, wt, 1e-6))
for a, b in zip(layers.add_rms_norm(x, r, wt, 1e-6), reference.add_rms_norm(x, r, wt, 1e-6)):
    same(a, b)
cos, sin = randn(3, 20), randn(3, 20)
same(layers.rope(q, cos, sin), reference.rope(q, cos, sin))
gate, up = randn(3, 1001, scale=4.0), randn(3, 1001)
for act in ("silu", "gelu_pytorch_tanh", "gelu"):
    same(layers.gated_activation(gate, up, act), reference.gated_activation(gate, up, act), atol=4e-6)
logits = randn(3, 1001, scale=40.0)
same(layers.softcap(logits, 30.0), reference.softcap(logits, 30.0))
row = randn(262144)
row[[7, 200000]] = row.max() + 1.0
assert layers.argmax(row) == reference.argmax(row) == 7
row[150000] = float("nan")
assert layers.argmax(row) == reference.argmax(row) == 150000
"""


_LAYER_ISA = {"avx512vnni": "avx512"}   # the layer ops have no integer work, hence no VNNI build


@pytest.mark.slow   # a subprocess per instruction set, seconds each
def test_every_instruction_set():
    """Each kernel variant the CPU runs (OXIDE_CPU_ISA), for every op, against the reference in a fresh process."""
    for isa in cpu.extension().isas():
        env = {**os.environ, "OXIDE_CPU_ISA": isa}
        run = subprocess.run([sys.executable, "-c", _EVERY_OP_SCRIPT.format(layer_isa=_LAYER_ISA.get(isa, isa))], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, f"{isa}: {run.stderr[-2000:]}"


# --- gated activations and soft-cap --------------------------------------------------------------------

def _activation_inputs():
    yield "decode", randn(1, 1, 2048, scale=4.0), randn(1, 1, 2048, seed=1)
    yield "odd", randn(3, 37, 33, seed=2, scale=4.0), randn(3, 37, 33, seed=3)
    yield "strided", randn(37, 6, seed=4, scale=4.0).t(), randn(6, 37, seed=5)
    yield "tails", torch.linspace(-120, 120, 4801).view(1, -1), randn(1, 4801, seed=6)
    yield "large", randn(40, 2048, seed=7, scale=4.0), randn(40, 2048, seed=8)   # threaded
    # the two halves of a fused gate-up projection, read in place (one row stride), threaded
    fused = torch.cat([randn(4, 33, 300, seed=9, scale=4.0), randn(4, 33, 300, seed=10)], -1)
    yield "fused-halves", *fused.split(300, -1)


@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh", "gelu"])
@pytest.mark.parametrize("name,gate,up", list(_activation_inputs()), ids=[n for n, *_ in _activation_inputs()])
def test_gated_activation(name, gate, up, act, threads):
    got = layers.gated_activation(gate, up, act)
    # The reference's 1 + erf(g / sqrt 2) cancels for g << 0 (absolute error ~ |g up| eps, up to 2e-6
    # here); the kernel computes g/2 erfc(-g / sqrt 2) instead, so erf gelu gets atol 4e-6.
    tolerance = dict(rtol=1e-5, atol=4e-6) if act == "gelu" else F32
    torch.testing.assert_close(got, reference.gated_activation(gate, up, act), **tolerance)


@pytest.mark.parametrize("cap", [30.0, 1.0])
@pytest.mark.parametrize("shape", [(1, 262), (3, 37, 11), (4, 20000)])
def test_softcap(shape, cap, threads):
    x = randn(*shape, seed=len(shape), scale=40.0)
    x.view(-1)[:5] = torch.tensor([0.0, 1e-6, -1e-3, 0.29 * cap, -0.31 * cap])   # the series/exp switch at 0.3
    torch.testing.assert_close(layers.softcap(x, cap), reference.softcap(x, cap), **F32)


@pytest.mark.parametrize("shape", [(1, 1, 640), (2, 7, 33), (70, 1001)])
def test_add_and_scale(shape, threads):
    x, y = randn(*shape, seed=1), randn(*shape, seed=2)
    torch.testing.assert_close(layers.add(x, y), reference.add(x, y), rtol=0, atol=0)
    torch.testing.assert_close(layers.add(x.transpose(-1, -2), y.transpose(-1, -2)),
                               reference.add(x.transpose(-1, -2), y.transpose(-1, -2)), rtol=0, atol=0)
    torch.testing.assert_close(layers.scale(x, 25.298221281347036), reference.scale(x, 25.298221281347036),
                               rtol=0, atol=0)


@pytest.mark.parametrize("slots,start,T", [(50, 0, 1), (50, 17, 1), (50, 0, 23), (8, 5, 1), (8, 6, 5), (8, 3, 21)],
                         ids=["first", "decode", "prompt", "ring", "ring-wraps", "longer-than-ring"])
def test_kv_store(slots, start, T, threads):
    """Keys land at slots position % slots, as (transposed) views of a projection; a chunk longer than the ring
    keeps its last `slots` positions. Unwritten slots stay as they were (poisoned with NaN here)."""
    n_kv, hd, v_dim = 3, 20, 20 if slots != 50 else 12                   # (a latent cache: narrower values)
    k = randn(1, T, n_kv, hd, seed=T).transpose(1, 2)                       # (1, Hkv, T, hd) views
    v = randn(1, T, n_kv, v_dim, seed=T + 1).transpose(1, 2)
    positions = torch.arange(start, start + T)
    caches = []
    for store in (layers.kv_store, reference.kv_store):
        cache_k, cache_v = torch.full((1, n_kv, slots, hd), float("nan")), torch.full((1, n_kv, slots, v_dim), float("nan"))
        cache_pos = torch.full((slots,), -1, dtype=torch.long)
        store(k, v, positions, cache_k, cache_v, cache_pos)
        caches.append((cache_k, cache_v, cache_pos))
    for got, want in zip(*caches):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    cache_k, _, cache_pos = caches[0]
    last = positions[-1].item()
    assert cache_pos[last % slots] == last
    torch.testing.assert_close(cache_k[:, :, last % slots], k[:, :, -1], rtol=0, atol=0)


def _argmax_inputs():
    yield "vocab", randn(262144, seed=11)
    yield "odd", randn(1001, seed=12)
    yield "one", randn(1, seed=13)
    ties = randn(3001, seed=14)
    ties[[17, 1500, 3000]] = ties.max() + 1.0                      # the first of equal maxima
    yield "ties", ties
    late = randn(5000, seed=15)
    late[4999] = float("inf")
    yield "inf-last", late
    nans = randn(4097, seed=16)
    nans[[2050, 4096]] = float("nan")                               # a NaN beats every number, the first wins
    nans[10] = float("inf")
    yield "nan", nans
    yield "all-minus-inf", torch.full((77,), float("-inf"))
    yield "strided", randn(2000, seed=17)[::2]


@pytest.mark.parametrize("name,x", list(_argmax_inputs()), ids=[n for n, _ in _argmax_inputs()])
def test_argmax(name, x):
    assert layers.argmax(x) == reference.argmax(x) == int(torch.argmax(x))


def test_argmax_refuses_what_it_cannot_answer():
    with pytest.raises(ValueError, match="empty"):
        layers.argmax(torch.zeros(0))
    with pytest.raises(ValueError, match="argmax: x has shape"):
        layers.argmax(torch.zeros(2, 3))


def test_sample_greedy_through_the_compiled_argmax():
    """``sample`` is the reference's, with the first maximum of the penalised logits found by the compiled argmax."""
    from oxide.processors import SamplingOptions

    x, counts, u = randn(1001, seed=3), torch.randint(0, 3, (1001,), dtype=torch.int32), torch.tensor(0.25)
    for options in (SamplingOptions.greedy(), SamplingOptions(temperature=0.0, repeat_penalty=1.5),
                    SamplingOptions(seed=1, repeat_penalty=1.5)):
        got = layers.sample(x, counts, u, options)
        assert got.dtype == torch.int64 and got.shape == ()
        assert int(got) == int(reference.sample(x, counts, u, options))
    x[[17, 900]] = x.max() + 1
    assert int(layers.sample(x, None, u, SamplingOptions.greedy())) == 17


# --- dispatch and bad input ------------------------------------------------------------------------------

def test_functional_api_uses_the_compiled_core_for_float32():
    for op in LAYER_OPS:
        assert dispatch.chosen_name(op, "cpu", torch.float32) == "cpp", op
    x, w = randn(2, 16), randn(16, seed=1)
    total, normed = ops.add_rms_norm(x, x, w, 1e-6)
    torch.testing.assert_close(normed, reference.rms_norm(x + x, w, 1e-6), **F32)


def test_other_dtypes_go_to_the_reference():
    for op in LAYER_OPS:
        assert dispatch.chosen_name(op, "cpu", torch.bfloat16) == "torch", op
    x, w = randn(2, 16).bfloat16(), randn(16, seed=1)
    assert ops.rms_norm(x, w, 1e-6).dtype == torch.bfloat16
    q = randn(1, 2, 1, 8)
    kv = randn(1, 1, 4, 8).half()
    assert dispatch.chosen_name("attention", "cpu", q.dtype, kv.dtype, kv.dtype) == "torch"


def test_oxide_impl_torch_picks_the_reference(monkeypatch):
    monkeypatch.setenv("OXIDE_IMPL", "torch")
    for op in LAYER_OPS:
        assert dispatch.bind(op, "cpu", torch.float32) is getattr(reference, op), op
    monkeypatch.setenv("OXIDE_IMPL", "cpp")
    for op in LAYER_OPS:
        assert dispatch.bind(op, "cpu", torch.float32) is getattr(layers, op), op


def test_bad_inputs_raise_instead_of_crashing():
    x, w = randn(2, 8), randn(8)
    with pytest.raises(TypeError):
        layers.rms_norm(x.double(), w, 1e-6)
    with pytest.raises(TypeError):
        layers.rms_norm(torch.empty(2, 8, device="meta"), w, 1e-6)
    with pytest.raises(ValueError):
        layers.rms_norm(x, randn(7), 1e-6)
    with pytest.raises(ValueError):
        layers.add_rms_norm(x, randn(3, 8), w, 1e-6)
    with pytest.raises(ValueError):
        layers.rope(randn(1, 2, 3, 8), randn(4, 4), randn(4, 4))              # cos/sin must be (T, r/2)
    with pytest.raises(ValueError):
        layers.rope(randn(1, 2, 3, 7), randn(3, 4), randn(3, 4))              # rotating 8 dims of 7
    q, k = randn(1, 3, 1, 8), randn(1, 2, 5, 8)
    with pytest.raises(ValueError):
        layers.attention(q, k, k, torch.tensor([4]), torch.arange(5), scale=1.0)   # 3 heads over 2 kv heads
    with pytest.raises(ValueError):
        layers.attention(randn(1, 2, 1, 8), k, k, torch.tensor([4]), torch.arange(4), scale=1.0)   # k_pos length
    with pytest.raises(ValueError):
        layers.attention(randn(1, 2, 1, 8), k, k, torch.tensor([4.0]), torch.arange(5), scale=1.0)  # float positions
    with pytest.raises(ValueError):
        layers.kv_store(randn(1, 2, 1, 8), randn(1, 2, 1, 8), torch.tensor([0]), randn(1, 2, 4, 6), randn(1, 2, 4, 6),
                        torch.zeros(4, dtype=torch.long))                    # head_dim differs from the cache's
    with pytest.raises(ValueError):
        layers.kv_store(randn(1, 2, 1, 8), randn(1, 2, 1, 8), torch.tensor([0]), randn(1, 2, 4, 8), randn(1, 2, 4, 8),
                        torch.zeros(4, dtype=torch.int32))                   # positions of another dtype
    with pytest.raises(ValueError):
        layers.add(x, randn(2, 9))
    with pytest.raises(ValueError):
        layers.rope_cos_sin(torch.arange(3), torch.empty(0))
    with pytest.raises(ValueError):
        layers.gated_activation(x, x, "relu")
    with pytest.raises(ValueError):
        layers.gated_activation(x, randn(2, 9), "silu")


def test_empty_inputs():
    assert layers.rms_norm(torch.empty(0, 8), randn(8), 1e-6).shape == (0, 8)
    assert layers.gated_activation(torch.empty(0), torch.empty(0), "silu").shape == (0,)
    assert layers.rope(torch.empty(1, 2, 0, 8), torch.empty(0, 4), torch.empty(0, 4)).shape == (1, 2, 0, 8)
