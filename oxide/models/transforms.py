"""Named load-time weight transforms. Each fixes a storage convention once so that ``forward``
never needs to know where the weights came from."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from ..quant import QuantTensor
from .weights import ModelWeights


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
