"""Multi-head latent attention (MLA), DeepSeek V2/V3's attention, in its absorbed form.

Per token, ``kv_a`` gives a latent ``c`` (``kv_lora_rank`` wide, RMS-normed) and one RoPE key ``k_rot``
(``head_dim`` wide) shared by every head; the cache keeps only these two, which is the point of MLA:
``kv_lora_rank + head_dim`` floats per token and layer instead of keys and values for every head.

``kv_b`` would expand a latent into head h's plain key part ``K_h c`` and value ``V_h c``. Instead of
expanding every cached latent at every step, both matrices are absorbed: the score of a query is
``q_nope . K_h c + q_rot . k_rot = [K_h^T q_nope, q_rot] . [c, k_rot]`` and its output
``V_h (sum_s p_s c_s)``, so attention runs over the cached ``[c, k_rot]`` as one key/value head shared by
all query heads (values: the latents), with the softmax scale of the full head, ``(nope + rope) ** -0.5``.
``K_h`` and ``V_h`` are kept as float32 (heads, nope / v, kv_lora_rank) tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..cache import LayerCache, LayerRows
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
        if lw.kv_b is not None:
            kv_b = lw.kv_b.dequantize(torch.float32).to(device).view(self.heads, self.nope + self.v_dim, self.rank)
            self.k_b = kv_b[:, :self.nope].contiguous()                                 # (H, nope, Rkv)
            self.v_b = kv_b[:, self.nope:].contiguous()                                 # (H, v, Rkv)
        else:   # llama.cpp stores k_b transposed, (H, Rkv, nope)
            self.k_b = lw.k_b.dequantize(torch.float32).to(device).transpose(1, 2).contiguous()
            self.v_b = lw.v_b.dequantize(torch.float32).to(device)
        self.o_proj = ops.Linear(w.o, None, device, dtype)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.q_proj is not None:
            return self.q_proj(x)
        return self.q_b(self.ops.rms_norm(self.q_a(x), self.q_a_norm, self.eps))

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: LayerCache | LayerRows) -> torch.Tensor:
        B, T, _ = x.shape
        H, nope, rope_dim, rank = self.heads, self.nope, self.rope_dim, self.rank
        q = self._queries(x).view(B, T, H, nope + rope_dim)
        q_nope, q_rot = q.split((nope, rope_dim), dim=-1)
        latent, k_rot = self.kv_a(x).split((rank, rope_dim), dim=-1)
        latent = self.ops.rms_norm(latent, self.kv_a_norm, self.eps)                       # (B, T, Rkv)
        q_rot = self.ops.rope(q_rot.transpose(1, 2), cos, sin)                             # (B, H, T, rope)
        k_rot = self.ops.rope(k_rot.reshape(B, T, 1, rope_dim).transpose(1, 2), cos, sin)  # (B, 1, T, rope)
        absorbed = torch.einsum("bthn,hnr->bhtr", q_nope.to(self.k_b.dtype), self.k_b).to(q_rot.dtype)
        queries = torch.cat((absorbed, q_rot), dim=-1)                                     # (B, H, T, Rkv + rope)
        mixed = cache.attend(queries, latent.reshape(B, T, 1, rank).transpose(1, 2), k_rot, positions,
                             self._attend)                                                 # (B, H, T, Rkv)
        out = torch.einsum("bhtr,hvr->bthv", mixed.to(self.v_b.dtype), self.v_b)          # (B, T, H, v)
        return self.o_proj(out.reshape(B, T, H * self.v_dim).to(x.dtype))

    def _attend(self, queries: torch.Tensor, latents: torch.Tensor, rotated: torch.Tensor, q_pos: torch.Tensor,
                key_pos: torch.Tensor) -> torch.Tensor:
        """Queries (B, H, T, Rkv + rope) over the cached latents (B, 1, S, Rkv) and RoPE keys (B, 1, S, rope):
        the keys are the two side by side, the values the latents (widened to the key's width with zeros)."""
        keys = torch.cat((latents, rotated), dim=-1)                                       # (B, 1, S, Rkv + rope)
        values = F.pad(latents, (0, self.rope_dim))
        return self.ops.attention(queries, keys, values, q_pos, key_pos, scale=self.scale)[..., :self.rank]
