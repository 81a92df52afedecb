"""DeepSeek's multi-head latent attention beyond the architecture cases (which check its logits against
transformers in a forward and in incremental decode): what its cache holds, and decode equal to the
full forward over a longer run."""

from __future__ import annotations

from pathlib import Path

import torch
from _arch_cases import CASES, hf_folder

import oxide

REL_TOL = 1e-4


def test_the_cache_holds_the_latent_and_the_shared_rope_key(tmp_path: Path) -> None:
    """Bytes per token and layer: (kv_lora_rank + qk_rope_head_dim) floats, against a plain cache's keys and
    values for every head, 2 * heads * (nope + rope) floats (values padded to the key width, as MHA would)."""
    lm = oxide.load(hf_folder(CASES["deepseek-v3"].build(), tmp_path), device="cpu", n_ctx=64).lm
    config, cache = lm.config, lm.new_cache(64)
    layer = cache.layers[0]
    per_token = (layer.k[0, :, 0].numel() + layer.v[0, :, 0].numel()) * layer.k.element_size()
    assert per_token == (config.kv_lora_rank + config.head_dim) * 4 == (192 + 32) * 4
    plain = config.num_attention_heads * (config.qk_nope_head_dim + config.head_dim + config.v_head_dim) * 4
    print(f"latent cache {per_token} B per token and layer, a plain KV cache {plain} B ({plain / per_token:.1f}x)")
    assert plain / per_token > 3


def test_decode_equals_the_full_forward(tmp_path: Path) -> None:
    lm = oxide.load(hf_folder(CASES["deepseek-v2"].build(), tmp_path), device="cpu", n_ctx=64).lm
    ids = torch.randint(4, 300, (1, 48), generator=torch.Generator().manual_seed(3))
    full = lm.forward(ids, lm.new_cache(64))
    cache = lm.new_cache(64)
    steps = torch.cat([lm.forward(ids[:, :5], cache)] + [lm.forward(ids[:, i:i + 1], cache) for i in range(5, 48)], 1)
    span = (full.max() - full.min()).item()
    assert (steps - full).abs().max().item() <= REL_TOL * span
    assert torch.equal(steps.argmax(-1), full.argmax(-1))
