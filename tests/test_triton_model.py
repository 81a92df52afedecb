"""Whole models through the Triton kernels, under Triton's interpreter on the CPU: what a CUDA device runs.

``OXIDE_IMPL=triton`` binds every op the Triton kernels implement (the quantized projections, the gated
MLP fused with its activation, every expert of a mixture in one launch, RoPE, attention) and leaves the
others (norms, the residual add, the embedding rows) to the reference, as a CUDA device would. A prompt,
then single tokens through the KV cache: the float32 logits equal the reference forward's
(``OXIDE_IMPL=torch``) to 1e-4 of their range, with the same argmax. The models are tiny (hidden 64) so
that the interpreter takes seconds: plain Llama, Gemma 3 (sliding layers whose ring wraps) and a
Qwen3-MoE with four experts, every matrix but the router Q8_0.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from _tiny_models import _common, _randomize, random_ids
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from oxide.models.decoder import DecoderLM
from oxide.models.hf import build_from_hf_dir
from oxide.ops import dispatch, triton_kernels
from oxide.quant import GGMLType, QuantTensor

pytestmark = pytest.mark.skipif(not triton_kernels.importable(), reason="triton is not installed")

CPU = torch.device("cpu")
PROMPT, STEPS = 6, 4             # gemma3's ring has 8 slots: the steps wrap it


def _q8(m: QuantTensor | torch.Tensor) -> QuantTensor:
    dense = (m.dequantize(torch.float32) if isinstance(m, QuantTensor) else m.float()).numpy()
    raw = gguf.quants.quantize(dense, GGMLType.Q8_0)
    return QuantTensor(torch.from_numpy(raw.reshape(-1).view(np.uint8)), GGMLType.Q8_0, tuple(dense.shape))


def _tiny_moe():
    config = Qwen3MoeConfig(**_common(num_hidden_layers=2, head_dim=32, num_experts=4, num_experts_per_tok=2,
                                      moe_intermediate_size=64, norm_topk_prob=True, use_sliding_window=False,
                                      tie_word_embeddings=False))
    return _randomize(Qwen3MoeForCausalLM(config), seed=21, norm_center=1.0)


def _quantized_lm(name: str, folder: Path) -> DecoderLM:
    """The tiny model with every matrix (experts stacked) Q8_0, except the router."""
    from _tiny_models import TINY_MODELS

    (TINY_MODELS[name].build if name in TINY_MODELS else _tiny_moe)().save_pretrained(folder)
    lm = build_from_hf_dir(folder, CPU, torch.float32)
    w = lm.weights
    for layer in w.layers:
        for attr in ("q", "k", "v", "o", "gate", "up", "down"):
            if getattr(layer, attr, None) is not None:
                setattr(layer, attr, _q8(getattr(layer, attr)))
        if layer.experts is not None:
            for attr in ("gate", "up", "down"):
                setattr(layer.experts, attr, _q8(getattr(layer.experts, attr)))
    tied = w.output is w.embed
    w.embed = _q8(w.embed)
    w.output = w.embed if tied else _q8(w.output)
    return DecoderLM(lm.config, w, CPU, torch.float32)


def _logits(name: str, folder: Path, impl: str, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, DecoderLM]:
    monkeypatch.setenv("OXIDE_IMPL", impl)
    dispatch._RESOLVED.clear()
    lm = _quantized_lm(name, folder)
    cache = lm.new_cache(PROMPT + STEPS)
    ids = random_ids(PROMPT + STEPS, seed=5, vocab=lm.config.vocab_size).view(1, -1)
    out = [lm.forward(ids[:, :PROMPT], cache)]
    out += [lm.forward(ids[:, i:i + 1], cache) for i in range(PROMPT, PROMPT + STEPS)]
    dispatch._RESOLVED.clear()
    return torch.cat(out, dim=1)[0], lm


@pytest.mark.parametrize("name", ["llama", "gemma3", "qwen3moe"])
def test_the_triton_kernels_run_the_model(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want, _ = _logits(name, tmp_path / "torch", "torch", monkeypatch)
    got, lm = _logits(name, tmp_path / "triton", "triton", monkeypatch)
    mlp = lm.blocks[0].mlp
    fused = mlp.experts_gate_up if hasattr(mlp, "experts_gate_up") else mlp.gate_up
    assert fused.impl.__module__ == "oxide.kernels.quant_ops" and lm.ops.attention.__module__ == "oxide.kernels.attention"
    span = (want.max() - want.min()).item()
    diff = (got - want).abs().max().item()
    assert diff <= 1e-4 * span, f"{name}: max |diff| {diff:.3g} > 1e-4 x range {span:.3g}"
    assert torch.equal(got.argmax(-1), want.argmax(-1))
