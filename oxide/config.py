"""``ModelConfig``: the one description of a decoder-only model that every front door produces.

Field names follow Hugging Face's ``config.json``. Feature flags describe how an architecture
differs from the plain Llama block; their defaults live here, and derived values are filled in
``__post_init__`` (one place), so the model never needs ``getattr(config, name, default)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ModelFormatError
from .validation import LIMITS

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu")
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "longrope", "freq_factors", "yarn")
_ROPE_PARAMETERS = {      # the RopeScaling fields each type reads
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "longrope": ("original_max_position_embeddings", "attention_factor", "short_factor", "long_factor"),
    "freq_factors": ("factors",),
}


@dataclass(frozen=True)
class RopeScaling:
    """How a RoPE stretches past its training context; :mod:`oxide.models.rope` holds one function per type.

    ``rope_type``: ``default`` (none), ``linear`` (positions / ``factor``), ``llama3`` (per-frequency
    interpolation between ``low_freq_factor`` and ``high_freq_factor`` wavelengths of the original
    context), ``dynamic`` (NTK: the base grows once the sequence passes ``original_max_position_embeddings``),
    ``longrope`` (Phi-3 ``su``: ``short_factor`` or ``long_factor`` divides each frequency, cos and sin
    scaled by ``attention_factor``), ``freq_factors`` (GGUF's ``rope_freqs``: each frequency divided by
    its entry of ``factors``, the form in which llama.cpp's converter stores ``llama3``), ``yarn``
    (frequencies between ``beta_slow`` and ``beta_fast`` rotations over the original context ramped from
    extrapolated to interpolated by ``factor``, cos and sin scaled by ``attention_factor``).
    """

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    factors: tuple[float, ...] = ()
    attention_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True

    def __str__(self) -> str:
        """One line for ``oxide info``: the type and the parameters it uses (factor lists by their length)."""
        parts = [f"{name}={len(value)} values" if isinstance(value, tuple) else f"{name}={value:g}"
                 for name in _ROPE_PARAMETERS.get(self.rope_type, ()) for value in (getattr(self, name),)]
        return f"{self.rope_type} ({', '.join(parts)})" if parts else self.rope_type


NO_SCALING = RopeScaling()

# ModelConfig's sizes and numbers -> (the limit of oxide.validation.LIMITS they obey, whether 0 is allowed: a
# value to derive, or a feature that is off).
_SIZES: dict[str, tuple[str, bool]] = {
    "vocab_size": ("vocab_size", False), "hidden_size": ("hidden_size", False),
    "intermediate_size": ("intermediate_size", False), "num_hidden_layers": ("layers", False),
    "num_attention_heads": ("heads", False), "num_key_value_heads": ("heads", True), "head_dim": ("head_dim", True),
    "max_position_embeddings": ("context", False), "sliding_window": ("window", True),
    "num_experts": ("experts", True), "num_experts_per_tok": ("experts", True),
    "moe_intermediate_size": ("intermediate_size", True), "shared_expert_intermediate_size": ("intermediate_size", True),
    "decoder_sparse_step": ("count", False), "first_k_dense_replace": ("count", True), "router_groups": ("count", True),
    "router_topk_groups": ("count", True), "kv_lora_rank": ("latent_rank", True), "q_lora_rank": ("latent_rank", True),
    "qk_nope_head_dim": ("head_dim", True), "v_head_dim": ("head_dim", True),
}
_NUMBERS: dict[str, tuple[str, bool]] = {
    "rms_norm_eps": ("rms_norm_eps", False), "rope_theta": ("rope_base", False),
    "rope_local_base_freq": ("rope_base", True), "query_pre_attn_scalar": ("scale", True),
    "attn_logit_softcapping": ("softcap", True), "final_logit_softcapping": ("softcap", True),
    "norm_offset": ("scale", True), "embedding_multiplier": ("scale", False),
    "routed_scaling_factor": ("scale", False), "attention_mscale": ("scale", False),
}


def field_limit(name: str) -> tuple[str, bool]:
    """The :data:`oxide.validation.LIMITS` entry a ModelConfig size or number obeys, and whether it is an
    integer: what a reader checks a file's value for before it becomes field ``name``."""
    if name in _SIZES:
        return _SIZES[name][0], True
    return _NUMBERS[name][0], False


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer.

    Block (pre-norm): ``h = x + Attn(Norm(x))``; ``y = h + MLP(Norm(h))``. With ``sandwich_norms``
    (Gemma 2/3) each sub-block output is normalised again before the residual add. The MLP is gated:
    ``down(act(gate(x)) * up(x))``. Norms are RMSNorm: ``x / sqrt(mean(x^2) + eps) * (norm_offset + w)``.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int = 0          # 0: same as num_attention_heads
    head_dim: int = 0                     # 0: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False          # biases on the q, k, v projections (Qwen2)
    qk_norm: bool = False                 # RMSNorm over head_dim on q and k (Qwen3, Gemma 3)
    norm_offset: float = 0.0              # checkpoint stores w; norms multiply by (norm_offset + w)
    embedding_multiplier: float = 1.0     # token embeddings are scaled by this (Gemma: sqrt(hidden_size))
    sandwich_norms: bool = False          # post-attention and post-feed-forward norms (Gemma 2/3)
    query_pre_attn_scalar: float = 0.0    # attention scale = query_pre_attn_scalar ** -0.5; 0: head_dim
    attn_logit_softcapping: float = 0.0   # 0: off; else scores = cap * tanh(scores / cap)
    final_logit_softcapping: float = 0.0  # 0: off
    rope_theta: float = 10000.0
    rope_local_base_freq: float = 0.0     # sliding layers' own plain RoPE base (Gemma 3); 0: they share the full layers' RoPE
    rope_scaling: RopeScaling = NO_SCALING  # of the full layers' (or the only) RoPE
    sliding_window: int = 0               # 0: no sliding-window layers
    layer_types: tuple[str, ...] = field(default=())   # per layer; empty: all full attention
    # Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): a softmax router picks num_experts_per_tok of
    # num_experts gated MLPs per token and weighs their outputs by the picked probabilities.
    num_experts: int = 0                  # 0: every MLP is dense
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0        # each expert's width; 0: intermediate_size
    norm_topk_prob: bool = False          # the picked probabilities renormalised to sum to 1 (Mixtral, Qwen3-MoE)
    shared_expert_intermediate_size: int = 0   # an always-on expert scaled by sigmoid(x . w) (Qwen2-MoE); 0: none
    mlp_only_layers: tuple[int, ...] = ()       # dense layers among the expert ones
    decoder_sparse_step: int = 1                # layer i has experts when (i + 1) % step == 0
    first_k_dense_replace: int = 0              # the first layers keep a dense MLP (DeepSeek)
    shared_expert_gated: bool = True            # the shared expert is scaled by sigmoid(x . w) (Qwen2-MoE), or not
    router_scoring: str = "softmax"             # expert scores: softmax over experts, or each one's sigmoid (DeepSeek V3)
    router_groups: int = 0                      # experts in n groups, of which only router_topk_groups compete (DeepSeek)
    router_topk_groups: int = 0
    routed_scaling_factor: float = 1.0          # the picked experts' weights are multiplied by this (DeepSeek)
    # Multi-head latent attention (DeepSeek V2/V3): keys and values come from a cached latent of
    # kv_lora_rank per token plus one shared RoPE key of qk_rope_head_dim; queries from a q_lora_rank
    # latent (0: a plain projection). head_dim is then qk_rope_head_dim, the rotated part of each head.
    kv_lora_rank: int = 0                       # 0: ordinary attention
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    attention_mscale: float = 1.0               # multiplies the softmax scale (DeepSeek's YaRN mscale, squared)

    def __post_init__(self) -> None:
        self._check_ranges()          # first: nothing below is sized until the sizes are known sane
        set_ = object.__setattr__
        if self.num_key_value_heads == 0:
            set_(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim == 0:
            set_(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.query_pre_attn_scalar == 0.0:
            set_(self, "query_pre_attn_scalar", float(self.head_dim))
        if not self.layer_types:
            set_(self, "layer_types", (FULL_ATTENTION,) * self.num_hidden_layers)
        set_(self, "layer_types", tuple(self.layer_types))
        set_(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        if self.num_experts and self.moe_intermediate_size == 0:
            set_(self, "moe_intermediate_size", self.intermediate_size)
        self._validate()

    def _bad(self, name: str, why: str) -> ModelFormatError:
        """An error naming the field; the front doors (``models/arch/base.py``) add the file and its own key."""
        error = ModelFormatError(f"model config for {self.architecture!r}: {name}={getattr(self, name)!r:.120} {why}")
        error.field = name
        return error

    def _check_ranges(self) -> None:
        """Each size and number against :data:`oxide.validation.LIMITS` (``_SIZES``: field -> limit name; 0 where
        the field allows it means "derive" or "off")."""
        for name, (limit_name, zero_allowed) in _SIZES.items():
            value = getattr(self, name)
            limit = LIMITS[limit_name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise self._bad(name, "must be an integer")
            if not (limit.admits(value) or (zero_allowed and value == 0)):
                raise self._bad(name, f"is outside {limit} ({limit.reason})")
        for name, (limit_name, zero_allowed) in _NUMBERS.items():
            value = getattr(self, name)
            limit = LIMITS[limit_name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self._bad(name, "must be a finite number")
            if not (limit.admits(value) or (zero_allowed and value == 0)):
                raise self._bad(name, f"is outside {limit} ({limit.reason})")

    def _validate(self) -> None:
        bad = self._bad
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise bad("hidden_act", f"is not one of {ACTIVATIONS}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise bad("layer_types", f"must have num_hidden_layers={self.num_hidden_layers} entries")
        if any(t not in (FULL_ATTENTION, SLIDING_ATTENTION) for t in self.layer_types):
            raise bad("layer_types", f"entries must be {FULL_ATTENTION!r} or {SLIDING_ATTENTION!r}")
        if SLIDING_ATTENTION in self.layer_types and self.sliding_window <= 0:
            raise bad("sliding_window", "must be positive when some layers use sliding-window attention")
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers
               for i in self.mlp_only_layers):
            raise bad("mlp_only_layers", f"entries must be layer numbers in [0, {self.num_hidden_layers})")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise bad("num_experts_per_tok", f"must lie in [1, num_experts={self.num_experts}]")
        if self.num_experts and self.decoder_sparse_step < 1:
            raise bad("decoder_sparse_step", "must be >= 1")
        if self.router_scoring not in ("softmax", "sigmoid"):
            raise bad("router_scoring", "must be 'softmax' or 'sigmoid'")
        if self.router_groups and (self.num_experts % self.router_groups
                                   or not 1 <= self.router_topk_groups <= self.router_groups):
            raise bad("router_groups", f"must divide num_experts={self.num_experts} with 1 <= router_topk_groups "
                                       f"({self.router_topk_groups}) <= router_groups")
        if self.latent_attention and (self.qk_nope_head_dim <= 0 or self.v_head_dim <= 0):
            raise bad("kv_lora_rank", "latent attention needs positive qk_nope_head_dim and v_head_dim")
        self._validate_rope(bad)

    def _validate_rope(self, bad: Callable[[str, str], ModelFormatError]) -> None:
        s = self.rope_scaling
        if s.rope_type not in ROPE_TYPES:
            raise bad("rope_scaling", f"has rope_type {s.rope_type!r}, not one of {ROPE_TYPES}")
        for name in ("factor", "attention_factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow"):
            limit = LIMITS["rope_factor" if name == "factor" else "rope_scalar"]
            if not (math.isfinite(getattr(s, name)) and limit.admits(getattr(s, name))):
                raise bad("rope_scaling", f"has {name}={getattr(s, name)!r}, outside {limit} ({limit.reason})")
        if not LIMITS["context"].admits(s.original_max_position_embeddings) and s.original_max_position_embeddings:
            raise bad("rope_scaling", f"has original_max_position_embeddings={s.original_max_position_embeddings} "
                                      f"outside {LIMITS['context']}")
        needs_context = s.rope_type in ("llama3", "dynamic", "longrope", "yarn")
        if needs_context and s.original_max_position_embeddings <= 0:
            raise bad("rope_scaling", f"of type {s.rope_type!r} needs original_max_position_embeddings")
        half = self.head_dim // 2
        named = {"longrope": ("short_factor", "long_factor"), "freq_factors": ("factors",)}.get(s.rope_type, ())
        for name in named:
            values = getattr(s, name)
            if len(values) != half:
                raise bad("rope_scaling", f"{name} must have head_dim / 2 = {half} entries, not {len(values)}")
            if not all(math.isfinite(v) and LIMITS["rope_scalar"].admits(v) for v in values):
                raise bad("rope_scaling", f"{name} entries must lie in {LIMITS['rope_scalar']} "
                                          f"({LIMITS['rope_scalar'].reason})")

    @property
    def attention_scale(self) -> float:
        if self.latent_attention:   # over the whole query/key head: its plain and rotated parts
            return (self.qk_nope_head_dim + self.head_dim) ** -0.5 * self.attention_mscale
        return self.query_pre_attn_scalar ** -0.5 * self.attention_mscale

    def is_moe(self, layer: int) -> bool:
        """Whether layer ``layer``'s MLP is a mixture of experts."""
        return (self.num_experts > 0 and layer not in self.mlp_only_layers and layer >= self.first_k_dense_replace
                and (layer + 1) % self.decoder_sparse_step == 0)

    @property
    def latent_attention(self) -> bool:
        """Whether attention is DeepSeek's multi-head latent attention."""
        return self.kv_lora_rank > 0

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING_ATTENTION

    def rope_for(self, layer: int) -> tuple[float, RopeScaling]:
        """(base, scaling) of a layer's RoPE: sliding layers with a base of their own use it unscaled, as
        Gemma 3 does (transformers' per-layer-type ``rope_parameters``, llama.cpp's ``freq_base_swa``)."""
        if self.is_sliding(layer) and self.rope_local_base_freq:
            return self.rope_local_base_freq, NO_SCALING
        return self.rope_theta, self.rope_scaling

    def with_updates(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """Field -> value, for display."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def layer_pattern(num_layers: int, every: int) -> tuple[str, ...]:
    """Sliding-window layers with every ``every``-th layer (1-based) full, as Gemma 2/3 interleave them."""
    return tuple(FULL_ATTENTION if (i + 1) % every == 0 else SLIDING_ATTENTION for i in range(num_layers))
