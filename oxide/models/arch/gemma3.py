"""Gemma 3 (text): GELU-tanh MLP, q/k norms, sandwich norms, embeddings scaled by sqrt(hidden),
5 sliding-window layers for every full one, and a second RoPE base (10,000) on the sliding layers.

GGUF stores the norm weights with Gemma's ``1 + w`` already folded in, so ``norm_offset`` is 0
there; Hugging Face checkpoints store ``w`` (``norm_offset`` 1, folded at load). GGUF omits the layer pattern and the local RoPE base; llama.cpp and transformers both use the
values below (newer converters write ``rope.freq_base_swa``, which is used when present). The attention scale is ``1/sqrt(head_dim)`` except for the 27B model (62 layers),
which uses ``1/sqrt(hidden / heads)``, as llama.cpp does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...config import layer_pattern
from .base import ArchAdapter

SLIDING_PATTERN = 6
LOCAL_ROPE_BASE = 10_000.0
LAYERS_OF_27B = 62


def _gguf_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    hidden, heads, layers = fields["hidden_size"], fields["num_attention_heads"], fields["num_hidden_layers"]
    head_dim = fields.get("head_dim") or hidden // heads
    out: dict[str, Any] = {
        "embedding_multiplier": math.sqrt(hidden),
        "rope_local_base_freq": fields.get("rope_local_base_freq", LOCAL_ROPE_BASE),
        "query_pre_attn_scalar": float(hidden // heads if layers == LAYERS_OF_27B else head_dim),
    }
    if fields.get("sliding_window"):
        out["layer_types"] = layer_pattern(layers, SLIDING_PATTERN)
    return out


def _hf_fields(raw: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    return {"norm_offset": 1.0, "embedding_multiplier": math.sqrt(fields["hidden_size"])}


GEMMA3 = ArchAdapter(
    name="gemma3",
    flags={"hidden_act": "gelu_pytorch_tanh", "qk_norm": True, "sandwich_norms": True},
    gguf_defaults=_gguf_defaults,
    hf_fields=_hf_fields,
)
