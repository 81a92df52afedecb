"""Gemma 1 and 2, and what every Gemma shares: a GELU-tanh gated MLP (GeGLU), token embeddings scaled by
``sqrt(hidden_size)``, and RMSNorms that multiply by ``1 + w``.

Hugging Face checkpoints store ``w`` (``norm_offset`` 1, folded at load); llama.cpp's converter stores
``w + 1`` (offset 0). GGUF never stores ``query_pre_attn_scalar``: llama.cpp scales attention by
``1/sqrt(head_dim)`` except for the 27B models, which use ``1/sqrt(hidden / heads)``; so does oxide.

Gemma 2 adds soft-caps on attention scores and final logits, sandwich norms, and sliding-window layers
alternating with full ones (layer 0 sliding); GGUF omits that pattern, and config.json files written
before transformers listed ``layer_types`` omit it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...config import layer_pattern
from ...validation import Values
from .base import ArchAdapter

GEGLU = {"hidden_act": "gelu_pytorch_tanh"}


def scaled_embeddings(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"embedding_multiplier": math.sqrt(fields["hidden_size"])}


def hf_gemma_fields(raw: Values, fields: dict[str, Any]) -> dict[str, Any]:
    """config.json: norms store ``w`` of ``1 + w``; embeddings scaled."""
    return {"norm_offset": 1.0, **scaled_embeddings(fields)}


def gguf_query_scalar(fields: Mapping[str, Any], layers_of_27b: int) -> dict[str, Any]:
    """llama.cpp's attention scale: ``head_dim``, or ``hidden / heads`` for the 27B model."""
    hidden, heads = fields["hidden_size"], fields["num_attention_heads"]
    head_dim = fields.get("head_dim") or hidden // heads
    return {"query_pre_attn_scalar": float(hidden // heads if fields["num_hidden_layers"] == layers_of_27b else head_dim)}


def sliding_every(fields: Mapping[str, Any], every: int) -> dict[str, Any]:
    """Sliding layers with every ``every``-th one full, when the model has a window."""
    return {"layer_types": layer_pattern(fields["num_hidden_layers"], every)} if fields.get("sliding_window") else {}


GEMMA = ArchAdapter(name="gemma", flags=GEGLU, gguf_defaults=scaled_embeddings, hf_fields=hf_gemma_fields)

GEMMA2_LAYERS_OF_27B = 46


def _gemma2_gguf(fields: dict[str, Any]) -> dict[str, Any]:
    return {**scaled_embeddings(fields), **gguf_query_scalar(fields, GEMMA2_LAYERS_OF_27B), **sliding_every(fields, 2)}


def _gemma2_hf(raw: Values, fields: dict[str, Any]) -> dict[str, Any]:
    return {**hf_gemma_fields(raw, fields), **({} if "layer_types" in raw else sliding_every(fields, 2))}


GEMMA2 = ArchAdapter(name="gemma2", flags={**GEGLU, "sandwich_norms": True}, gguf_defaults=_gemma2_gguf,
                     hf_fields=_gemma2_hf)
