"""The float32 layer ops on the CPU through ``oxide._cpu``: RMS norm (plain and fused with the residual add),
rotary embedding (its tables and its rotation), KV-cache stores, attention, gated activations, the residual
add, scaling, soft-capping, the argmax of greedy sampling and the sampler built on it.

Each function has the signature and the semantics of its reference in :mod:`oxide.ops.reference` and
serves float32 CPU tensors (:func:`serves` is the dispatch predicate; other dtypes go to the reference).
At batch-1 decode the reference spends most of its time in the per-op overhead of its 5 to 10 small
torch ops; here each op is one C++ call. Before any address reaches C++, every tensor's device, dtype
and shape is checked and its last dimension made contiguous: a bad call raises, it never crashes.
Inputs may be strided views (a transposed (B, T, H, hd) projection, a slice of the KV cache): their
leading dimensions are read in place. Outputs are new contiguous tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...processors import SamplingOptions
from .. import reference
from . import extension, threads

ACTIVATIONS = {"silu": 0, "gelu_pytorch_tanh": 1, "gelu": 2}   # the C++ activation codes


def serves(*dtypes: torch.dtype) -> bool:
    """Whether the kernels take a call whose tensors have these dtypes: float32 only."""
    return all(d == torch.float32 for d in dtypes)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2, -1) + eps) * weight`` over the last dim of x: (..., n), weight: (n,)."""
    _check(x, "rms_norm", "x")
    n = x.shape[-1]
    w = _vector(weight, n, "rms_norm", "weight")
    out = _empty(x)
    if out.numel():
        x, shape, stride = _rows(x, flatten=True)
        extension().rms_norm(x.data_ptr(), shape, stride, n, w.data_ptr(), out.data_ptr(), float(eps), threads())
    return out


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum = x + residual`` and ``rms_norm(sum, weight, eps)``, in one pass: (..., n) each."""
    _check(x, "add_rms_norm", "x")
    _check(residual, "add_rms_norm", "residual")
    if residual.shape != x.shape:
        raise ValueError(f"add_rms_norm: residual {tuple(residual.shape)} must have the shape of x {tuple(x.shape)}")
    n = x.shape[-1]
    w = _vector(weight, n, "add_rms_norm", "weight")
    total, normed = _empty(x), _empty(x)
    if total.numel():
        both_contiguous = x.is_contiguous() and residual.is_contiguous()   # then both flatten alike
        x, shape, x_stride = _rows(x, flatten=both_contiguous)
        residual, _, r_stride = _rows(residual, flatten=both_contiguous)
        extension().add_rms_norm(x.data_ptr(), x_stride, residual.data_ptr(), r_stride, shape, n, w.data_ptr(),
                                 total.data_ptr(), normed.data_ptr(), float(eps), threads())
    return total, normed


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles ``float32(positions[t]) * inv_freq[i]`` -> ``scale`` times (cos, sin), each (T, head_dim / 2)."""
    half = inv_freq.numel()
    if half == 0:
        raise ValueError("rope_cos_sin: inv_freq is empty")
    freq = _vector(inv_freq, half, "rope_cos_sin", "inv_freq")
    positions = _positions(positions, positions.numel(), "positions", "rope_cos_sin")
    table = freq.expand(positions.numel(), half)                          # (T, hd/2), a view
    cos, sin = _empty(table), _empty(table)
    extension().rope_cos_sin(positions.data_ptr(), positions.numel(), freq.data_ptr(), half, float(scale),
                             cos.data_ptr(), sin.data_ptr(), threads())
    return cos, sin


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, pairs: str = "half") -> torch.Tensor:
    """Half-split rotary embedding of every dim: x (B, H, T, hd), cos/sin (T, hd/2) -> (B, H, T, hd).

    ``out[:h] = x1 cos - x2 sin``, ``out[h:] = x2 cos + x1 sin`` with ``x1, x2 = x[:h], x[h:]``. The C++
    kernel rotates whole heads in half-split pairs; adjacent pairs and partial rotation (cos narrower than
    hd / 2) go to :func:`oxide.ops.reference.rope`.
    """
    _check(x, "rope", "x", dims=4)
    B, H, T, hd = x.shape
    if pairs != "half" or 2 * cos.shape[-1] != hd:
        return reference.rope(x, cos, sin, pairs=pairs)
    cos = _table(cos, (T, hd // 2), "rope", "cos")
    sin = _table(sin, (T, hd // 2), "rope", "sin")
    out = _empty(x)                                                       # (B, H, T, hd)
    if out.numel():
        x, shape, stride = _rows(x)
        extension().rope(x.data_ptr(), shape, stride, hd, cos.data_ptr(), sin.data_ptr(), out.data_ptr(), threads())
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              *, scale: float, window: int = 0, softcap: float = 0.0, causal: bool = True,
              q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped-query attention over explicit positions, as :func:`oxide.ops.reference.attention`.

    q: (B, H, T, hd); k, v: (B, Hkv, S, hd), H a multiple of Hkv (query head h reads kv head
    h // (H / Hkv)); q_pos: (T,), k_pos: (S,). ``s = scale * q.k`` (then ``cap * tanh(s / cap)`` if
    ``softcap > 0``), allowed where ``0 <= q_pos - k_pos`` (and ``< window`` if ``window > 0``), softmax,
    weighted sum of v. A query row with no allowed key is NaN, as in the reference. Returns (B, H, T, hd).
    The C++ kernel is causal and has no segments: a non-causal or segmented call (a vision encoder's) goes
    to the reference.
    """
    if not causal or q_seg is not None or k_seg is not None:
        return reference.attention(q, k, v, q_pos, k_pos, scale=scale, window=window, softcap=softcap,
                                   causal=causal, q_seg=q_seg, k_seg=k_seg)
    _check(q, "attention", "q", dims=4)
    _check(k, "attention", "k", dims=4)
    _check(v, "attention", "v", dims=4)
    B, H, T, hd = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if v.shape != k.shape or k.shape[0] != B or k.shape[3] != hd or Hkv == 0 or H % Hkv:
        raise ValueError(f"attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: k and v must be "
                         f"(B, Hkv, S, hd) with the batch and head_dim of q and H a multiple of Hkv")
    q_pos = _positions(q_pos, T, "q_pos", "attention")
    k_pos = _positions(k_pos, S, "k_pos", "attention")
    if S == 0:   # softmax over no keys, times no values: the reference's empty matmul gives zeros
        return torch.zeros(q.shape, dtype=torch.float32)
    out = _empty(q)                                                       # (B, H, T, hd)
    if out.numel():
        q, q_shape, q_stride = _rows(q)
        k, k_shape, k_stride = _rows(k)
        v, _, v_stride = _rows(v)
        extension().attention(q.data_ptr(), [*q_shape, hd], q_stride, k.data_ptr(), k_shape, k_stride, v.data_ptr(),
                              v_stride, q_pos.data_ptr(), k_pos.data_ptr(), out.data_ptr(), float(scale), int(window),
                              max(float(softcap), 0.0), threads())
    return out


def attention_rows(q: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], q_pos: torch.Tensor,
                   key_pos: Sequence[torch.Tensor], *, scale: float, window: int = 0, softcap: float = 0.0
                   ) -> torch.Tensor:
    """B query rows, each over its own sequence's keys, in one call, as :func:`oxide.ops.reference.attention_rows`;
    row b computes exactly as :func:`attention` on it alone. Rows whose keys and values are not laid out alike
    (one stride for every row's keys, one for the values) go to the reference."""
    _check(q, "attention_rows", "q", dims=4)
    _, H, B, hd = q.shape
    if q.shape[0] != 1 or len(keys) != B or len(values) != B or len(key_pos) != B:
        raise ValueError(f"attention_rows: q {tuple(q.shape)} must be (1, H, B, hd) with one key set per row, got "
                         f"{len(keys)} keys, {len(values)} values, {len(key_pos)} key positions")
    for k, v in zip(keys, values):
        _check(k, "attention_rows", "keys", dims=4)
        _check(v, "attention_rows", "values", dims=4)
        if k.shape != v.shape or k.shape[0] != 1 or k.shape[3] != hd or k.shape[2] == 0 or H % k.shape[1]:
            raise ValueError(f"attention_rows: keys {tuple(k.shape)} and values {tuple(v.shape)} must be (1, Hkv, S, hd) "
                             f"with the head_dim of q {tuple(q.shape)} and H a multiple of Hkv")
    k_stride, v_stride = keys[0].stride(), values[0].stride()
    n_kv = keys[0].shape[1]
    if any(k.stride() != k_stride or v.stride() != v_stride or k.shape[1] != n_kv for k, v in zip(keys, values)) \
            or k_stride[-1] != 1 or v_stride[-1] != 1:
        return reference.attention_rows(q, keys, values, q_pos, key_pos, scale=scale, window=window, softcap=softcap)
    q_pos = _positions(q_pos, B, "q_pos", "attention_rows")
    positions = [_positions(p, k.shape[2], "key_pos", "attention_rows") for p, k in zip(key_pos, keys)]
    q, _, q_stride = _rows(q)
    out = _empty(q.new_empty((B, H, hd)))                                                # row-major: (b, h)
    extension().attention_rows(q.data_ptr(), [1, H, B, hd], q_stride, [k.data_ptr() for k in keys],
                               [v.data_ptr() for v in values], [p.data_ptr() for p in positions],
                               [k.shape[2] for k in keys], n_kv, k_stride[:3], v_stride[:3], q_pos.data_ptr(),
                               out.data_ptr(), float(scale), int(window), max(float(softcap), 0.0), threads())
    return out.view(B, H, 1, hd).permute(2, 1, 0, 3)                                      # (1, H, B, hd)


def kv_store(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
             cache_pos: torch.Tensor) -> None:
    """Keys (1, Hkv, T, dk) and values (1, Hkv, T, dv) into slots ``positions % slots`` of the cache
    (1, Hkv, slots, dk / dv), as :func:`oxide.ops.reference.kv_store`; the positions are read in C++, so a
    recorded step stores each token where its position says."""
    _check_new_kv(k, v, "kv_store")
    _, n_kv, T, dk = k.shape
    dv = v.shape[-1]
    slots = _cache_slots(cache_k, cache_v, cache_pos, n_kv, dk, dv, "kv_store")
    positions = _positions(positions, T, "positions", "kv_store")
    if T:
        k, _, k_stride = _rows(k)
        v, _, v_stride = _rows(v)
        extension().kv_store(k.data_ptr(), k_stride, v.data_ptr(), v_stride, n_kv, T, dk, dv, positions.data_ptr(),
                             cache_k.data_ptr(), cache_v.data_ptr(), cache_pos.data_ptr(), slots, threads())


def kv_store_rows(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, caches_k: Sequence[torch.Tensor],
                  caches_v: Sequence[torch.Tensor], caches_pos: Sequence[torch.Tensor]) -> None:
    """Row b of k (1, Hkv, B, dk) and v (1, Hkv, B, dv) into sequence b's cache at ``positions[b]``, in one call, as
    :func:`oxide.ops.reference.kv_store_rows`; each cache is checked as :func:`kv_store` checks its one."""
    _check_new_kv(k, v, "kv_store_rows")
    _, n_kv, B, dk = k.shape
    dv = v.shape[-1]
    if not len(caches_k) == len(caches_v) == len(caches_pos) == B:
        raise ValueError(f"kv_store_rows: k {tuple(k.shape)} has {B} rows; it needs one cache per row, got "
                         f"{len(caches_k)}")
    slots = [_cache_slots(cache_k, cache_v, cache_pos, n_kv, dk, dv, "kv_store_rows")
             for cache_k, cache_v, cache_pos in zip(caches_k, caches_v, caches_pos)]
    positions = _positions(positions, B, "positions", "kv_store_rows")
    if B:
        k, _, k_stride = _rows(k)
        v, _, v_stride = _rows(v)
        extension().kv_store_rows(k.data_ptr(), k_stride, v.data_ptr(), v_stride, n_kv, B, dk, dv, positions.data_ptr(),
                                  [c.data_ptr() for c in caches_k], [c.data_ptr() for c in caches_v],
                                  [c.data_ptr() for c in caches_pos], slots, threads())


def gated_activation(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """``act(gate) * up`` for ``act`` in ``silu``, ``gelu_pytorch_tanh``, ``gelu`` (erf); same shapes."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}")
    _check(gate, "gated_activation", "gate")
    _check(up, "gated_activation", "up")
    if up.shape != gate.shape:
        raise ValueError(f"gated_activation: up {tuple(up.shape)} must have the shape of gate {tuple(gate.shape)}")
    out = _empty(gate)
    if out.numel():
        n = gate.shape[-1]
        (gate2, gate_stride), (up2, up_stride) = _matrix(gate, n), _matrix(up, n)   # in place where possible
        extension().gated_activation(gate2.data_ptr(), gate_stride, up2.data_ptr(), up_stride, out.data_ptr(),
                                     gate2.shape[0], n, ACTIVATIONS[act], threads())
    return out


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` for two float32 tensors of one shape."""
    _check(x, "add", "x")
    _check(y, "add", "y")
    if y.shape != x.shape:
        raise ValueError(f"add: y {tuple(y.shape)} must have the shape of x {tuple(x.shape)}")
    x, y = x.contiguous(), y.contiguous()
    out = _empty(x)
    extension().add(x.data_ptr(), y.data_ptr(), out.data_ptr(), out.numel(), threads())
    return out


def scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x * float32(factor)``."""
    _check(x, "scale", "x")
    x = x.contiguous()
    out = _empty(x)
    extension().scale(x.data_ptr(), out.data_ptr(), out.numel(), float(factor), threads())
    return out


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)`` for ``cap > 0`` (other caps: the reference's arithmetic)."""
    _check(x, "softcap", "x")
    if not cap > 0:
        return cap * torch.tanh(x / cap)
    x = x.contiguous()
    out = _empty(x)
    extension().softcap(x.data_ptr(), out.data_ptr(), out.numel(), float(cap), threads())
    return out


def argmax(x: torch.Tensor) -> int:
    """The index of the first largest value of the 1-D ``x`` (a NaN counts as the largest), as
    ``torch.argmax``, which on the CPU takes ~0.2-0.4 ms over a 262,144-token vocabulary; this ~0.05."""
    _check(x, "argmax", "x", dims=1)
    if x.numel() == 0:
        raise ValueError("argmax: x is empty")
    x = x.contiguous()
    return extension().argmax(x.data_ptr(), x.numel())


def sample(logits: torch.Tensor, counts: torch.Tensor | None, u: torch.Tensor, options: SamplingOptions
           ) -> torch.Tensor:
    """:func:`oxide.ops.reference.sample`, with greedy decoding (temperature 0) through :func:`argmax`."""
    if options.temperature == 0.0:
        return torch.tensor(argmax(reference.penalise(logits, counts, options)))
    return reference.sample(logits, counts, u, options)


# --- checks and layout ------------------------------------------------------------------------------

def _empty(like: torch.Tensor) -> torch.Tensor:
    """A new contiguous float32 output of ``like``'s shape (the tests poison it with NaN to catch
    unwritten elements). ``like`` is a float32 tensor, checked by the caller."""
    return torch.empty_like(like, memory_format=torch.contiguous_format)


# The helpers below run on every call of a decode step, so they use the cheapest tensor queries
# (``is_cpu`` rather than ``device.type``, one ``stride()`` tuple): each costs ~0.1 µs.

def _check(t: torch.Tensor, op: str, name: str, dims: int | None = None) -> None:
    if not (isinstance(t, torch.Tensor) and t.is_cpu and t.dtype == torch.float32):
        raise TypeError(f"{op}: {name} must be a float32 CPU tensor, got "
                        f"{getattr(t, 'dtype', type(t).__name__)} on {getattr(t, 'device', '?')}")
    if t.dim() == 0 or (dims is not None and t.dim() != dims):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}; expected {dims or 'at least 1'} dims")


def _rows(t: torch.Tensor, flatten: bool = False) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """``t`` with a contiguous last dim, and its leading dims as exactly three sizes and strides.

    More than three leading dims are merged (a copy only where they cannot be viewed as one); fewer
    are padded with size-1 dims in front. ``flatten``: the caller only needs the rows, in order, so a
    contiguous ``t`` is described as (1, 1, rows) (the cheapest form).
    """
    if flatten and t.is_contiguous():
        n = t.shape[-1]
        return t, (1, 1, t.numel() // n), (0, 0, n)
    if t.dim() > 4:
        t = t.reshape(-1, *t.shape[-3:])     # (N, d1, d2, n): a view where the strides allow one
    if t.stride(-1) != 1:
        t = t.contiguous()
    pad = 4 - t.dim()
    return t, (1,) * pad + t.shape[:-1], (0,) * pad + t.stride()[:-1]


def _matrix(t: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """``t`` (..., n) as (rows, n) rows of contiguous elements a fixed stride (>= n) apart, and that
    stride: a view where one exists (the halves of a fused gate-up output), else a contiguous copy."""
    if t.stride(-1) == 1:
        try:
            rows = t.view(-1, n)
        except RuntimeError:   # leading dims that no single stride describes
            rows = None
        if rows is not None and (rows.shape[0] == 1 or rows.stride(0) >= n):
            return rows, rows.stride(0) if rows.shape[0] > 1 else n
    return t.reshape(-1, n).contiguous(), n


def _vector(w: torch.Tensor, n: int, op: str, name: str) -> torch.Tensor:
    """``w`` as a contiguous float32 CPU vector of ``n`` elements."""
    if not (isinstance(w, torch.Tensor) and w.is_cpu and w.shape == (n,)):
        raise ValueError(f"{op}: {name} must be a CPU tensor of shape ({n},), got "
                         f"{tuple(getattr(w, 'shape', ()))} on {getattr(w, 'device', '?')}")
    return w if w.dtype == torch.float32 and w.is_contiguous() else w.to(torch.float32).contiguous()


def _table(t: torch.Tensor, shape: tuple[int, int], op: str, name: str) -> torch.Tensor:
    """``t`` as a contiguous float32 CPU tensor of exactly ``shape``."""
    if not (isinstance(t, torch.Tensor) and t.is_cpu and t.shape == shape):
        raise ValueError(f"{op}: {name} must be a CPU tensor of shape {shape}, got "
                         f"{tuple(getattr(t, 'shape', ()))} on {getattr(t, 'device', '?')}")
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.to(torch.float32).contiguous()


def _check_new_kv(k: torch.Tensor, v: torch.Tensor, op: str) -> None:
    """New keys and values (1, Hkv, T, dk / dv) float32 CPU, with the same leading dims."""
    _check(k, op, "k", dims=4)
    _check(v, op, "v", dims=4)
    if v.shape[:3] != k.shape[:3] or k.shape[0] != 1:
        raise ValueError(f"{op}: k {tuple(k.shape)}, v {tuple(v.shape)} must be (1, Hkv, T, dk / dv)")


def _cache_slots(cache_k: torch.Tensor, cache_v: torch.Tensor, cache_pos: torch.Tensor, n_kv: int, dk: int, dv: int,
                 op: str) -> int:
    """The slots of a cache that takes (1, n_kv, T, dk / dv) keys and values: contiguous float32 (1, n_kv, slots,
    dk / dv) and int64 positions (slots,); else ValueError."""
    _check(cache_k, op, "cache_k", dims=4)
    _check(cache_v, op, "cache_v", dims=4)
    slots = cache_k.shape[2]
    if (cache_k.shape != (1, n_kv, slots, dk) or cache_v.shape != (1, n_kv, slots, dv)
            or not (cache_k.is_contiguous() and cache_v.is_contiguous())):
        raise ValueError(f"{op}: the cache {tuple(cache_k.shape)}, {tuple(cache_v.shape)} must be contiguous "
                         f"(1, {n_kv}, slots, {dk} / {dv})")
    if not (cache_pos.is_cpu and cache_pos.dtype == torch.int64 and cache_pos.shape == (slots,)
            and cache_pos.is_contiguous()):
        raise ValueError(f"{op}: cache_pos must be a contiguous int64 CPU tensor of shape ({slots},)")
    return slots


def _positions(p: torch.Tensor, n: int, name: str, op: str) -> torch.Tensor:
    """``p`` as a contiguous int64 CPU vector of ``n`` positions."""
    if not (isinstance(p, torch.Tensor) and p.is_cpu and p.shape == (n,)):
        raise ValueError(f"{op}: {name} must be an integer CPU tensor of shape ({n},), got "
                         f"{tuple(getattr(p, 'shape', ()))} on {getattr(p, 'device', '?')}")
    if p.dtype == torch.int64 and p.is_contiguous():
        return p
    if p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool:
        raise ValueError(f"{op}: {name} must hold integer positions, got {p.dtype}")
    return p.to(torch.int64).contiguous()
