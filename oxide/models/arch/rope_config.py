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
from ...validation import LIMITS, Limit, Values
from ..rope import yarn_mscale

SUPPORTED_HF = ("default", "linear", "llama3", "dynamic", "longrope", "yarn")
_ALIASES = {"su": "longrope"}


def hf_rope_fields(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``rope_theta``, ``rope_local_base_freq`` and ``rope_scaling`` from a config.json, each value checked
    (:class:`~oxide.validation.Values`)."""
    config = Values(raw, source, gguf=False)
    params = config.mapping("rope_parameters")
    by_layer_type = "full_attention" in params or "sliding_attention" in params
    full = params.mapping("full_attention") if by_layer_type else params
    out: dict[str, Any] = {}
    theta = full.number("rope_theta", "rope_base", None) if "rope_theta" in full else \
        config.number("rope_theta", "rope_base", None)
    if theta is not None:
        out["rope_theta"] = theta
    local = params.mapping("sliding_attention").number("rope_theta", "rope_base", None) if by_layer_type else \
        config.number("rope_local_base_freq", "rope_base", None)
    if local is not None:
        out["rope_local_base_freq"] = local
    scaling = full if full.string("rope_type", "default") != "default" else config.mapping("rope_scaling")
    kind_key = "rope_type" if "rope_type" in scaling else "type"
    kind = _ALIASES.get(scaling.string(kind_key, "default"), scaling.string(kind_key, "default"))
    if kind not in SUPPORTED_HF:
        raise ModelFormatError(f"{source}: RoPE scaling {kind!r} ({scaling.prefix}{kind_key}) is not supported yet; "
                               f"supported: {', '.join(SUPPORTED_HF)}")
    for where in (scaling, full, config):
        partial = where.number("partial_rotary_factor", Limit(0, 1, "a share of each head", open_low=True), None)
        if partial is not None:
            if partial != 1.0:
                raise ModelFormatError(f"{source}: {where.prefix}partial_rotary_factor = {partial} (RoPE on part of "
                                       f"each head) is not supported yet")
            break
    if kind != "default":
        out["rope_scaling"] = _hf_scaling(kind, scaling, config)
    return out


def _hf_scaling(kind: str, p: Values, raw: Values) -> RopeScaling:
    """The scaling of one type from its parameters ``p``; a missing or malformed one is named."""
    max_positions = raw.integer("max_position_embeddings", "context", 0)
    context = p.integer("original_max_position_embeddings", "context", None) or \
        raw.integer("original_max_position_embeddings", "context", 0)
    if kind == "linear":
        return RopeScaling("linear", factor=p.number("factor", "rope_factor"))
    if kind == "llama3":
        return RopeScaling("llama3", factor=p.number("factor", "rope_factor"),
                           low_freq_factor=p.number("low_freq_factor", "rope_scalar"),
                           high_freq_factor=p.number("high_freq_factor", "rope_scalar"),
                           original_max_position_embeddings=context or max_positions)
    if kind == "dynamic":   # transformers stretches from max_position_embeddings
        return RopeScaling("dynamic", factor=p.number("factor", "rope_factor"),
                           original_max_position_embeddings=max_positions)
    if not context:
        raise p.fail("original_max_position_embeddings", f"is needed by a {kind!r} RoPE scaling (a positive integer)")
    factor = p.number("factor", "rope_factor", None) or _stretch(max_positions, context, p)
    if kind == "yarn":
        return _hf_yarn(p, factor, context)
    attention = p.number("attention_factor", "rope_scalar", None)
    return RopeScaling("longrope", factor=factor, original_max_position_embeddings=context,
                       short_factor=tuple(p.numbers("short_factor", "rope_scalar").tolist()),
                       long_factor=tuple(p.numbers("long_factor", "rope_scalar").tolist()),
                       attention_factor=longrope_attention_factor(factor, context) if attention is None else attention)


def _stretch(max_positions: int, context: int, p: Values) -> float:
    """The factor a scaling without one implies: max_position_embeddings / the original context."""
    if not max_positions or not LIMITS["rope_factor"].admits(max_positions / context):
        raise p.fail("factor", "is missing and max_position_embeddings / original_max_position_embeddings does not "
                               "give one")
    return max_positions / context


def _hf_yarn(p: Values, factor: float, context: int) -> RopeScaling:
    """transformers' YaRN parameters: ``factor`` (else max / original context), the attention factor given,
    else ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` when both are set, else ``mscale(factor)``."""
    attention = p.number("attention_factor", "rope_scalar", None)
    if attention is None:
        mscale, mscale_all_dim = p.number("mscale", "scale", None), p.number("mscale_all_dim", "scale", None)
        attention = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim) if mscale and mscale_all_dim
                     else yarn_mscale(factor))
    return RopeScaling("yarn", factor=factor, original_max_position_embeddings=context,
                       attention_factor=attention, beta_fast=p.number("beta_fast", "rope_scalar", None) or 32.0,
                       beta_slow=p.number("beta_slow", "rope_scalar", None) or 1.0, truncate=p.flag("truncate", True))


def longrope_attention_factor(factor: float, context: int) -> float:
    """LongRoPE's default scale of cos and sin: ``sqrt(1 + ln(factor) / ln(original context))``, 1 when not stretched."""
    return math.sqrt(1 + math.log(factor) / math.log(context)) if factor > 1.0 else 1.0


def gguf_rope_scaling(metadata: Mapping[str, Any], arch_key: str, rope_tensors: Mapping[str, tuple[float, ...]],
                      source: str) -> RopeScaling:
    """The scaling of a GGUF file: ``rope.scaling.type`` for linear, else the factor tensors
    (``rope_freqs``; ``rope_factors_long`` with ``rope_factors_short``) that llama.cpp's converter writes."""
    meta = Values(metadata, source, gguf=True)
    key = f"{arch_key}.rope.scaling"
    kind = meta.string(f"{key}.type", "none")
    kind = _ALIASES.get(kind, kind)
    if kind == "linear":
        return RopeScaling("linear", factor=meta.number(f"{key}.factor", "rope_factor", 1.0))
    if kind == "yarn":
        return _gguf_yarn(meta, key)
    if kind not in ("none", "longrope"):
        raise ModelFormatError(f"{source}: RoPE scaling type {kind!r} ({key}.type) is not supported yet")
    if "rope_freqs" in rope_tensors:
        return RopeScaling("freq_factors", factors=rope_tensors["rope_freqs"])
    long, short = rope_tensors.get("rope_factors_long"), rope_tensors.get("rope_factors_short")
    if (long is None) != (short is None):
        raise ModelFormatError(f"{source}: has only one of rope_factors_long / rope_factors_short; LongRoPE needs both")
    if long is None:
        return NO_SCALING
    context_key = f"{key}.original_context_length"
    if context_key not in meta:
        raise ModelFormatError(f"{source}: LongRoPE factor tensors without {context_key!r}; the file is incomplete")
    return RopeScaling("longrope", original_max_position_embeddings=meta.integer(context_key, "context"),
                       short_factor=short, long_factor=long,
                       attention_factor=meta.number(f"{key}.attn_factor", "rope_scalar", 1.0))


def _gguf_yarn(meta: Values, key: str) -> RopeScaling:
    """YaRN as llama.cpp stores it: ``rope.scaling.factor``, ``.original_context_length``, ``.yarn_beta_fast`` /
    ``_slow``. cos and sin are scaled by ``mscale(factor)``, except where the file has a
    ``yarn_log_multiplier`` (DeepSeek), whose models put their magnitude correction in the softmax instead."""
    if f"{key}.original_context_length" not in meta or f"{key}.factor" not in meta:
        raise ModelFormatError(f"{meta.source}: YaRN scaling without {key}.factor / .original_context_length; "
                               f"the file is incomplete")
    factor = meta.number(f"{key}.factor", "rope_factor")
    return RopeScaling("yarn", factor=factor, original_max_position_embeddings=meta.integer(
                           f"{key}.original_context_length", "context"),
                       beta_fast=meta.number(f"{key}.yarn_beta_fast", "rope_scalar", 32.0),
                       beta_slow=meta.number(f"{key}.yarn_beta_slow", "rope_scalar", 1.0),
                       attention_factor=1.0 if f"{key}.yarn_log_multiplier" in meta else yarn_mscale(factor))
