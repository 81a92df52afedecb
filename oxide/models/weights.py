"""The model's weights, gathered by role from a tensor source and checked against the config.

Roles are gguf-py's ``MODEL_TENSOR`` kinds, so the GGUF names come from gguf-py's own tables
(``TENSOR_NAMES``) rather than a hand-written list. Matrices stay :class:`QuantTensor`s (F32/F16
included); vectors (norms, biases) become dense float32 tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

from ..config import ModelConfig
from ..errors import ModelFormatError
from ..quant import QuantTensor

Matrix = QuantTensor
# A source answers (role, layer or None, suffix 'weight'|'bias') with a tensor, or None when absent.
TensorLookup = Callable[[MODEL_TENSOR, "int | None", str], "QuantTensor | None"]


def gguf_tensor_name(role: MODEL_TENSOR, layer: int | None, suffix: str) -> str:
    """gguf-py's name for a role, e.g. (ATTN_Q, 3, 'weight') -> 'blk.3.attn_q.weight'."""
    base = TENSOR_NAMES[role]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    q: Matrix | None                  # None (with k and v) under latent attention
    k: Matrix | None
    v: Matrix | None
    o: Matrix
    ffn_norm: torch.Tensor
    gate: Matrix | None
    up: Matrix | None                 # None (with gate and down) in a layer of experts
    down: Matrix | None
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    post_attn_norm: torch.Tensor | None = None
    post_ffn_norm: torch.Tensor | None = None
    experts: ExpertWeights | None = None
    latent: LatentWeights | None = None


@dataclass
class LatentWeights:
    """Multi-head latent attention (DeepSeek): queries from ``q`` (H * (nope + rope), D), or through a
    latent: ``q_b`` (H * (nope + rope), Rq) of ``q_a_norm``-normed ``q_a`` (Rq, D); ``kv_a`` (Rkv + rope, D)
    gives each token's latent (normed by ``kv_a_norm``) and shared RoPE key; ``kv_b`` (H * (nope + v), Rkv)
    expands latents into each head's plain key part and value, or (llama.cpp's files) its two parts:
    ``k_b`` (H, Rkv, nope), transposed, and ``v_b`` (H, v, Rkv)."""

    kv_a: Matrix
    kv_a_norm: torch.Tensor
    kv_b: Matrix | None = None
    k_b: Matrix | None = None
    v_b: Matrix | None = None
    q: Matrix | None = None
    q_a: Matrix | None = None
    q_a_norm: torch.Tensor | None = None
    q_b: Matrix | None = None

    def matrices(self) -> list[Matrix]:
        return [m for m in (self.kv_a, self.kv_b, self.k_b, self.v_b, self.q, self.q_a, self.q_b) if m is not None]


@dataclass
class ExpertWeights:
    """A mixture-of-experts MLP: the router (E, D) and each projection of all E experts stacked, as
    GGUF stores them: gate and up (E, F, D), down (E, D, F); optionally a shared expert (gate, up (S, D),
    down (D, S)) scaled by ``sigmoid(x . shared_router)``, shared_router (D,)."""

    router: Matrix
    gate: Matrix
    up: Matrix
    down: Matrix
    shared_gate: Matrix | None = None
    shared_up: Matrix | None = None
    shared_down: Matrix | None = None
    shared_router: torch.Tensor | None = None
    router_bias: torch.Tensor | None = None   # (E,), added to the scores that pick experts (DeepSeek V3)

    def matrices(self) -> list[Matrix]:
        return [m for m in (self.router, self.gate, self.up, self.down, self.shared_gate, self.shared_up,
                            self.shared_down) if m is not None]


@dataclass
class ModelWeights:
    embed: Matrix
    output: Matrix            # the same object as ``embed`` when embeddings are tied
    output_norm: torch.Tensor
    layers: list[LayerWeights]

    def move_matrices(self, device: torch.device) -> None:
        """Put every quantized matrix on ``device`` (tied head and embedding stay one object)."""
        for layer in self.layers:
            for name in ("q", "k", "v", "o", "gate", "up", "down"):
                if getattr(layer, name) is not None:
                    setattr(layer, name, getattr(layer, name).to(device))
            for part in (layer.experts, layer.latent):
                for name, value in vars(part).items() if part is not None else ():
                    if value is not None:
                        setattr(part, name, value.to(device))
        tied = self.output is self.embed
        self.embed = self.embed.to(device)
        self.output = self.embed if tied else self.output.to(device)

    def matrices(self) -> list[QuantTensor]:
        found = {id(self.embed): self.embed, id(self.output): self.output}
        for layer in self.layers:
            for m in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down):
                if m is not None:
                    found[id(m)] = m
            for part in (layer.experts, layer.latent):
                for m in part.matrices() if part is not None else ():
                    found[id(m)] = m
        return list(found.values())


class _Collector:
    """Fetches each role from the source and checks its shape, naming the tensor on a mismatch."""

    def __init__(self, lookup: TensorLookup, describe: Callable[[MODEL_TENSOR, int | None, str], str]) -> None:
        self.lookup = lookup
        self.describe = describe

    def get(self, role: MODEL_TENSOR, layer: int | None, shape: tuple[int, ...], *, suffix: str = "weight",
            required: bool = True, or_shape: tuple[int, ...] | None = None) -> QuantTensor | None:
        """The tensor of ``role``, of ``shape`` (or ``or_shape``, another layout of the same values)."""
        tensor = self.lookup(role, layer, suffix)
        name = self.describe(role, layer, suffix)
        if tensor is None:
            if required:
                raise ModelFormatError(f"tensor {name!r} is missing; the model file is incomplete or not of this architecture")
            return None
        if tuple(tensor.shape) not in (shape, or_shape):
            raise ModelFormatError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} but the model's metadata implies {shape}; "
                f"the file's metadata and tensors disagree"
            )
        return tensor

    def matrix(self, role: MODEL_TENSOR, layer: int | None, shape: tuple[int, int]) -> QuantTensor:
        return self.get(role, layer, shape)

    def vector(self, role: MODEL_TENSOR, layer: int | None, size: int, *, suffix: str = "weight",
               required: bool = True, row_ok: bool = False) -> torch.Tensor | None:
        """A dense float32 (size,) vector; ``row_ok``: also stored as a (1, size) matrix."""
        tensor = self.get(role, layer, (size,), suffix=suffix, required=required, or_shape=(1, size) if row_ok else None)
        return None if tensor is None else tensor.dequantize(torch.float32).reshape(size)


def collect_weights(config: ModelConfig, lookup: TensorLookup,
                    describe: Callable[[MODEL_TENSOR, int | None, str], str]) -> ModelWeights:
    """Gather every tensor the config calls for, checking shapes (PyTorch order, (out, in))."""
    c = _Collector(lookup, describe)
    T = MODEL_TENSOR
    D, F, hd = config.hidden_size, config.intermediate_size, config.head_dim
    nq, nkv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    layers = []
    latent = config.latent_attention
    if latent:
        nq = config.num_attention_heads * config.v_head_dim   # the output projection's input
    for i in range(config.num_hidden_layers):
        bias, moe = config.attention_bias and not latent, config.is_moe(i)
        layers.append(LayerWeights(
            attn_norm=c.vector(T.ATTN_NORM, i, D),
            q=None if latent else c.matrix(T.ATTN_Q, i, (nq, D)),
            k=None if latent else c.matrix(T.ATTN_K, i, (nkv, D)),
            v=None if latent else c.matrix(T.ATTN_V, i, (nkv, D)),
            o=c.matrix(T.ATTN_OUT, i, (D, nq)),
            latent=_latent(c, config, i) if latent else None,
            ffn_norm=c.vector(T.FFN_NORM, i, D),
            gate=None if moe else c.matrix(T.FFN_GATE, i, (F, D)),
            up=None if moe else c.matrix(T.FFN_UP, i, (F, D)),
            down=None if moe else c.matrix(T.FFN_DOWN, i, (D, F)),
            experts=_experts(c, config, i) if moe else None,
            q_bias=c.vector(T.ATTN_Q, i, nq, suffix="bias", required=bias),
            k_bias=c.vector(T.ATTN_K, i, nkv, suffix="bias", required=bias),
            v_bias=c.vector(T.ATTN_V, i, nkv, suffix="bias", required=bias),
            q_norm=c.vector(T.ATTN_Q_NORM, i, hd, required=config.qk_norm),
            k_norm=c.vector(T.ATTN_K_NORM, i, hd, required=config.qk_norm),
            post_attn_norm=c.vector(T.ATTN_POST_NORM, i, D, required=config.sandwich_norms),
            post_ffn_norm=c.vector(T.FFN_POST_NORM, i, D, required=config.sandwich_norms),
        ))
    embed = c.matrix(T.TOKEN_EMBD, None, (config.vocab_size, D))
    output = embed if config.tie_word_embeddings else c.matrix(T.OUTPUT, None, (config.vocab_size, D))
    return ModelWeights(
        embed=embed,
        output=output,
        output_norm=c.vector(T.OUTPUT_NORM, None, D),
        layers=layers,
    )


def _experts(c: _Collector, config: ModelConfig, layer: int) -> ExpertWeights:
    """Layer ``layer``'s router and stacked experts (and shared expert, where the config has one)."""
    T = MODEL_TENSOR
    D, E, F, S = config.hidden_size, config.num_experts, config.moe_intermediate_size, config.shared_expert_intermediate_size
    shared = S > 0
    # the shared expert's gate: (D,) in GGUF, a (1, D) matrix in config.json's checkpoints
    gated = shared and config.shared_expert_gated
    return ExpertWeights(
        router=c.matrix(T.FFN_GATE_INP, layer, (E, D)),
        gate=c.get(T.FFN_GATE_EXP, layer, (E, F, D)),
        up=c.get(T.FFN_UP_EXP, layer, (E, F, D)),
        down=c.get(T.FFN_DOWN_EXP, layer, (E, D, F)),
        shared_gate=c.matrix(T.FFN_GATE_SHEXP, layer, (S, D)) if shared else None,
        shared_up=c.matrix(T.FFN_UP_SHEXP, layer, (S, D)) if shared else None,
        shared_down=c.matrix(T.FFN_DOWN_SHEXP, layer, (D, S)) if shared else None,
        shared_router=c.vector(T.FFN_GATE_INP_SHEXP, layer, D, row_ok=True) if gated else None,
        router_bias=c.vector(T.FFN_EXP_PROBS_B, layer, E, suffix="bias", required=False),
    )


def _latent(c: _Collector, config: ModelConfig, layer: int) -> LatentWeights:
    """Layer ``layer``'s latent-attention projections (see :class:`LatentWeights`)."""
    T = MODEL_TENSOR
    D, H, rope, nope = config.hidden_size, config.num_attention_heads, config.head_dim, config.qk_nope_head_dim
    Rq, Rkv = config.q_lora_rank, config.kv_lora_rank
    q_rows = H * (nope + rope)
    kv_b = c.get(T.ATTN_KV_B, layer, (H * (nope + config.v_head_dim), Rkv), required=False)
    split = kv_b is None                                          # llama.cpp's two parts instead of kv_b
    return LatentWeights(
        kv_a=c.matrix(T.ATTN_KV_A_MQA, layer, (Rkv + rope, D)),
        kv_a_norm=c.vector(T.ATTN_KV_A_NORM, layer, Rkv),
        kv_b=kv_b,
        k_b=c.get(T.ATTN_K_B, layer, (H, Rkv, nope)) if split else None,
        v_b=c.get(T.ATTN_V_B, layer, (H, config.v_head_dim, Rkv)) if split else None,
        q=None if Rq else c.matrix(T.ATTN_Q, layer, (q_rows, D)),
        q_a=c.matrix(T.ATTN_Q_A, layer, (Rq, D)) if Rq else None,
        q_a_norm=c.vector(T.ATTN_Q_A_NORM, layer, Rq) if Rq else None,
        q_b=c.matrix(T.ATTN_Q_B, layer, (q_rows, Rq)) if Rq else None,
    )
