"""The real Gemma 3 270M Q4_K_M: detection, config, and outputs against transformers and llama.cpp."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

import oxide
from oxide.models.builder import gguf_config
from oxide.quant import qtype_name
from oxide.weights.gguf import GGUFFile

from _references import LONG_TAIL, GREEDY_TOKENS, References, load_references, mean_kl_terms
from conftest import oxide_test_cache


@pytest.fixture(scope="module")
def refs(gemma_path: Path) -> References:
    return load_references(gemma_path, oxide_test_cache())


@pytest.fixture(scope="module")
def our_logits(gemma, refs: References) -> list[torch.Tensor]:
    out = [gemma.logits(seq) for seq in refs.ids]
    out[-1] = out[-1][-LONG_TAIL:]
    return out


def test_detection_and_config(gemma_path: Path) -> None:
    with GGUFFile(gemma_path) as f:
        spec, config = gguf_config(f)
        types = Counter(qtype_name(t.qtype) for t in f.tensors.values())
    assert spec.name == "gemma3"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, config.sliding_window, config.vocab_size) == (18, 640, 4, 1, 256, 512, 262144)
    assert config.tie_word_embeddings and config.qk_norm and config.sandwich_norms
    assert config.layer_types.count("full_attention") == 3 and config.layer_types[5] == "full_attention"
    assert (config.rope_theta, config.rope_local_base_freq) == (1_000_000.0, 10_000.0)
    assert types == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}


def _agreement(ours: list[torch.Tensor], ref_top1: list[torch.Tensor]) -> float:
    hits = sum(int((o.argmax(-1) == r).sum()) for o, r in zip(ours, ref_top1))
    return hits / sum(len(r) for r in ref_top1)


def test_logits_match_transformers(our_logits: list[torch.Tensor], refs: References) -> None:
    """Against transformers (f32): with float32 activations, top-1 agreement >= 99% and mean KL <= 1e-3 over all
    positions; where the compiled core rounds activations to int8 as llama.cpp does, as close to transformers
    as llama.cpp itself is: mean KL no larger than llama.cpp's over the same positions, and top-1 agreement
    within a point of its (which near-ties fall either way is chance: a point is 3 of 293 positions)."""
    from oxide.ops import cpu

    agreement = _agreement(our_logits, [r.argmax(-1) for r in refs.hf_logits])
    kls = torch.cat([mean_kl_terms(r, o) for o, r in zip(our_logits, refs.hf_logits)])
    print(f"vs transformers: top-1 {agreement:.4f}, mean KL {kls.mean():.2e}, max KL {kls.max():.2e}, "
          f"{len(kls)} positions; llama.cpp: top-1 {refs.llama_hf_top1:.4f}, mean KL {refs.llama_hf_mean_kl:.2e}")
    if cpu.available() and cpu.extension().activations() == "q8_0":
        assert kls.mean() <= refs.llama_hf_mean_kl
        assert agreement >= refs.llama_hf_top1 - 0.01
    else:
        assert agreement >= 0.99
        assert kls.mean() <= 1e-3


def test_logits_match_llama_cpp(our_logits: list[torch.Tensor], refs: References) -> None:
    agreement = _agreement(our_logits, refs.llama_top1)
    print(f"vs llama.cpp: top-1 {agreement:.4f}")
    assert agreement >= 0.90


NEAR_TIE = 0.1   # logits: where transformers' top two are closer, rounding may pick either


def test_greedy_matches_transformers(gemma, refs: References) -> None:
    """oxide's greedy continuation equals transformers' (float32) up to the first step where they differ, and
    that step is a near tie in transformers' own logits: the int8 activations of the VNNI GEMV (as llama.cpp's)
    or float32 summation order may pick the other token only there."""
    for prompt, expected, margins in zip(refs.greedy_prompt_ids, refs.greedy_hf, refs.greedy_hf_margins):
        done = gemma.generate(prompt, max_new_tokens=GREEDY_TOKENS, sampling=oxide.SamplingOptions.greedy(),
                              ignore_eos=True)
        same = next((i for i, (a, b) in enumerate(zip(done.token_ids, expected)) if a != b), len(expected))
        print(f"greedy: {same} of {len(expected)} tokens equal; transformers' margins {[round(m, 3) for m in margins]}")
        assert same == len(expected) or margins[same] < NEAR_TIE, (
            f"greedy diverges from transformers at token {same}, where its margin is {margins[same]:.3f}: "
            f"{done.token_ids} vs {expected}")


def test_capital_of_france(gemma) -> None:
    """REFERENCES.md: llama.cpp continues with " the capital of the country of France. It is the largest city in
    France." Transformers (f32) and oxide agree for 15 tokens, then pick " and" where llama.cpp (which quantizes
    activations to 8 bits in its matmuls) picks "."."""
    prompt = "The capital of France is"
    assert gemma.encode_prompt(prompt) == [2, 818, 5279, 529, 7001, 563]
    done = gemma.generate(prompt, max_new_tokens=16, sampling=oxide.SamplingOptions.greedy())
    assert done.text.startswith(" the capital of the country of France. It is the largest city in France")
    assert done.finish_reason == "length" and len(done.token_ids) == 16
    assert done.stats.prompt_tokens == 6 and done.stats.decode_tokens_per_second > 0


def test_half_precision_policy_runs_close_to_f32(gemma_path: Path, our_logits: list[torch.Tensor],
                                                 refs: References) -> None:
    """The GPU dtypes also run on CPU (OXIDE_DTYPE / dtype=): bf16 keeps top-1 within a few percent of f32."""
    half = oxide.load(gemma_path, device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16
    short = [half.logits(seq) for seq in refs.ids[:-1]]
    assert all(l.dtype == torch.float32 for l in short)
    assert _agreement(short, [o.argmax(-1) for o in our_logits[:-1]]) >= 0.9


def test_the_compiled_core_runs_the_real_model(gemma) -> None:
    """Where the extension is built, every quantized matrix of the model goes through it (no f32 copies)."""
    from oxide.ops import cpu
    from oxide.ops.cpu import composed as cpu_composed
    from oxide.ops.cpu import quant as cpu_quant

    if not cpu.available():
        pytest.skip("the compiled CPU core is not built; the reference path is tested above")
    linears = [gemma.lm.head] + [lin for block in gemma.lm.blocks for lin in (block.attention.o_proj, block.mlp.down)]
    assert all(isinstance(lin.impl, cpu_quant.LinearKernel) for lin in linears)
    assert all(isinstance(block.attention.qkv_proj.impl, cpu_quant.GroupKernel) for block in gemma.lm.blocks)
    assert all(isinstance(block.mlp.gate_up.impl, cpu_composed.GatedKernel) for block in gemma.lm.blocks)
    assert not any(m.has_dense() for m in gemma.lm.weights.matrices())


def test_compiled_decode_steps_equal_the_forward_past_the_sliding_window(gemma, seed: int) -> None:
    """The recorded decode step replays the real model bit for bit, across the wrap of its 512-slot rings."""
    from oxide.models.step import DecodeStep
    from oxide.ops import cpu

    if not cpu.available():
        pytest.skip("the compiled CPU core is not built")
    lm = gemma.lm
    window = lm.config.sliding_window
    prompt = torch.randint(100, 20000, (1, window - 4), generator=torch.Generator().manual_seed(seed))
    reference_cache, step_cache = lm.new_cache(window + 16), lm.new_cache(window + 16)
    want = lm.forward(prompt, reference_cache, last_only=True)[0, -1]
    lm.forward(prompt, step_cache, last_only=True)
    step = DecodeStep(lm, step_cache)
    for i in range(10):                              # positions window-4 .. window+5: the rings wrap at window
        token = int(want.argmax())
        got = step(token)
        want = lm.forward(torch.tensor([[token]]), reference_cache, last_only=True)[0, -1]
        assert torch.equal(got, want), f"step {i}: max |diff| {(got - want).abs().max().item():.3g}"
    assert step.compiled
