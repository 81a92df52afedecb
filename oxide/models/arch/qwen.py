"""Qwen 2 and 3: Llama blocks whose GGUF Q/K are stored unpermuted (NeoX RoPE).

Qwen 2 adds q/k/v biases; Qwen 3 drops them and adds per-head RMSNorm on q and k.
"""

from .base import ArchAdapter

QWEN2 = ArchAdapter(name="qwen2", flags={"hidden_act": "silu", "attention_bias": True})
QWEN3 = ArchAdapter(name="qwen3", flags={"hidden_act": "silu", "qk_norm": True})
