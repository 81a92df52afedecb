"""Llama family: the plain block (SiLU-gated MLP, RMSNorm, half-split RoPE after un-permuting GGUF Q/K).

Mistral is the same block (its sliding window, when config.json sets one, is the generic
``sliding_window``; llama.cpp's converter writes Mistral as ``llama`` without it). Pixtral's language
model is a Mistral inside ``LlavaForConditionalGeneration``: its settings come from ``text_config`` and its
tensors under ``language_model.`` (``models/hf.py``); llama.cpp's converter writes that language model
as ``llama`` too.
"""

from dataclasses import replace

from ..transforms import unpermute_qk
from .base import ArchAdapter

LLAMA = ArchAdapter(name="llama", flags={"hidden_act": "silu"}, gguf_transforms=(unpermute_qk,))
MISTRAL = replace(LLAMA, name="mistral")
# Mixtral: Mistral blocks whose MLPs are experts; its router always renormalises the top-2 probabilities.
MIXTRAL = replace(LLAMA, name="mixtral", flags={**LLAMA.flags, "norm_topk_prob": True})
PIXTRAL = replace(LLAMA, name="pixtral")
