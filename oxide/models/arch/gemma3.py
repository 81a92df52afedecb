"""Gemma 3 (text): a Gemma (:mod:`.gemma`) with q/k norms and sandwich norms, 5 sliding-window layers for
every full one, and a second, plain RoPE (base 10,000) on the sliding layers.

GGUF omits the layer pattern and, from older converters, the local RoPE base (newer ones write
``rope.freq_base_swa``); llama.cpp and transformers both use the values below. A linear RoPE scaling
(4B and larger) applies to the full layers only. The attention scale is ``1/sqrt(head_dim)`` except
for the 27B model (62 layers), which uses ``1/sqrt(hidden / heads)``, as llama.cpp does.
"""

from __future__ import annotations

from typing import Any

from ...validation import Values
from .base import ArchAdapter
from .gemma import GEGLU, gguf_query_scalar, hf_gemma_fields, scaled_embeddings, sliding_every

SLIDING_PATTERN = 6
LOCAL_ROPE_BASE = 10_000.0
LAYERS_OF_27B = 62


def _gguf_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    return {**scaled_embeddings(fields), **gguf_query_scalar(fields, LAYERS_OF_27B),
            **sliding_every(fields, SLIDING_PATTERN),
            "rope_local_base_freq": fields.get("rope_local_base_freq", LOCAL_ROPE_BASE)}


def _hf_fields(raw: Values, fields: dict[str, Any]) -> dict[str, Any]:
    return {**hf_gemma_fields(raw, fields), "rope_local_base_freq": fields.get("rope_local_base_freq", LOCAL_ROPE_BASE)}


GEMMA3 = ArchAdapter(
    name="gemma3",
    flags={**GEGLU, "qk_norm": True, "sandwich_norms": True},
    gguf_defaults=_gguf_defaults,
    hf_fields=_hf_fields,
)
