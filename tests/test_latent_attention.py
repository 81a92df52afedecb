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


def test_a_quantized_deepseek_file_runs_close_to_transformers(tmp_path: Path) -> None:
    """llama.cpp's Q8_0 file (its k_b transposed and Q5_0-rounded, experts Q8_0) through oxide, against the
    unrounded model: as close as the rounding itself allows (transformers with its matrices rounded to Q8_0
    moves by KL 7e-3 on this tiny model)."""
    from _arch_cases import gguf_files

    from oxide.models.builder import build_from_gguf

    case = CASES["deepseek-v2"]
    model = case.build()
    path = gguf_files(case, hf_folder(model, tmp_path, bpe=True))["Q8_0"]
    lm = build_from_gguf(path, torch.device("cpu"), torch.float32)[1]
    ids = torch.randint(4, 300, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits[0].float()
    got = lm.forward(ids, lm.new_cache(64))[0]
    kl = (expected.log_softmax(-1).exp() * (expected.log_softmax(-1) - got.log_softmax(-1))).sum(-1).mean().item()
    top1 = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    print(f"deepseek-v2 Q8_0 vs transformers: top-1 {top1:.3f}, KL {kl:.2e}")
    assert top1 >= 0.95 and kl <= 2e-2
