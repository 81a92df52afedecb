"""DeepSeek V2 (Lite) and V3: multi-head latent attention (``models/latent.py``) and mixtures of experts
with shared experts, a dense MLP in the first ``first_k_dense_replace`` layers and the weights of the
picked experts scaled by ``routed_scaling_factor``.

V2 scores experts by softmax, picking among the best groups (``group_limited_greedy``) or all
(``greedy``), without renormalising; V3 by each expert's sigmoid plus a correction bias that only picks,
in groups ranked by their two best, renormalised per ``norm_topk_prob``. Their RoPE rotates adjacent
pairs, so the rows of the rotated dimensions are reordered at load (``deinterleave_rope``, both formats:
llama.cpp keeps them paired); under YaRN the softmax scale is multiplied by ``mscale(factor, mscale_all_dim) ** 2``.
"""

from __future__ import annotations

from typing import Any

from ..rope import yarn_mscale
from ..transforms import deinterleave_rope
from ...validation import REQUIRED, Values
from .base import ArchAdapter


def _softmax_mscale(raw: Values, fields: dict[str, Any]) -> float:
    """DeepSeek multiplies its softmax scale by ``mscale(factor, mscale_all_dim) ** 2`` under a YaRN scaling."""
    scaling = fields.get("rope_scaling")
    params = raw.mapping("rope_parameters" if "rope_parameters" in raw else "rope_scaling")
    mscale_all_dim = params.number("mscale_all_dim", "scale", None)
    if scaling is None or scaling.rope_type != "yarn" or not mscale_all_dim:
        return 1.0
    return yarn_mscale(scaling.factor, mscale_all_dim) ** 2


def _hf_fields(raw: Values, fields: dict[str, Any]) -> dict[str, Any]:
    v3 = raw.string("model_type", "") == "deepseek_v3"
    experts = raw.integer("n_routed_experts", "experts", 0)
    grouped = v3 or raw.string("topk_method", "") == "group_limited_greedy"
    out: dict[str, Any] = {
        "attention_mscale": _softmax_mscale(raw, fields),
        "kv_lora_rank": raw.integer("kv_lora_rank", "latent_rank"),
        "q_lora_rank": raw.integer("q_lora_rank", "latent_rank", 0),
        "qk_nope_head_dim": raw.integer("qk_nope_head_dim", "head_dim"), "v_head_dim": raw.integer("v_head_dim", "head_dim"),
        "head_dim": raw.integer("qk_rope_head_dim", "head_dim"), "num_key_value_heads": fields["num_attention_heads"],
    }
    if experts:
        width = raw.integer("moe_intermediate_size", "intermediate_size")
        out.update(
            num_experts=experts, num_experts_per_tok=raw.integer("num_experts_per_tok", "experts"),
            moe_intermediate_size=width,
            shared_expert_intermediate_size=width * raw.integer("n_shared_experts", "count", 0),
            shared_expert_gated=False, first_k_dense_replace=raw.integer("first_k_dense_replace", "count", 0),
            routed_scaling_factor=raw.number("routed_scaling_factor", "scale", 1.0),
            router_scoring="sigmoid" if v3 else "softmax",
            norm_topk_prob=v3 and raw.flag("norm_topk_prob", False),
            router_groups=raw.integer("n_group", "count", 0) if grouped else 0,
            router_topk_groups=raw.integer("topk_group", "count", 0) if grouped else 0,
        )
    return out


def _gguf_fields(meta: Values, arch: str, fields: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's ``deepseek2`` keys. Its files describe the absorbed attention (one key/value head of
    ``kv_lora_rank + rope`` / ``kv_lora_rank``): the heads' own sizes are the ``*_mla`` keys."""
    def integer(key: str, limit: str, default: Any = REQUIRED) -> int:
        return meta.integer(f"{arch}.{key}", limit, default)

    rope = integer("rope.dimension_count", "head_dim")
    key_length = integer("attention.key_length_mla", "head_dim")
    if key_length <= rope:
        raise meta.fail(f"{arch}.attention.key_length_mla", f"must exceed {arch}.rope.dimension_count = {rope}")
    out: dict[str, Any] = {
        "head_dim": rope, "num_key_value_heads": fields["num_attention_heads"],
        "kv_lora_rank": integer("attention.kv_lora_rank", "latent_rank"),
        "q_lora_rank": integer("attention.q_lora_rank", "latent_rank", 0),
        "qk_nope_head_dim": key_length - rope, "v_head_dim": integer("attention.value_length_mla", "head_dim"),
        "first_k_dense_replace": integer("leading_dense_block_count", "count", 0),
        "routed_scaling_factor": meta.number(f"{arch}.expert_weights_scale", "scale", 1.0),
        "norm_topk_prob": meta.flag(f"{arch}.expert_weights_norm", False),
        "router_scoring": "sigmoid" if integer("expert_gating_func", "count", _SOFTMAX) == _SIGMOID else "softmax",
        "shared_expert_intermediate_size": integer("expert_shared_count", "count", 0)
        * fields.get("moe_intermediate_size", 0),
        "shared_expert_gated": False,
    }
    if integer("expert_group_count", "count", 0) > 1:
        out.update(router_groups=integer("expert_group_count", "count"),
                   router_topk_groups=integer("expert_group_used_count", "count"))
    log_multiplier = meta.number(f"{arch}.rope.scaling.yarn_log_multiplier", "scale", None)
    if log_multiplier is not None:   # 0.1 * mscale_all_dim
        out["attention_mscale"] = yarn_mscale(fields["rope_scaling"].factor, 10 * log_multiplier) ** 2
    return out


_SOFTMAX, _SIGMOID = 1, 2   # llama.cpp's expert_gating_func values (absent: softmax, as V2's files)

DEEPSEEK = ArchAdapter(name="deepseek", flags={"hidden_act": "silu"}, hf_fields=_hf_fields, gguf_fields=_gguf_fields,
                       source_transforms=(deinterleave_rope,))
