"""RoPE settings from a config.json or from GGUF metadata and tensors -> ModelConfig fields.

config.json spells them two ways: transformers >= 5 ``rope_parameters`` (flat, or per layer type
``{"full_attention": {...}, "sliding_attention": {...}}``) and the older ``rope_theta`` with
``rope_scaling`` (``type`` or ``rope_type``; Phi-3 wrote ``su`` for ``longrope``).

llama.cpp's converter (``convert_hf_to_gguf.py``) stores them as: ``<arch>.rope.scaling.type`` =
``linear`` with ``rope.scaling.factor``; ``llama3`` as a ``rope_freqs`` tensor of per-frequency
divisors; LongRoPE as ``rope_factors_long`` / ``rope_factors_short`` tensors with
``rope.scaling.attn_factor`` and ``rope.scaling.original_context_length``; ``dynamic`` not at all (llama.cpp
has no dynamic NTK, so such a file runs plain RoPE there and here). YaRN is read from config.json; its
GGUF form is refused for now.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...config import NO_SCALING, RopeScaling
from ...errors import ModelFormatError
from ..rope import yarn_mscale

SUPPORTED_HF = ("default", "linear", "llama3", "dynamic", "longrope", "yarn")
_ALIASES = {"su": "longrope"}


def hf_rope_fields(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``rope_theta``, ``rope_local_base_freq`` and ``rope_scaling`` from a config.json."""
    params = raw.get("rope_parameters") or {}
    by_layer_type = "full_attention" in params or "sliding_attention" in params
    full = params.get("full_attention", params) if by_layer_type else params
    out: dict[str, Any] = {}
    theta = full.get("rope_theta", raw.get("rope_theta"))
    if theta is not None:
        out["rope_theta"] = float(theta)
    local = params.get("sliding_attention", {}).get("rope_theta") if by_layer_type else raw.get("rope_local_base_freq")
    if local is not None:
        out["rope_local_base_freq"] = float(local)
    scaling = full if full.get("rope_type", "default") != "default" else (raw.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    kind = _ALIASES.get(kind, kind)
    if kind not in SUPPORTED_HF:
        raise ModelFormatError(f"{source}: RoPE scaling {kind!r} is not supported yet; supported: "
                               f"{', '.join(SUPPORTED_HF)}")
    partial = scaling.get("partial_rotary_factor") or full.get("partial_rotary_factor") or raw.get("partial_rotary_factor")
    if float(partial or 1.0) != 1.0:
        raise ModelFormatError(f"{source}: partial_rotary_factor != 1 (RoPE on part of each head) is not supported yet")
    if kind != "default":
        out["rope_scaling"] = _hf_scaling(kind, scaling, raw, source)
    return out


def _hf_scaling(kind: str, p: Mapping[str, Any], raw: Mapping[str, Any], source: str) -> RopeScaling:
    max_positions = int(raw.get("max_position_embeddings") or 0)
    context = int(p.get("original_max_position_embeddings") or raw.get("original_max_position_embeddings") or 0)
    try:
        if kind == "linear":
            return RopeScaling("linear", factor=float(p["factor"]))
        if kind == "llama3":
            return RopeScaling("llama3", factor=float(p["factor"]), low_freq_factor=float(p["low_freq_factor"]),
                               high_freq_factor=float(p["high_freq_factor"]),
                               original_max_position_embeddings=context or max_positions)
        if kind == "dynamic":   # transformers stretches from max_position_embeddings
            return RopeScaling("dynamic", factor=float(p["factor"]), original_max_position_embeddings=max_positions)
        if kind == "yarn":
            return _hf_yarn(p, max_positions, context)
        factor = float(p.get("factor") or max_positions / context)
        attention = p.get("attention_factor")
        return RopeScaling("longrope", factor=factor, original_max_position_embeddings=context,
                           short_factor=tuple(map(float, p["short_factor"])),
                           long_factor=tuple(map(float, p["long_factor"])),
                           attention_factor=longrope_attention_factor(factor, context) if attention is None
                           else float(attention))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ModelFormatError(f"{source}: RoPE scaling {kind!r} is incomplete or malformed ({e!r}); "
                               f"check rope_scaling / rope_parameters in config.json") from None


def _hf_yarn(p: Mapping[str, Any], max_positions: int, context: int) -> RopeScaling:
    """transformers' YaRN parameters: ``factor`` (else max / original context), the attention factor given,
    else ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` when both are set, else ``mscale(factor)``."""
    if not context:
        raise KeyError("original_max_position_embeddings")
    factor = float(p.get("factor") or max_positions / context)
    attention = p.get("attention_factor")
    if attention is None:
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")
        attention = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim) if mscale and mscale_all_dim
                     else yarn_mscale(factor))
    return RopeScaling("yarn", factor=factor, original_max_position_embeddings=context,
                       attention_factor=float(attention), beta_fast=float(p.get("beta_fast") or 32),
                       beta_slow=float(p.get("beta_slow") or 1), truncate=bool(p.get("truncate", True)))


def longrope_attention_factor(factor: float, context: int) -> float:
    """LongRoPE's default scale of cos and sin: ``sqrt(1 + ln(factor) / ln(original context))``, 1 when not stretched."""
    return math.sqrt(1 + math.log(factor) / math.log(context)) if factor > 1.0 else 1.0


def gguf_rope_scaling(metadata: Mapping[str, Any], arch_key: str, rope_tensors: Mapping[str, tuple[float, ...]],
                      source: str) -> RopeScaling:
    """The scaling of a GGUF file: ``rope.scaling.type`` for linear, else the factor tensors
    (``rope_freqs``; ``rope_factors_long`` with ``rope_factors_short``) that llama.cpp's converter writes."""
    kind = metadata.get(f"{arch_key}.rope.scaling.type", "none")
    kind = _ALIASES.get(kind, kind)
    if kind == "linear":
        return RopeScaling("linear", factor=float(metadata.get(f"{arch_key}.rope.scaling.factor", 1.0)))
    if kind == "yarn":
        return _gguf_yarn(metadata, arch_key, source)
    if kind not in ("none", "longrope"):
        raise ModelFormatError(f"{source}: RoPE scaling type {kind!r} ({arch_key}.rope.scaling.type) is not "
                               f"supported yet")
    if "rope_freqs" in rope_tensors:
        return RopeScaling("freq_factors", factors=rope_tensors["rope_freqs"])
    long, short = rope_tensors.get("rope_factors_long"), rope_tensors.get("rope_factors_short")
    if (long is None) != (short is None):
        raise ModelFormatError(f"{source}: has only one of rope_factors_long / rope_factors_short; LongRoPE needs both")
    if long is None:
        return NO_SCALING
    context_key = f"{arch_key}.rope.scaling.original_context_length"
    if context_key not in metadata:
        raise ModelFormatError(f"{source}: LongRoPE factor tensors without {context_key!r}; the file is incomplete")
    return RopeScaling("longrope", original_max_position_embeddings=int(metadata[context_key]), short_factor=short,
                       long_factor=long,
                       attention_factor=float(metadata.get(f"{arch_key}.rope.scaling.attn_factor", 1.0)))


def _gguf_yarn(metadata: Mapping[str, Any], arch_key: str, source: str) -> RopeScaling:
    """YaRN as llama.cpp stores it: ``rope.scaling.factor``, ``.original_context_length``, ``.yarn_beta_fast`` /
    ``_slow``. cos and sin are scaled by ``mscale(factor)``, except where the file has a
    ``yarn_log_multiplier`` (DeepSeek), whose models put their magnitude correction in the softmax instead."""
    key = f"{arch_key}.rope.scaling"
    if f"{key}.original_context_length" not in metadata or f"{key}.factor" not in metadata:
        raise ModelFormatError(f"{source}: YaRN scaling without {key}.factor / .original_context_length; "
                               f"the file is incomplete")
    factor = float(metadata[f"{key}.factor"])
    context = int(metadata[f"{key}.original_context_length"])
    return RopeScaling("yarn", factor=factor, original_max_position_embeddings=context,
                       beta_fast=float(metadata.get(f"{key}.yarn_beta_fast", 32.0)),
                       beta_slow=float(metadata.get(f"{key}.yarn_beta_slow", 1.0)),
                       attention_factor=1.0 if f"{key}.yarn_log_multiplier" in metadata else yarn_mscale(factor))
