"""Named load-time weight transforms. Each fixes a storage convention once so that ``forward``
never needs to know where the weights came from."""

from __future__ import annotations

from collections.abc import Callable

import torch
from gguf.constants import MODEL_TENSOR

from ..config import ModelConfig
from ..errors import ModelFormatError
from ..quant import QuantTensor
from .weights import ModelWeights, TensorLookup


def _unpermute_rows(w: QuantTensor, n_heads: int) -> QuantTensor:
    """Undo llama.cpp's conversion permutation of Q/K rows.

    The converter stores, per head, row ``s * (hd/2) + j`` (s in {0, 1}) at position ``2j + s``, so
    that ggml's adjacent-pair RoPE matches Hugging Face's half-split RoPE. Rows hold whole blocks,
    so the quantized bytes are permuted as they are.
    """
    rows = w.data.shape[0]
    data = w.data.reshape(n_heads, rows // n_heads // 2, 2, -1).transpose(1, 2).reshape(rows, -1)
    return QuantTensor(data.contiguous(), w.qtype, w.shape, name=w.name)


def unpermute_qk(weights: ModelWeights, config: ModelConfig) -> None:
    """GGUF Llama-family Q/K projections -> half-split RoPE order (see :func:`_unpermute_rows`)."""
    for layer in weights.layers:
        layer.q = _unpermute_rows(layer.q, config.num_attention_heads)
        layer.k = _unpermute_rows(layer.k, config.num_key_value_heads)
        for name, heads in (("q_bias", config.num_attention_heads), ("k_bias", config.num_key_value_heads)):
            bias = getattr(layer, name)
            if bias is not None:
                setattr(layer, name, bias.reshape(heads, -1, 2).transpose(1, 2).reshape(-1).contiguous())


def fold_norm_offset(weights: ModelWeights, config: ModelConfig) -> None:
    """Norms that multiply by ``(offset + w)`` (Gemma's ``1 + w``) get ``offset`` added to ``w`` once."""
    if config.norm_offset == 0.0:
        return
    for layer in weights.layers:
        for name in ("attn_norm", "ffn_norm", "q_norm", "k_norm", "post_attn_norm", "post_ffn_norm"):
            value = getattr(layer, name)
            if value is not None:
                setattr(layer, name, value + config.norm_offset)
    weights.output_norm = weights.output_norm + config.norm_offset


def cast_vectors(weights: ModelWeights, device: torch.device) -> None:
    """Move the dense vectors (norms, biases, RoPE factors) to the model's device (kept float32)."""
    for layer in weights.layers:
        for name, value in vars(layer).items():
            if isinstance(value, torch.Tensor):
                setattr(layer, name, value.to(device))
    weights.output_norm = weights.output_norm.to(device)


# --- fused projections, split as the tensors are looked up ----------------------------------------

Describe = Callable[[MODEL_TENSOR, "int | None", str], str]
# (lookup, describe, config) -> the same source with one storage convention undone.
SourceTransform = Callable[[TensorLookup, Describe, ModelConfig], tuple[TensorLookup, Describe]]


def _row_slice(w: QuantTensor, start: int, stop: int) -> QuantTensor:
    """Rows ``start:stop`` of a matrix: whole rows of blocks, so a view of the quantized bytes."""
    return QuantTensor(w.data[start:stop], w.qtype, (stop - start, *w.shape[1:]), name=f"{w.name}[{start}:{stop}]")


def _split_rows(fused: MODEL_TENSOR, ranges: dict[MODEL_TENSOR, tuple[int, int]], lookup: TensorLookup,
                describe: Describe) -> tuple[TensorLookup, Describe]:
    """The source with each role of ``ranges`` (role -> its row range) served from the rows of one ``fused`` matrix."""
    rows = max(stop for _, stop in ranges.values())

    def split_lookup(role: MODEL_TENSOR, layer: int | None, suffix: str) -> QuantTensor | None:
        if role not in ranges or suffix != "weight":
            return lookup(role, layer, suffix)
        whole = lookup(fused, layer, suffix)
        if whole is None:
            return None         # the collector reports it missing, named by split_describe
        if whole.shape[0] != rows:
            raise ModelFormatError(
                f"tensor {describe(fused, layer, suffix)!r} has {whole.shape[0]} rows but the model's config "
                f"implies {rows} ({' + '.join(str(b - a) for a, b in ranges.values())}, fused); the file's "
                f"metadata and tensors disagree")
        return _row_slice(whole, *ranges[role])

    def split_describe(role: MODEL_TENSOR, layer: int | None, suffix: str) -> str:
        if role in ranges and suffix == "weight":
            return f"{describe(fused, layer, suffix)} (fused; the rows of {role.name.lower()})"
        return describe(role, layer, suffix)

    return split_lookup, split_describe


def split_qkv(lookup: TensorLookup, describe: Describe, config: ModelConfig) -> tuple[TensorLookup, Describe]:
    """Phi-3: one ``qkv_proj`` (GGUF ``attn_qkv``) holds the q rows, then k, then v."""
    nq = config.num_attention_heads * config.head_dim
    nkv = config.num_key_value_heads * config.head_dim
    ranges = {MODEL_TENSOR.ATTN_Q: (0, nq), MODEL_TENSOR.ATTN_K: (nq, nq + nkv),
              MODEL_TENSOR.ATTN_V: (nq + nkv, nq + 2 * nkv)}
    return _split_rows(MODEL_TENSOR.ATTN_QKV, ranges, lookup, describe)


def split_gate_up(lookup: TensorLookup, describe: Describe, config: ModelConfig) -> tuple[TensorLookup, Describe]:
    """Phi-3: one ``gate_up_proj`` (GGUF ``ffn_up``, 2 x intermediate rows) holds the gate rows, then the up rows."""
    F = config.intermediate_size
    ranges = {MODEL_TENSOR.FFN_GATE: (0, F), MODEL_TENSOR.FFN_UP: (F, 2 * F)}
    return _split_rows(MODEL_TENSOR.FFN_UP, ranges, lookup, describe)


# --- interleaved RoPE rows (DeepSeek), reordered as they are looked up -----------------------------

def _rope_rows_halved(w: QuantTensor, starts: list[int], rope: int) -> QuantTensor:
    """``w`` with each run of ``rope`` rows from ``starts`` reordered even rows first, then odd ones."""
    order = torch.arange(w.shape[0])
    pairs = torch.cat((torch.arange(0, rope, 2), torch.arange(1, rope, 2)))
    for start in starts:
        order[start:start + rope] = start + pairs
    return QuantTensor(w.data.index_select(0, order), w.qtype, w.shape, name=w.name)


def deinterleave_rope(lookup: TensorLookup, describe: Describe, config: ModelConfig) -> tuple[TensorLookup, Describe]:
    """DeepSeek's checkpoints rotate adjacent pairs (x0, x1), (x2, x3), ... of each head's RoPE part. The rows
    producing those dimensions (of the queries and of the shared RoPE key) are reordered even dimensions
    first, so that oxide's half-split RoPE rotates the same pairs; queries and keys move alike, so their
    dot products are unchanged."""
    heads, nope, rope = config.num_attention_heads, config.qk_nope_head_dim, config.head_dim
    query_starts = [h * (nope + rope) + nope for h in range(heads)]
    rows = {MODEL_TENSOR.ATTN_Q: query_starts, MODEL_TENSOR.ATTN_Q_B: query_starts,
            MODEL_TENSOR.ATTN_KV_A_MQA: [config.kv_lora_rank]}

    def halved_lookup(role: MODEL_TENSOR, layer: int | None, suffix: str) -> QuantTensor | None:
        w = lookup(role, layer, suffix)
        if w is None or role not in rows or suffix != "weight" or w.shape[0] < max(rows[role]) + rope:
            return w                 # absent or of the wrong size: the collector names it
        return _rope_rows_halved(w, rows[role], rope)

    return halved_lookup, describe
