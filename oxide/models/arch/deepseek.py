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

from collections.abc import Mapping
from typing import Any

from ..rope import yarn_mscale
from ..transforms import deinterleave_rope
from .base import ArchAdapter


def _softmax_mscale(raw: Mapping[str, Any], fields: dict[str, Any]) -> float:
    """DeepSeek multiplies its softmax scale by ``mscale(factor, mscale_all_dim) ** 2`` under a YaRN scaling."""
    scaling = fields.get("rope_scaling")
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if scaling is None or scaling.rope_type != "yarn" or not params.get("mscale_all_dim"):
        return 1.0
    return yarn_mscale(scaling.factor, params["mscale_all_dim"]) ** 2


def _hf_fields(raw: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    v3 = raw.get("model_type") == "deepseek_v3"
    experts = int(raw.get("n_routed_experts") or 0)
    grouped = v3 or raw.get("topk_method") == "group_limited_greedy"
    out: dict[str, Any] = {
        "attention_mscale": _softmax_mscale(raw, fields),
        "kv_lora_rank": raw["kv_lora_rank"], "q_lora_rank": raw.get("q_lora_rank") or 0,
        "qk_nope_head_dim": raw["qk_nope_head_dim"], "v_head_dim": raw["v_head_dim"],
        "head_dim": raw["qk_rope_head_dim"], "num_key_value_heads": fields["num_attention_heads"],
    }
    if experts:
        out.update(
            num_experts=experts, num_experts_per_tok=raw["num_experts_per_tok"],
            moe_intermediate_size=raw["moe_intermediate_size"],
            shared_expert_intermediate_size=raw["moe_intermediate_size"] * (raw.get("n_shared_experts") or 0),
            shared_expert_gated=False, first_k_dense_replace=raw.get("first_k_dense_replace") or 0,
            routed_scaling_factor=float(raw.get("routed_scaling_factor") or 1.0),
            router_scoring="sigmoid" if v3 else "softmax", norm_topk_prob=bool(v3 and raw.get("norm_topk_prob")),
            router_groups=(raw.get("n_group") or 0) if grouped else 0,
            router_topk_groups=(raw.get("topk_group") or 0) if grouped else 0,
        )
    return out


def _gguf_fields(metadata: Mapping[str, Any], arch: str, fields: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's ``deepseek2`` keys. Its files describe the absorbed attention (one key/value head of
    ``kv_lora_rank + rope`` / ``kv_lora_rank``): the heads' own sizes are the ``*_mla`` keys."""
    def get(key: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.{key}", default)

    rope = int(get("rope.dimension_count"))
    out: dict[str, Any] = {
        "head_dim": rope, "num_key_value_heads": fields["num_attention_heads"],
        "kv_lora_rank": int(get("attention.kv_lora_rank")), "q_lora_rank": int(get("attention.q_lora_rank", 0)),
        "qk_nope_head_dim": int(get("attention.key_length_mla")) - rope, "v_head_dim": int(get("attention.value_length_mla")),
        "first_k_dense_replace": int(get("leading_dense_block_count", 0)),
        "routed_scaling_factor": float(get("expert_weights_scale", 1.0)),
        "norm_topk_prob": bool(get("expert_weights_norm", False)),
        "router_scoring": "sigmoid" if int(get("expert_gating_func", _SOFTMAX)) == _SIGMOID else "softmax",
        "shared_expert_intermediate_size": int(get("expert_shared_count", 0)) * fields.get("moe_intermediate_size", 0),
        "shared_expert_gated": False,
    }
    if int(get("expert_group_count", 0)) > 1:
        out.update(router_groups=int(get("expert_group_count")), router_topk_groups=int(get("expert_group_used_count")))
    log_multiplier = get("rope.scaling.yarn_log_multiplier")
    if log_multiplier is not None:   # 0.1 * mscale_all_dim
        out["attention_mscale"] = yarn_mscale(fields["rope_scaling"].factor, 10 * float(log_multiplier)) ** 2
    return out


_SOFTMAX, _SIGMOID = 1, 2   # llama.cpp's expert_gating_func values (absent: softmax, as V2's files)

DEEPSEEK = ArchAdapter(name="deepseek", flags={"hidden_act": "silu"}, hf_fields=_hf_fields, gguf_fields=_gguf_fields,
                       source_transforms=(deinterleave_rope,))
