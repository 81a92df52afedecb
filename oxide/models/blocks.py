"""The transformer block shared by every architecture: attention and gated MLP.

Everything that differs between architectures is a config flag (qk-norm, biases, sandwich norms,
sliding window, soft-capping); adapters never subclass these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import ops
from ..cache import LayerCache, LayerRows
from ..config import ModelConfig
from ..ops.bound import LayerOps
from ..quant import QuantTensor
from .latent import LatentAttention
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
                 cache: LayerCache | LayerRows) -> torch.Tensor:
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
        out = cache.attend(q, k, v.transpose(1, 2), positions, self._attend, self._attend_rows)  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_pos: torch.Tensor,
                key_pos: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, hd) over the cache's keys and values (B, Hkv, S, hd)."""
        return self.ops.attention(q, keys, values, q_pos, key_pos, scale=self.scale, window=self.window,
                                  softcap=self.softcap)

    def _attend_rows(self, q: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                     q_pos: torch.Tensor, key_pos: Sequence[torch.Tensor]) -> torch.Tensor:
        """Row b of q (1, H, B, hd) over the b-th cache's keys and values (a batched decode step)."""
        return self.ops.attention_rows(q, keys, values, q_pos, key_pos, scale=self.scale, window=self.window,
                                       softcap=self.softcap)


class GatedMLP:
    """``down(act(gate(x)) * up(x))``: a layer's MLP, or a mixture's shared expert."""

    def __init__(self, gate: QuantTensor, up: QuantTensor, down: QuantTensor, act: str, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.gate_up = ops.GatedLinear(gate, up, act, device, dtype)
        self.down = ops.Linear(down, None, device, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gate_up(x))                                     # (B, T, F) -> (B, T, D)


class DecoderBlock:
    """``h = x + [PostNorm](Attn(Norm(x)))``; ``y = h + [PostNorm](MLP(Norm(h)))``."""

    def __init__(self, config: ModelConfig, layer: int, w: LayerWeights, kernels: LayerOps, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.w = w
        self.ops = kernels
        self.eps = config.rms_norm_eps
        if config.latent_attention:
            self.attention = LatentAttention(config, w, kernels, device, dtype)
        else:
            self.attention = Attention(config, layer, w, kernels, device, dtype)
        if w.experts is not None:
            self.mlp = MixtureOfExperts(config, w.experts, device, dtype)
        else:
            self.mlp = GatedMLP(w.gate, w.up, w.down, config.hidden_act, device, dtype)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                 cache: LayerCache | LayerRows) -> torch.Tensor:
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
    """Mixtral / Qwen-MoE / DeepSeek MLP: scores ``p = softmax(router(x))`` over E experts (DeepSeek V3:
    each expert's ``sigmoid``); each token goes to its k best-scoring experts and gets
    ``scale * sum_e p_e * expert_e(x)``, with ``p`` renormalised over the k when ``norm_topk_prob`` and
    ``scale`` the ``routed_scaling_factor``; plus a shared expert where there is one, scaled by
    ``sigmoid(x . w_s)`` when it is gated (Qwen2-MoE). See :meth:`route` for DeepSeek's expert groups and
    V3's correction bias.

    The (token, expert) pairs are sorted by expert, so each expert's weights are read once per step whatever
    the number of tokens routed to it, by the expert ops over the stacked (quantized) tensors: one launch
    for every expert on a GPU, each expert's GEMV on the CPU.
    """

    def __init__(self, config: ModelConfig, w: ExpertWeights, device: torch.device, dtype: torch.dtype) -> None:
        self.router = ops.Linear(w.router, None, device, dtype)
        self.experts_gate_up = ops.GatedExpertsLinear(w.gate, w.up, config.hidden_act, device, dtype)
        self.experts_down = ops.ExpertsLinear(w.down, device, dtype)
        self.num_experts = config.num_experts
        self.top_k, self.renormalise = config.num_experts_per_tok, config.norm_topk_prob
        self.sigmoid, self.scale = config.router_scoring == "sigmoid", config.routed_scaling_factor
        self.groups, self.topk_groups = config.router_groups, config.router_topk_groups
        self.bias = w.router_bias
        self.shared = None if w.shared_gate is None else GatedMLP(w.shared_gate, w.shared_up, w.shared_down,
                                                                 config.hidden_act, device, dtype)
        self.shared_router = w.shared_router

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, experts), each (N, k), from the router's float32 logits (N, E).

        The experts picked are the k best by score (plus V3's correction bias, which picks but does not
        weigh); with groups, only experts in the ``router_topk_groups`` best groups compete, a group
        ranked by its best score (softmax routers, DeepSeek V2) or its two best summed (V3).
        """
        scores = logits.sigmoid() if self.sigmoid else torch.softmax(logits, dim=-1)    # (N, E)
        choice = scores if self.bias is None else scores + self.bias
        if self.groups:
            grouped = choice.view(choice.shape[0], self.groups, -1)                      # (N, G, E / G)
            rank = grouped.topk(2, dim=-1).values.sum(-1) if self.sigmoid else grouped.amax(-1)
            keep = torch.zeros_like(rank, dtype=torch.bool).scatter_(1, rank.topk(self.topk_groups, dim=-1).indices,
                                                                      True)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).view_as(choice)
        chosen = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.scale if self.scale != 1.0 else weights, chosen

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])                                        # (N, D)
        weights, chosen = self.route(self.router(tokens).float())                 # (N, k) each
        order = chosen.reshape(-1).argsort(stable=True)                           # (N k,) pairs by expert
        per_expert = torch.bincount(chosen.reshape(-1), minlength=self.num_experts)
        offsets = torch.cat((per_expert.new_zeros(1), per_expert.cumsum(0)))      # (E + 1,)
        rows = order // self.top_k                                                # each pair's token
        hidden = self.experts_gate_up(tokens[rows], offsets)                      # (N k, F)
        routed = self.experts_down(hidden, offsets)                               # (N k, D)
        pair_weights = weights.reshape(-1)[order, None].to(routed.dtype)          # (N k, 1)
        out = torch.zeros_like(tokens).index_add_(0, rows, routed * pair_weights)
        if self.shared is not None and self.shared_router is not None:
            gate = torch.sigmoid(tokens @ self.shared_router.to(tokens.dtype))   # (N,)
            out += gate[:, None] * self.shared(tokens)
        elif self.shared is not None:
            out += self.shared(tokens)
        return out.view_as(x)
