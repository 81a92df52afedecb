"""Llama family: the plain block (SiLU-gated MLP, RMSNorm, half-split RoPE after un-permuting GGUF Q/K)."""

from ..transforms import unpermute_qk
from .base import ArchAdapter

LLAMA = ArchAdapter(name="llama", flags={"hidden_act": "silu"}, gguf_transforms=(unpermute_qk,))
MISTRAL = ArchAdapter(name="mistral", flags={"hidden_act": "silu"}, gguf_transforms=(unpermute_qk,))
