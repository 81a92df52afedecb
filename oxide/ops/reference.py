"""Reference implementations of every op, in plain PyTorch.

These functions are the specification: fast paths (Triton, CUDA, C++) keep their signatures and
are tested against them. They are also the fallback on CPU and MPS. Statistics (norm variance,
softmax) are computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import InvalidOptionError
from ..processors import LogitProcessor, Penalties, SamplingOptions, TopK, build_processors
from ..quant import QuantTensor

Weight = QuantTensor | torch.Tensor


def dense_weight(w: Weight, dtype: torch.dtype) -> torch.Tensor:
    """``w`` as a dense tensor of ``dtype``; a quantized weight is dequantized once and cached on it."""
    return w.dense(dtype) if isinstance(w, QuantTensor) else w.to(dtype)


def qmatmul(x: torch.Tensor, w: Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(w).T (+ bias)``, like ``F.linear``: (..., K) x (N, K) -> (..., N)."""
    return F.linear(x, dense_weight(w, x.dtype), None if bias is None else bias.to(x.dtype))


Q8_BLOCK = 32   # activation values per int8 scale in :func:`q8_activations`


def q8_activations(x: torch.Tensor) -> torch.Tensor:
    """``x`` as an int8 GEMV takes it (llama.cpp's Q8_0 activations): per 32 values along the last axis,
    ``s = max|x| / 127`` and each value becomes ``s * round(x / s)`` (ties to even), all in float32. A block
    whose ``s`` is zero (or too small for a float) becomes zeros; one with a NaN or an infinity stays as it
    is, so the outputs it meets are not finite. The last axis must be a multiple of 32.

    The compiled CPU core's VNNI build computes ``q8_activations(x) @ dequantize(W).T`` exactly up to
    float32 summation; against ``x`` itself each product is then off by at most ``|w| * s / 2``.
    """
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // Q8_BLOCK, Q8_BLOCK)
    s = blocks.abs().amax(dim=-1, keepdim=True) / 127
    finite = torch.isfinite(s)
    rounded = torch.where(s > 0, torch.round(blocks / s) * s, 0.0)
    return torch.where(finite, rounded, blocks).reshape(x.shape)


def qmatmul_group(x: torch.Tensor, weights: Sequence[Weight], biases: Sequence[torch.Tensor | None]
                  ) -> tuple[torch.Tensor, ...]:
    """``qmatmul(x, w, b)`` for each (w, b): the projections that share one input (q, k, v; gate, up)."""
    return tuple(qmatmul(x, w, b) for w, b in zip(weights, biases))


def qmatmul_gated(x: torch.Tensor, w_gate: Weight, w_up: Weight, act: str) -> torch.Tensor:
    """The gated MLP's first half in one op: ``act(x @ W_gate^T) * (x @ W_up^T)``, (..., K) -> (..., F)
    (:func:`gated_activation` of two :func:`qmatmul`)."""
    return gated_activation(qmatmul(x, w_gate), qmatmul(x, w_up), act)


def qmatmul_experts(x: torch.Tensor, w: Weight, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` grouped by expert through their expert's matrix: x (M, K), w stacked (E, N, K),
    ``offsets`` (E + 1,) ascending with ``offsets[0] = 0`` and ``offsets[E] = M``; rows
    ``offsets[e]:offsets[e + 1]`` give ``x[rows] @ W_e^T``. Returns (M, N)."""
    out = x.new_empty(x.shape[0], w.shape[1])
    stacked = dense_weight(w, x.dtype)                                   # (E, N, K), cached on w
    bounds = offsets.tolist()
    for e in range(w.shape[0]):
        start, stop = bounds[e], bounds[e + 1]
        if stop > start:
            out[start:stop] = F.linear(x[start:stop], stacked[e])
    return out


def qmatmul_experts_gated(x: torch.Tensor, w_gate: Weight, w_up: Weight, offsets: torch.Tensor, act: str
                          ) -> torch.Tensor:
    """:func:`qmatmul_experts` of the gated MLP's first half: ``act(x W_gate,e^T) * (x W_up,e^T)`` per row."""
    return gated_activation(qmatmul_experts(x, w_gate, offsets), qmatmul_experts(x, w_up, offsets), act)


def embedding(ids: torch.Tensor, w: Weight, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``w[ids]`` as ``dtype``: (...) -> (..., K). A quantized table dequantizes only the rows it needs
    unless a dense copy is already cached (a tied output head caches one)."""
    if isinstance(w, QuantTensor) and not w.has_dense(dtype):
        return w.rows(ids.reshape(-1)).dequantize(dtype).reshape(*ids.shape, w.shape[-1])
    return F.embedding(ids, dense_weight(w, dtype))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2, -1) + eps) * weight``, computed in float32, returned in ``x.dtype``."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the next norm together: ``sum = x + residual``, ``(sum, rms_norm(sum, weight, eps))``."""
    total = x + residual
    return total, rms_norm(total, weight, eps)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles ``positions[t] * inv_freq[i]`` in float32 -> (cos, sin), each (T, head_dim / 2), times
    ``scale`` (a RoPE scaling's attention factor) unless it is 1."""
    angles = positions.float()[:, None] * inv_freq.float()[None, :]   # (T, hd/2)
    if scale == 1.0:
        return angles.cos(), angles.sin()
    factor = torch.tensor(scale, dtype=torch.float32)
    return angles.cos() * factor, angles.sin() * factor


ROPE_PAIRS = ("half", "adjacent")


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, pairs: str = "half") -> torch.Tensor:
    """Rotary embedding of the first ``r = 2 * cos.shape[-1]`` dims of each head; x: (B, H, T, hd), cos/sin:
    (T, r/2) with ``r <= hd``; dims ``r..hd`` pass through unchanged.

    Pair i (of r/2) is ``(x1, x2) = (x[i], x[i + r/2])`` for ``pairs="half"`` (NeoX, HF) or
    ``(x[2i], x[2i + 1])`` for ``pairs="adjacent"`` (GGUF's NORM rope, DeepSeek); it becomes
    ``(x1 cos_i - x2 sin_i, x2 cos_i + x1 sin_i)`` in the same two dims.
    """
    if pairs not in ROPE_PAIRS:
        raise InvalidOptionError(f"rope: pairs={pairs!r} is not one of {', '.join(ROPE_PAIRS)}")
    r = 2 * cos.shape[-1]
    if r > x.shape[-1]:
        raise InvalidOptionError(f"rope: cos/sin {tuple(cos.shape)} rotate {r} dims, more than head_dim {x.shape[-1]}")
    rot, rest = x[..., :r], x[..., r:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if pairs == "half":
        x1, x2 = rot.chunk(2, dim=-1)                                       # (B, H, T, r/2) each
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]                             # (B, H, T, r/2) each
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int, *, causal: bool = True,
                   q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None) -> torch.Tensor:
    """Allowed (query, key) pairs, (T, S) bool: ``q - k >= 0`` if ``causal``, ``q - k < window`` when
    ``window > 0``, and ``q_seg[t] == k_seg[s]`` when segment ids are given (attention within each segment
    only: block-diagonal over images packed in one sequence)."""
    distance = q_pos[:, None] - k_pos[None, :]        # (T, S)
    allowed = distance >= 0 if causal else torch.ones_like(distance, dtype=torch.bool)
    if window > 0:
        allowed &= distance < window
    if q_seg is not None and k_seg is not None:
        allowed &= q_seg[:, None] == k_seg[None, :]
    return allowed


def check_segments(q_seg: torch.Tensor | None, k_seg: torch.Tensor | None, T: int, S: int) -> None:
    """Segment ids come in pairs, integer tensors of shapes (T,) and (S,): else :class:`InvalidOptionError`."""
    if (q_seg is None) != (k_seg is None):
        raise InvalidOptionError("attention: q_seg and k_seg go together; give both segment ids or neither")
    for name, seg, n in (("q_seg", q_seg, T), ("k_seg", k_seg, S)):
        if seg is not None and (seg.shape != (n,) or seg.dtype.is_floating_point or seg.dtype.is_complex
                                or seg.dtype == torch.bool):
            raise InvalidOptionError(f"attention: {name} must be an integer tensor of shape ({n},), got "
                                     f"{seg.dtype} {tuple(seg.shape)}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
              *, scale: float, window: int = 0, softcap: float = 0.0, causal: bool = True,
              q_seg: torch.Tensor | None = None, k_seg: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped-query attention over explicit positions.

    q: (B, H, T, hd); k, v: (B, Hkv, S, hd) with H a multiple of Hkv (query head h reads kv head
    h // (H / Hkv)); q_pos: (T,), k_pos: (S,) absolute positions. Scores ``s = scale * q.k`` (then
    ``cap * tanh(s / cap)`` if ``softcap``), masked by :func:`attention_mask` (causal unless ``causal=False``;
    segment ids q_seg (T,), k_seg (S,) restrict each query to the keys of its own segment), softmax in
    float32. A query with no allowed key is NaN. Returns (B, H, T, hd).
    """
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    check_segments(q_seg, k_seg, T, k.shape[2])
    qg = q.reshape(B, Hkv, H // Hkv * T, hd)                           # (B, Hkv, G*T, hd)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale   # (B, Hkv, G*T, S)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    allowed = attention_mask(q_pos, k_pos, window, causal=causal, q_seg=q_seg, k_seg=k_seg)   # (T, S)
    scores = scores.masked_fill(~allowed.repeat(H // Hkv, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(B, H, T, hd)


def attention_rows(q: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], q_pos: torch.Tensor,
                   key_pos: Sequence[torch.Tensor], *, scale: float, window: int = 0, softcap: float = 0.0
                   ) -> torch.Tensor:
    """Attention of B query rows of different sequences, each over its own keys: q (1, H, B, hd), q_pos (B,);
    keys[b], values[b] (1, Hkv, S_b, hd) and key_pos[b] (S_b,) are sequence b's. Row b is
    ``attention(q[:, :, b:b + 1], keys[b], values[b], q_pos[b:b + 1], key_pos[b])`` (causal). Returns
    (1, H, B, hd): a batched decode step's attention."""
    return torch.cat([attention(q[:, :, b:b + 1], k, v, q_pos[b:b + 1], p, scale=scale, window=window, softcap=softcap)
                      for b, (k, v, p) in enumerate(zip(keys, values, key_pos, strict=True))], dim=2)


def gated_activation(gate: torch.Tensor, up: torch.Tensor, act: str) -> torch.Tensor:
    """``act(gate) * up`` for the gated MLP; ``act`` is ``silu``, ``gelu`` or ``gelu_pytorch_tanh``."""
    if act == "silu":
        return F.silu(gate) * up
    if act == "gelu_pytorch_tanh":
        return F.gelu(gate, approximate="tanh") * up
    if act == "gelu":
        return F.gelu(gate) * up
    raise ValueError(f"unknown activation {act!r}")


ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh")


def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """``act(x)`` elementwise: ``silu``, exact ``gelu`` (erf) or ``gelu_pytorch_tanh`` (a projector's
    activation, between its two linear layers)."""
    if act == "silu":
        return F.silu(x)
    if act == "gelu_pytorch_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "gelu":
        return F.gelu(x)
    raise InvalidOptionError(f"activation: act={act!r} is not one of {', '.join(ACTIVATIONS)}")


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` (the residual add), same shapes."""
    return x + y


def scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x * factor`` with the factor rounded to ``x.dtype`` first (Gemma's embedding multiplier)."""
    return x * torch.tensor(factor, dtype=x.dtype)


def kv_store(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
             cache_pos: torch.Tensor) -> None:
    """Store new keys and values in a cache of ``slots`` slots: k (1, Hkv, T, dk), v (1, Hkv, T, dv) at
    positions (T,) go to slots ``positions % slots`` of cache_k, cache_v (1, Hkv, slots, dk / dv; a latent
    cache keeps two widths), and ``cache_pos[slot] =
    position``. A full cache has a slot per position; a sliding window's ring reuses its oldest slot.
    When T > slots only the last ``slots`` positions are kept, as writing all of them in order would."""
    slots, T = cache_k.shape[2], k.shape[2]
    kept = min(T, slots)
    recent = positions[T - kept:]
    where = recent % slots
    cache_k.index_copy_(2, where, k[:, :, T - kept:].to(cache_k.dtype))
    cache_v.index_copy_(2, where, v[:, :, T - kept:].to(cache_v.dtype))
    cache_pos.index_copy_(0, where, recent)


def kv_store_rows(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, caches_k: Sequence[torch.Tensor],
                  caches_v: Sequence[torch.Tensor], caches_pos: Sequence[torch.Tensor]) -> None:
    """A batched decode step's stores: row b of k (1, Hkv, B, dk) and v (1, Hkv, B, dv) into sequence b's cache
    (``caches_k[b]``, ``caches_v[b]``, ``caches_pos[b]``) at ``positions[b]``, as :func:`kv_store` does."""
    for b, (cache_k, cache_v, cache_pos) in enumerate(zip(caches_k, caches_v, caches_pos, strict=True)):
        kv_store(k[:, :, b:b + 1], v[:, :, b:b + 1], positions[b:b + 1], cache_k, cache_v, cache_pos)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``: bounds logits smoothly to (-cap, cap)."""
    return cap * torch.tanh(x / cap)


def argmax(x: torch.Tensor) -> int:
    """The index of the first largest value of the 1-D ``x`` (a NaN counts as the largest): greedy sampling."""
    return int(torch.argmax(x))


SAMPLE_NAN = -1
"""What :func:`sample` returns (temperature > 0) when the logits contain NaN: kernels cannot raise."""
SAMPLE_NO_FINITE = -2
"""What :func:`sample` returns (temperature > 0) when no token has a finite logit."""


@lru_cache(maxsize=64)
def sample_stages(options: SamplingOptions) -> tuple[Penalties | None, TopK | None, tuple[LogitProcessor, ...]]:
    """:func:`~oxide.processors.build_processors` of ``options`` split as (penalties, top-k, the stages after)."""
    stages = build_processors(options)
    penalties = stages.pop(0) if isinstance(stages[0], Penalties) else None
    top_k = stages.pop(0) if isinstance(stages[0], TopK) else None
    return penalties, top_k, tuple(stages)


def penalise(logits: torch.Tensor, counts: torch.Tensor | None, options: SamplingOptions) -> torch.Tensor:
    """The chain's :class:`~oxide.processors.Penalties` of ``logits`` (V,) given the window's ``counts`` (V,);
    ``logits`` itself when the options or ``counts=None`` leave penalties off."""
    penalties = sample_stages(options)[0]
    return logits if penalties is None or counts is None else penalties.apply(logits, counts)


def sample_filter(logits: torch.Tensor, counts: torch.Tensor | None, options: SamplingOptions) -> torch.Tensor:
    """The logits (V,) float32 the draw of :func:`sample` sees: the processors of
    :func:`~oxide.processors.build_processors` in order (penalties from ``counts``; none if None); removed
    tokens are ``-inf``."""
    _, top_k, rest = sample_stages(options)
    out = penalise(logits, counts, options)  # (V,)
    for stage in rest if top_k is None else (top_k, *rest):
        out = stage(out, ())  # (V,)
    return out


def sample(logits: torch.Tensor, counts: torch.Tensor | None, u: torch.Tensor, options: SamplingOptions
           ) -> torch.Tensor:
    """The next token id, a 0-d int64 tensor on the logits' device, as llama.cpp's sampler chain picks it.

    ``logits`` (V,) float32; ``counts`` (V,) int32 occurrences of each id in the penalty window, or None (no
    penalties); ``u`` a 0-d float32 tensor uniform in [0, 1). Temperature 0: the first maximum of the
    penalised logits (a NaN counts as the largest). Otherwise, over the tokens :func:`sample_filter` leaves in
    play in ascending id order, with ``cdf = cumsum(softmax(processed))``: the first with ``cdf > u * cdf[-1]``
    (the last if rounding finds none). Returns :data:`SAMPLE_NAN` or :data:`SAMPLE_NO_FINITE` for logits that
    allow no draw.

    The stages after top-k see only its ``k`` tokens, listed by ascending id, which is what they see of the
    masked vocabulary: the same result as :func:`sample_filter`, without passes over the whole vocabulary.
    """
    x = penalise(logits, counts, options)  # (V,)
    if options.temperature == 0.0:
        return torch.argmax(x)
    if torch.isnan(x.max()):   # max propagates NaN: one cheap pass instead of a mask of the vocabulary
        return torch.tensor(SAMPLE_NAN, device=x.device)
    _, top_k, rest = sample_stages(options)
    ids = None if top_k is None else top_k.kept_ids(x)  # (k,) ascending (None: every id)
    processed = x if ids is None else x[ids]  # (n,)
    for stage in rest:
        processed = stage(processed, ())  # (n,)
    alive = torch.nonzero(processed > float("-inf")).squeeze(1)  # (m,) positions, ascending
    if alive.numel() == 0:
        return torch.tensor(SAMPLE_NO_FINITE, device=x.device)
    cdf = torch.cumsum(torch.softmax(processed[alive], dim=-1), dim=0)  # (m,)
    pick = torch.searchsorted(cdf, u.to(cdf.device) * cdf[-1], right=True).clamp_(max=alive.numel() - 1)  # ()
    position = alive[pick]  # ()
    return position if ids is None else ids[position]
