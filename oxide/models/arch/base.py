"""``ArchAdapter``: what an architecture states about itself, and the GGUF metadata -> config mapping
shared by all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...config import ACTIVATIONS, FULL_ATTENTION, SLIDING_ATTENTION, ModelConfig, field_limit
from ...errors import ModelFormatError
from ...validation import REQUIRED, Values
from ..transforms import SourceTransform
from ..weights import ModelWeights
from .rope_config import gguf_rope_scaling, hf_rope_fields

# A named load-time transform of the weights (un-permute, fold, split...).
Transform = Callable[[ModelWeights, ModelConfig], None]

# GGUF key (after "<arch>.") -> ModelConfig field (whose limit and kind config.field_limit gives).
_GGUF_KEYS: dict[str, str] = {
    "embedding_length": "hidden_size", "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads", "context_length": "max_position_embeddings",
    "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta",
    "rope.freq_base_swa": "rope_local_base_freq", "attention.sliding_window": "sliding_window",
    "attn_logit_softcapping": "attn_logit_softcapping", "final_logit_softcapping": "final_logit_softcapping",
    "expert_count": "num_experts", "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}
_REQUIRED_KEYS = ("embedding_length", "block_count", "feed_forward_length", "attention.head_count")


@dataclass(frozen=True)
class ArchAdapter:
    """How an architecture differs from the plain Llama block.

    ``flags``: ModelConfig fields fixed for the architecture. ``gguf_defaults``: a function of the
    fields read so far returning what GGUF never stores (sliding pattern, second RoPE base...).
    ``gguf_transforms``: named weight transforms applied once at load. ``source_transforms``: named
    transforms of the tensor source, in both formats (fused projections split as they are looked up).
    ``hf_fields``: a function of the config.json (as checked :class:`~oxide.validation.Values`) and the
    generic fields returning the architecture's own (renamed keys...); ``gguf_fields`` the same for the GGUF
    metadata (with the ``<arch>`` key prefix).
    """

    name: str
    flags: Mapping[str, Any] = field(default_factory=dict)
    gguf_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    gguf_transforms: tuple[Transform, ...] = ()
    source_transforms: tuple[SourceTransform, ...] = ()
    hf_fields: Callable[[Values, dict[str, Any]], dict[str, Any]] | None = None
    gguf_fields: Callable[[Values, str, dict[str, Any]], dict[str, Any]] | None = None

    def config_from_gguf(self, metadata: Mapping[str, Any], *, arch_key: str, vocab_size: int,
                         tied: bool, rope_tensors: Mapping[str, tuple[float, ...]], source: str) -> ModelConfig:
        """``rope_tensors``: the file's RoPE factor vectors by name (``rope_freqs``, ``rope_factors_long``, ...)."""
        meta = Values(metadata, source, gguf=True)
        fields_ = read_gguf_fields(meta, arch_key)
        fields_.update(vocab_size=vocab_size, tie_word_embeddings=tied, **self.flags)
        fields_["rope_scaling"] = gguf_rope_scaling(metadata, arch_key, rope_tensors, source)
        if self.gguf_defaults is not None:
            fields_.update(self.gguf_defaults(fields_))
        if self.gguf_fields is not None:
            fields_.update(self.gguf_fields(meta, arch_key, fields_))
        keys = {name: f"{arch_key}.{suffix}" for suffix, name in _GGUF_KEYS.items()}
        config = make_config(self.name, fields_, source, keys)
        rotated = meta.integer(f"{arch_key}.rope.dimension_count", "head_dim", config.head_dim)
        if rotated != config.head_dim:
            raise ModelFormatError(f"{source}: {arch_key}.rope.dimension_count = {rotated} rotates only part of each "
                                   f"head (head_dim {config.head_dim}); partial RoPE is not supported yet")
        return config

    def config_from_hf(self, raw: Mapping[str, Any], *, tied: bool, source: str) -> ModelConfig:
        values = Values(raw, source, gguf=False)
        fields_ = read_hf_fields(values)
        fields_.update(tie_word_embeddings=tied, **self.flags)
        if self.hf_fields is not None:
            fields_.update(self.hf_fields(values, fields_))
        return make_config(self.name, fields_, source, {})


def make_config(architecture: str, fields_: dict[str, Any], source: str, keys: Mapping[str, str]) -> ModelConfig:
    """The ModelConfig of ``fields_``; its own checks (ranges, consistency) name the file and, through ``keys``
    (field -> the file's key), the key at fault."""
    try:
        return ModelConfig(architecture=architecture, **fields_)
    except ModelFormatError as e:
        field_ = getattr(e, "field", None)
        where = f" ({keys[field_]})" if field_ in keys else ""
        raise ModelFormatError(f"{source}{where}: {e}; the file is corrupt or its settings are inconsistent") from None


def read_gguf_fields(meta: Values, arch_key: str) -> dict[str, Any]:
    """ModelConfig fields from the ``<arch>.*`` keys, each checked for type and range; a missing required key
    is named in the error. Per-layer arrays are accepted when uniform."""
    out: dict[str, Any] = {}
    for suffix, name in _GGUF_KEYS.items():
        key = f"{arch_key}.{suffix}"
        limit, integer = field_limit(name)
        read = meta.integer if integer else meta.number
        value = read(key, limit, REQUIRED if suffix in _REQUIRED_KEYS else None, per_layer=True)
        if value is not None:
            out[name] = value
    return out


# config.json keys read as they are (ModelConfig uses Hugging Face's names; config.field_limit gives each one's
# limit and kind).
_HF_SAME_NAME = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "query_pre_attn_scalar",
                 "attn_logit_softcapping", "final_logit_softcapping", "num_experts_per_tok", "moe_intermediate_size",
                 "shared_expert_intermediate_size", "decoder_sparse_step")
_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_MOE_KEYS = ("num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "shared_expert_intermediate_size",
             "decoder_sparse_step")


def read_hf_fields(raw: Values) -> dict[str, Any]:
    """ModelConfig fields from a config.json, each checked for type and range: same-named keys, the activation,
    RoPE (both the ``rope_theta``/``rope_scaling`` and the newer ``rope_parameters`` spellings) and the layer
    types."""
    out: dict[str, Any] = {}
    for key in _HF_SAME_NAME:
        limit, integer = field_limit(key)
        read = raw.integer if integer else raw.number
        value = read(key, limit, REQUIRED if key in _HF_REQUIRED else None)
        if value is not None:
            out[key] = value
    for key in ("attention_bias", "norm_topk_prob"):
        if key in raw:
            out[key] = raw.flag(key)
    experts = raw.integer("num_experts", "experts", None) or raw.integer("num_local_experts", "experts", None)
    if experts:                    # Qwen-MoE / Mixtral spellings
        out["num_experts"] = experts
        out["mlp_only_layers"] = tuple(int(i) for i in raw.numbers("mlp_only_layers", "count", (), integers=True))
    else:                          # a dense model: its MoE keys (a router's defaults) mean nothing
        for key in _MOE_KEYS:
            out.pop(key, None)
    act_key = "hidden_activation" if "hidden_activation" in raw else "hidden_act"
    act = raw.string(act_key, None, choices=ACTIVATIONS)
    if act is not None:
        out["hidden_act"] = act
    out.update(hf_rope_fields(raw.values, raw.source))
    layer_types = raw.strings("layer_types", None)
    window = raw.integer("sliding_window", "window", 0)
    if layer_types is None and window and raw.flag("use_sliding_window", True):
        layer_types = [SLIDING_ATTENTION] * out["num_hidden_layers"]
    if layer_types:
        if len(layer_types) != out["num_hidden_layers"] or not set(layer_types) <= {FULL_ATTENTION, SLIDING_ATTENTION}:
            raise raw.fail("layer_types", f"must list {FULL_ATTENTION!r} or {SLIDING_ATTENTION!r} for each of the "
                                          f"num_hidden_layers = {out['num_hidden_layers']} layers")
        out["layer_types"] = tuple(layer_types)
        if SLIDING_ATTENTION in layer_types:
            out["sliding_window"] = window
    return out
