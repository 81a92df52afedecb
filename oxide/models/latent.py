"""Multi-head latent attention (MLA), DeepSeek V2/V3's attention.

Per token, ``kv_a`` gives a latent ``c`` (``kv_lora_rank`` wide, RMS-normed) and one RoPE key ``k_rot``
(``head_dim`` wide) shared by every head; the cache keeps only these two, which is the point of MLA:
``kv_lora_rank + head_dim`` floats per token and layer instead of ``2 * heads * head width``. At each step
``kv_b`` expands the cached latents into every head's plain key part ``k_nope`` and value ``v``; a head's
key is ``[k_nope, k_rot]``, its query ``[q_nope, rope(q_rot)]`` from ``q`` (or from a ``q_a``/``q_b``
latent), and the softmax scale is ``(nope + rope) ** -0.5``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..cache import LayerCache
from ..config import ModelConfig
from ..ops.bound import LayerOps
from .weights import LayerWeights


class LatentAttention:
    def __init__(self, config: ModelConfig, w: LayerWeights, kernels: LayerOps, device: torch.device,
                 dtype: torch.dtype) -> None:
        lw = w.latent
        self.ops = kernels
        self.eps = config.rms_norm_eps
        self.heads, self.rank = config.num_attention_heads, config.kv_lora_rank
        self.nope, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.head_dim, config.v_head_dim
        self.scale = config.attention_scale
        if lw.q is not None:
            self.q_proj, self.q_a, self.q_b = ops.Linear(lw.q, None, device, dtype), None, None
        else:
            self.q_proj = None
            self.q_a, self.q_b = ops.Linear(lw.q_a, None, device, dtype), ops.Linear(lw.q_b, None, device, dtype)
        self.q_a_norm, self.kv_a_norm = lw.q_a_norm, lw.kv_a_norm
        self.kv_a = ops.Linear(lw.kv_a, None, device, dtype)
        self.kv_b = ops.Linear(lw.kv_b, None, device, dtype)
        self.o_proj = ops.Linear(w.o, None, device, dtype)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.q_proj is not None:
            return self.q_proj(x)
        return self.q_b(self.ops.rms_norm(self.q_a(x), self.q_a_norm, self.eps))

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: LayerCache) -> torch.Tensor:
        B, T, _ = x.shape
        H, nope, rope_dim, v_dim = self.heads, self.nope, self.rope_dim, self.v_dim
        q = self._queries(x).view(B, T, H, nope + rope_dim)
        q_nope, q_rot = q.split((nope, rope_dim), dim=-1)
        latent, k_rot = self.kv_a(x).split((self.rank, rope_dim), dim=-1)
        latent = self.ops.rms_norm(latent, self.kv_a_norm, self.eps)                       # (B, T, Rkv)
        q_rot = self.ops.rope(q_rot.transpose(1, 2), cos, sin)                             # (B, H, T, rope)
        k_rot = self.ops.rope(k_rot.reshape(B, T, 1, rope_dim).transpose(1, 2), cos, sin)  # (B, 1, T, rope)
        latents, rotated, key_pos = cache.update(latent.reshape(B, T, 1, self.rank).transpose(1, 2), k_rot,
                                                 positions)                                # (1, 1, S, Rkv / rope)
        S = latents.shape[2]
        expanded = self.kv_b(latents[0, 0]).view(S, H, nope + v_dim).transpose(0, 1)      # (H, S, nope + v)
        k_nope, values = expanded.split((nope, v_dim), dim=-1)
        keys = torch.cat((k_nope, rotated[0].expand(H, S, rope_dim)), dim=-1)[None]       # (1, H, S, nope + rope)
        queries = torch.cat((q_nope.transpose(1, 2), q_rot), dim=-1)                       # (B, H, T, nope + rope)
        # the attention op takes one head width: the narrower side is padded with zeros, which change neither
        # the scores (q . k) nor the weighted sums of values
        width = max(nope + rope_dim, v_dim)
        queries, keys = (F.pad(t, (0, width - nope - rope_dim)) for t in (queries, keys))
        values = F.pad(values, (0, width - v_dim))[None]
        out = self.ops.attention(queries, keys, values, positions, key_pos, scale=self.scale)  # (B, H, T, width)
        return self.o_proj(out[..., :v_dim].transpose(1, 2).reshape(B, T, H * v_dim))
