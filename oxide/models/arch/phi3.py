"""Phi-3: a Llama block whose q, k, v projections are one ``qkv_proj`` matrix and whose gate and up
projections are one ``gate_up_proj``, in both formats (llama.cpp keeps them fused as ``attn_qkv`` and a
double-height ``ffn_up``); named transforms split them as they are looked up. Its RoPE is half-split
(GGUF rows are not permuted) with LongRoPE (``su``) scaling on the long-context models.

Phi-3-mini and -medium use a sliding window on every layer; config.json says so through
``sliding_window``, GGUF through ``attention.sliding_window`` (0 on Phi-4). llama.cpp currently ignores
that window (it logs "Phi SWA is currently disabled"); transformers and oxide apply it.
"""

from __future__ import annotations

from typing import Any

from ...config import SLIDING_ATTENTION
from ..transforms import split_gate_up, split_qkv
from .base import ArchAdapter


def _gguf_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    windowed = fields.get("sliding_window", 0) > 0
    return {"layer_types": (SLIDING_ATTENTION,) * fields["num_hidden_layers"]} if windowed else {}


PHI3 = ArchAdapter(name="phi3", flags={"hidden_act": "silu"}, gguf_defaults=_gguf_defaults,
                   source_transforms=(split_qkv, split_gate_up))
