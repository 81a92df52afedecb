"""The transformer block shared by every architecture: attention and gated MLP.

Everything that differs between architectures is a config flag (qk-norm, biases, sandwich norms,
sliding window, soft-capping); adapters never subclass these.
"""

from __future__ import annotations

import torch

from .. import ops
from ..cache import LayerCache
from ..config import ModelConfig
from ..ops.bound import LayerOps
from ..quant import QuantTensor
from .weights import ExpertWeights, LayerWeights


class Attention:
    def __init__(self, config: ModelConfig, layer: int, w: LayerWeights, kernels: LayerOps, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.w = w
        self.ops = kernels
        self.qkv_proj = ops.LinearGroup((w.q, w.k, w.v), (w.q_bias, w.k_bias, w.v_bias), device, dtype)
        self.o_proj = ops.Linear(w.o, None, device, dtype)
        self.n_heads, self.n_kv, self.hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.eps = config.rms_norm_eps
        self.scale = config.attention_scale
        self.softcap = config.attn_logit_softcapping
        self.window = config.sliding_window if config.is_sliding(layer) else 0

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: LayerCache) -> torch.Tensor:
        B, T, _ = x.shape
        w = self.w
        q, k, v = self.qkv_proj(x)
        q = q.view(B, T, self.n_heads, self.hd)                               # (B, T, H, hd)
        k = k.view(B, T, self.n_kv, self.hd)                                  # (B, T, Hkv, hd)
        v = v.view(B, T, self.n_kv, self.hd)                                  # (B, T, Hkv, hd)
        if w.q_norm is not None:
            q = self.ops.rms_norm(q, w.q_norm, self.eps)
            k = self.ops.rms_norm(k, w.k_norm, self.eps)
        q = self.ops.rope(q.transpose(1, 2), cos, sin)                        # (B, H, T, hd)
        k = self.ops.rope(k.transpose(1, 2), cos, sin)                        # (B, Hkv, T, hd)
        keys, values, key_pos = cache.update(k, v.transpose(1, 2), positions)  # (B, Hkv, S, hd)
        out = self.ops.attention(q, keys, values, positions, key_pos, scale=self.scale, window=self.window,
                                 softcap=self.softcap)                        # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class GatedMLP:
    """``down(act(gate(x)) * up(x))``: a layer's MLP, or one expert of a mixture."""

    def __init__(self, gate: QuantTensor, up: QuantTensor, down: QuantTensor, act: str, kernels: LayerOps,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.ops = kernels
        self.gate_up = ops.LinearGroup((gate, up), (None, None), device, dtype)
        self.down = ops.Linear(down, None, device, dtype)
        self.act = act

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.ops.gated_activation(*self.gate_up(x), self.act)       # (B, T, F)
        return self.down(hidden)                                              # (B, T, D)


class DecoderBlock:
    """``h = x + [PostNorm](Attn(Norm(x)))``; ``y = h + [PostNorm](MLP(Norm(h)))``."""

    def __init__(self, config: ModelConfig, layer: int, w: LayerWeights, kernels: LayerOps, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.w = w
        self.ops = kernels
        self.eps = config.rms_norm_eps
        self.attention = Attention(config, layer, w, kernels, device, dtype)
        if w.experts is not None:
            self.mlp = MixtureOfExperts(config, w.experts, kernels, device, dtype)
        else:
            self.mlp = GatedMLP(w.gate, w.up, w.down, config.hidden_act, kernels, device, dtype)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: LayerCache) -> torch.Tensor:
        w, norm = self.w, self.ops.rms_norm
        h = self.attention(norm(x, w.attn_norm, self.eps), cos, sin, positions, cache)
        if w.post_attn_norm is not None:
            h = norm(h, w.post_attn_norm, self.eps)
        x, normed = self.ops.add_rms_norm(h, x, w.ffn_norm, self.eps)      # x + h, and its norm
        h = self.mlp(normed)
        if w.post_ffn_norm is not None:
            h = norm(h, w.post_ffn_norm, self.eps)
        return self.ops.add(x, h)


class MixtureOfExperts:
    """Mixtral / Qwen-MoE MLP: ``p = softmax(router(x))`` over E experts; each token goes to its k most
    probable experts (``p`` renormalised over them when ``norm_topk_prob``) and gets
    ``sum_e p_e * expert_e(x)``, plus ``sigmoid(x . w_s) * shared(x)`` where there is a shared expert.

    Tokens are grouped per expert, so each expert's weights are read once per step whatever the number of
    tokens routed to it; the experts are 2-D views of the stacked (quantized) tensors, through the same
    matmul kernels as every other projection.
    """

    def __init__(self, config: ModelConfig, w: ExpertWeights, kernels: LayerOps, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.router = ops.Linear(w.router, None, device, dtype)
        self.experts = [GatedMLP(w.gate.part(e), w.up.part(e), w.down.part(e), config.hidden_act, kernels, device,
                                 dtype) for e in range(config.num_experts)]
        self.top_k, self.renormalise = config.num_experts_per_tok, config.norm_topk_prob
        self.shared = None if w.shared_gate is None else GatedMLP(w.shared_gate, w.shared_up, w.shared_down,
                                                                 config.hidden_act, kernels, device, dtype)
        self.shared_router = w.shared_router

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])                                        # (N, D)
        probs = torch.softmax(self.router(tokens).float(), dim=-1)                # (N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)                          # (N, k) each
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)
        for e in chosen.unique().tolist():
            rows, slot = (chosen == e).nonzero(as_tuple=True)                     # the tokens routed to e
            out.index_add_(0, rows, self.experts[e](tokens[rows]) * weights[rows, slot, None].to(out.dtype))
        if self.shared is not None:
            gate = torch.sigmoid(tokens @ self.shared_router.to(tokens.dtype))   # (N,)
            out += gate[:, None] * self.shared(tokens)
        return out.view_as(x)
