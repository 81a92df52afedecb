"""``ArchAdapter``: what an architecture states about itself, and the GGUF metadata -> config mapping
shared by all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...config import ModelConfig
from ...errors import ModelFormatError
from ..transforms import SourceTransform
from ..weights import ModelWeights
from .rope_config import gguf_rope_scaling, hf_rope_fields

# A named load-time transform of the weights (un-permute, fold, split...).
Transform = Callable[[ModelWeights, ModelConfig], None]

# GGUF key (after "<arch>.") -> ModelConfig field; required keys first.
_REQUIRED_KEYS = {
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
}
_OPTIONAL_KEYS = {
    "context_length": "max_position_embeddings",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "rope.freq_base_swa": "rope_local_base_freq",
    "attention.sliding_window": "sliding_window",
    "attn_logit_softcapping": "attn_logit_softcapping",
    "final_logit_softcapping": "final_logit_softcapping",
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
}


@dataclass(frozen=True)
class ArchAdapter:
    """How an architecture differs from the plain Llama block.

    ``flags``: ModelConfig fields fixed for the architecture. ``gguf_defaults``: a function of the
    fields read so far returning what GGUF never stores (sliding pattern, second RoPE base...).
    ``gguf_transforms``: named weight transforms applied once at load. ``source_transforms``: named
    transforms of the tensor source, in both formats (fused projections split as they are looked up).
    ``hf_fields``: a function of the raw config.json and the generic fields returning the
    architecture's own (renamed keys...); ``gguf_fields`` the same for the GGUF metadata (with the
    ``<arch>`` key prefix).
    """

    name: str
    flags: Mapping[str, Any] = field(default_factory=dict)
    gguf_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    gguf_transforms: tuple[Transform, ...] = ()
    source_transforms: tuple[SourceTransform, ...] = ()
    hf_fields: Callable[[Mapping[str, Any], dict[str, Any]], dict[str, Any]] | None = None
    gguf_fields: Callable[[Mapping[str, Any], str, dict[str, Any]], dict[str, Any]] | None = None

    def config_from_gguf(self, metadata: Mapping[str, Any], *, arch_key: str, vocab_size: int,
                         tied: bool, rope_tensors: Mapping[str, tuple[float, ...]], source: str) -> ModelConfig:
        """``rope_tensors``: the file's RoPE factor vectors by name (``rope_freqs``, ``rope_factors_long``, ...)."""
        fields_ = read_gguf_fields(metadata, arch_key, source)
        fields_.update(vocab_size=vocab_size, tie_word_embeddings=tied, **self.flags)
        fields_["rope_scaling"] = gguf_rope_scaling(metadata, arch_key, rope_tensors, source)
        if self.gguf_defaults is not None:
            fields_.update(self.gguf_defaults(fields_))
        if self.gguf_fields is not None:
            fields_.update(self.gguf_fields(metadata, arch_key, fields_))
        config = ModelConfig(architecture=self.name, **fields_)
        rotated = metadata.get(f"{arch_key}.rope.dimension_count", config.head_dim)
        if rotated != config.head_dim:
            raise ModelFormatError(f"{source}: {arch_key}.rope.dimension_count = {rotated} rotates only part of each "
                                   f"head (head_dim {config.head_dim}); partial RoPE is not supported yet")
        return config

    def config_from_hf(self, raw: Mapping[str, Any], *, tied: bool, source: str) -> ModelConfig:
        fields_ = read_hf_fields(raw, source)
        fields_.update(tie_word_embeddings=tied, **self.flags)
        if self.hf_fields is not None:
            fields_.update(self.hf_fields(raw, fields_))
        return ModelConfig(architecture=self.name, **fields_)


def read_gguf_fields(metadata: Mapping[str, Any], arch_key: str, source: str) -> dict[str, Any]:
    """ModelConfig fields from the ``<arch>.*`` keys; a missing required key is named in the error."""
    out: dict[str, Any] = {}
    for suffix, name in (_REQUIRED_KEYS | _OPTIONAL_KEYS).items():
        key = f"{arch_key}.{suffix}"
        if key not in metadata:
            if suffix in _REQUIRED_KEYS:
                raise ModelFormatError(f"{source}: required metadata key {key!r} is missing; the GGUF file is incomplete")
            continue
        value = _scalar(metadata[key], key, source)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelFormatError(f"{source}: metadata {key!r} = {value!r} must be a number; the file is corrupt")
        out[name] = value
    for name in ("rope_theta", "rope_local_base_freq"):
        if name in out:
            out[name] = float(out[name])
    return out


def _scalar(value: Any, key: str, source: str) -> Any:
    """Per-layer arrays are accepted when uniform; GGUF integers arrive as Python ints."""
    if isinstance(value, np.ndarray):
        if value.size == 0 or not (value == value.flat[0]).all():
            raise ModelFormatError(f"{source}: metadata {key!r} varies per layer ({value.tolist()}); not supported yet")
        return value.flat[0].item()
    return value


# config.json keys copied as they are (ModelConfig uses Hugging Face's names).
_HF_SAME_NAME = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "attention_bias",
                 "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
                 "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "shared_expert_intermediate_size",
                 "decoder_sparse_step")


def read_hf_fields(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    """ModelConfig fields from a config.json: same-named keys, the activation, RoPE (both the
    ``rope_theta``/``rope_scaling`` and the newer ``rope_parameters`` spellings) and the layer types."""
    out: dict[str, Any] = {k: raw[k] for k in _HF_SAME_NAME if raw.get(k) is not None}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in out:
            raise ModelFormatError(f"{source}: required key {key!r} is missing from config.json")
    experts = raw.get("num_experts") or raw.get("num_local_experts")   # Qwen-MoE / Mixtral spellings
    if experts:
        out["num_experts"] = int(experts)
        out["mlp_only_layers"] = tuple(raw.get("mlp_only_layers") or ())
    else:                          # a dense model: its MoE keys (a router's defaults) mean nothing
        for key in ("num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob", "shared_expert_intermediate_size",
                    "decoder_sparse_step"):
            out.pop(key, None)
    act = raw.get("hidden_activation") or raw.get("hidden_act")
    if act is not None:
        out["hidden_act"] = act
    out.update(hf_rope_fields(raw, source))
    layer_types = raw.get("layer_types")
    window = raw.get("sliding_window") or 0
    if layer_types is None and window and raw.get("use_sliding_window", True):
        layer_types = ["sliding_attention"] * out["num_hidden_layers"]
    if layer_types:
        out["layer_types"] = tuple(layer_types)
        if "sliding_attention" in layer_types:
            out["sliding_window"] = int(window)
    return out
