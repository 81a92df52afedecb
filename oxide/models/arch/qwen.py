"""Qwen 2 and 3, dense and MoE: Llama blocks whose GGUF Q/K are stored unpermuted (NeoX RoPE).

Qwen 2 adds q/k/v biases; Qwen 3 drops them and adds per-head RMSNorm on q and k. Their MoE versions
swap MLPs for experts (``ModelConfig.num_experts``), which the config describes entirely.
"""

from .base import ArchAdapter

QWEN2 = ArchAdapter(name="qwen2", flags={"hidden_act": "silu", "attention_bias": True})
QWEN3 = ArchAdapter(name="qwen3", flags={"hidden_act": "silu", "qk_norm": True})
# The MoE versions: Qwen2-MoE adds an always-on shared expert; config.json says whether the router
# renormalises its top-k, GGUF does not, and llama.cpp renormalises for Qwen 3 MoE and not for Qwen 2 MoE.
QWEN2MOE = ArchAdapter(name="qwen2moe", flags=QWEN2.flags)


def _renormalised_top_k(fields: dict) -> dict:
    return {"norm_topk_prob": True}


QWEN3MOE = ArchAdapter(name="qwen3moe", flags=QWEN3.flags, gguf_defaults=_renormalised_top_k)
