"""RoPE scalings: each named function against transformers' own, the config.json and GGUF spellings, and
the layers each RoPE applies to.

The end-to-end checks of every scaling (a model's logits from safetensors and from llama.cpp's GGUF)
are in ``tests/test_arch_conversions.py``; here each function's frequencies are compared with
transformers' ``ROPE_INIT_FUNCTIONS`` (float32, equal to 1e-6 relative), and Phi-3's long factors,
which the tiny model's 40 positions never reach, run end to end past the original context.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from _arch_cases import CASES, hf_decode_logits, hf_folder
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import oxide
from oxide.config import FULL_ATTENTION, NO_SCALING, SLIDING_ATTENTION, ModelConfig, RopeScaling
from oxide.errors import ModelFormatError
from oxide.models.arch.rope_config import gguf_rope_scaling, hf_rope_fields
from oxide.models.rope import SCALINGS, llama3_divisors, plain_inv_freq

HEAD_DIM, THETA = 64, 10000.0


def hf_frequencies(config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    kind = config.rope_parameters["rope_type"]
    return ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"), seq_len=seq_len)


def ours(config, end: int) -> tuple[torch.Tensor, float]:
    """oxide's frequencies for the same config.json, read the way a model folder is."""
    fields = hf_rope_fields(config.to_dict(), "config.json")
    return SCALINGS[fields["rope_scaling"].rope_type](HEAD_DIM, fields["rope_theta"], fields["rope_scaling"], end)


def llama_config(**rope: object) -> LlamaConfig:
    return LlamaConfig(hidden_size=HEAD_DIM * 4, num_attention_heads=4, max_position_embeddings=64,
                       rope_parameters={"rope_theta": THETA, **rope})


def assert_same(actual: tuple[torch.Tensor, float], expected: tuple[torch.Tensor, float]) -> None:
    torch.testing.assert_close(actual[0], expected[0].float(), rtol=1e-6, atol=0)
    assert actual[1] == pytest.approx(expected[1], rel=1e-12)


def test_linear_matches_transformers() -> None:
    config = llama_config(rope_type="linear", factor=4.0)
    assert_same(ours(config, 10), hf_frequencies(config))


def test_llama3_matches_transformers_in_all_three_bands() -> None:
    config = llama_config(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64)
    inv_freq = plain_inv_freq(HEAD_DIM, THETA)
    divisors = llama3_divisors(inv_freq, hf_rope_fields(config.to_dict(), "config.json")["rope_scaling"])
    assert (divisors == 1).any() and (divisors == 8).any() and ((divisors > 1) & (divisors < 8)).any()
    assert_same(ours(config, 10), hf_frequencies(config))


@pytest.mark.parametrize("end", [10, 64, 65, 200])
def test_dynamic_matches_transformers_before_and_past_the_context(end: int) -> None:
    config = llama_config(rope_type="dynamic", factor=2.0)
    assert_same(ours(config, end), hf_frequencies(config, seq_len=end))
    plain = (plain_inv_freq(HEAD_DIM, THETA), 1.0)
    if end <= 64:
        assert_same(ours(config, end), plain)
    else:
        assert (ours(config, end)[0] < plain[0])[1:].all()


@pytest.mark.parametrize("end", [100, 256, 257])
def test_longrope_matches_transformers_with_short_and_long_factors(end: int) -> None:
    with warnings.catch_warnings():   # transformers suggests `factor` over original_max_position_embeddings
        warnings.simplefilter("ignore")
        config = Phi3Config(hidden_size=HEAD_DIM * 4, num_attention_heads=4, max_position_embeddings=1024,
                            original_max_position_embeddings=256,
                            rope_parameters={"rope_type": "longrope", "rope_theta": THETA,
                                             "short_factor": [1 + 0.01 * i for i in range(HEAD_DIM // 2)],
                                             "long_factor": [1 + 0.3 * i for i in range(HEAD_DIM // 2)]})
    inv_freq, factor = ours(config, end)
    assert factor == pytest.approx((1 + torch.log(torch.tensor(4.0)) / torch.log(torch.tensor(256.0))).sqrt().item())
    assert_same((inv_freq, factor), hf_frequencies(config, seq_len=end))


@pytest.mark.parametrize("rope", [
    {"factor": 4.0, "original_max_position_embeddings": 16},                                        # Qwen 2.5 style
    {"factor": 40.0, "original_max_position_embeddings": 16, "mscale": 0.707, "mscale_all_dim": 0.707,
     "beta_fast": 32, "beta_slow": 1},                                                              # DeepSeek style
    {"factor": 8.0, "original_max_position_embeddings": 32, "attention_factor": 1.3, "truncate": False},
], ids=["plain", "mscales", "given-factor-untruncated"])
def test_yarn_matches_transformers(rope: dict) -> None:
    config = llama_config(rope_type="yarn", **rope)
    assert_same(ours(config, 10), hf_frequencies(config))
    inv_freq, _ = ours(config, 10)
    plain = plain_inv_freq(HEAD_DIM, THETA)
    assert inv_freq[0] == plain[0]                                                       # the fastest pair is kept
    torch.testing.assert_close(inv_freq[-2:], plain[-2:] / rope["factor"], rtol=1e-6, atol=0)   # slow ones stretched


def test_phi3_long_factors_end_to_end(tmp_path: Path) -> None:
    """Past the original context (256) a forward uses the long factors, as transformers does, both at once
    and in decode steps that cross the boundary (where the new positions switch to them)."""
    model = CASES["phi3"].build()
    loaded = oxide.load(hf_folder(model, tmp_path), device="cpu", n_ctx=300)
    ids = torch.randint(4, 300, (1, 262), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits[0]
    steps = [(0, 254)] + [(i, i + 1) for i in range(254, 262)]
    stepped = hf_decode_logits(model, ids, steps)[0]
    span = (expected.max() - expected.min()).item()
    assert (loaded.logits(ids[0].tolist()) - expected).abs().max().item() <= 1e-4 * span
    kv = loaded.lm.new_cache(300)
    decoded = torch.cat([loaded.lm.forward(ids[:, a:b], kv)[0] for a, b in steps])
    assert (decoded - stepped).abs().max().item() <= 1e-4 * span
    assert (stepped[-8:] - expected[-8:]).abs().max().item() > 1e-2 * span   # the switch matters here


def test_sliding_layers_with_their_own_base_are_not_scaled() -> None:
    """Gemma 3 (4B and larger): the linear scaling belongs to the full layers."""
    scaling = RopeScaling("linear", factor=8.0)
    config = ModelConfig(architecture="gemma3", vocab_size=10, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=2, sliding_window=4, rope_theta=1e6,
                         rope_local_base_freq=1e4, rope_scaling=scaling,
                         layer_types=(SLIDING_ATTENTION, SLIDING_ATTENTION, FULL_ATTENTION))
    assert [config.rope_for(i) for i in range(3)] == [(1e4, NO_SCALING), (1e4, NO_SCALING), (1e6, scaling)]
    shared = config.with_updates(rope_local_base_freq=0.0)    # Mistral, Phi-3: one RoPE for every layer
    assert {shared.rope_for(i) for i in range(3)} == {(1e6, scaling)}


def test_old_config_spellings() -> None:
    phi3 = {"max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
            "rope_scaling": {"type": "su", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}}
    scaling = hf_rope_fields(phi3, "config.json")["rope_scaling"]
    assert (scaling.rope_type, scaling.original_max_position_embeddings, scaling.long_factor) == (
        "longrope", 4096, (2.0,) * 4)
    assert scaling.attention_factor == pytest.approx((1 + torch.log(torch.tensor(32.0)).item() /
                                                      torch.log(torch.tensor(4096.0)).item()) ** 0.5)
    llama = {"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 2}}
    assert hf_rope_fields(llama, "config.json") == {"rope_theta": 5e5, "rope_scaling": RopeScaling("linear", factor=2.0)}


@pytest.mark.parametrize(("raw", "match"), [
    ({"rope_scaling": {"rope_type": "ntk-by-parts", "factor": 4}},
     "'ntk-by-parts' .*is not supported yet; supported: default"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, "'rope_scaling.original_max_position_embeddings' .*'yarn'"),   # no original context
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8}}, "'rope_scaling.low_freq_factor' is missing"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.75}},
     "partial_rotary_factor"),
])
def test_bad_config_rope_names_the_file(raw: dict, match: str) -> None:
    with pytest.raises(ModelFormatError, match=f"^/m/config.json: .*{match}"):
        hf_rope_fields({"max_position_embeddings": 64, **raw}, "/m/config.json")


def test_gguf_spellings() -> None:
    meta = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    assert gguf_rope_scaling(meta, "llama", {}, "f.gguf") == RopeScaling("linear", factor=4.0)
    assert gguf_rope_scaling({}, "llama", {"rope_freqs": (1.0, 8.0)}, "f.gguf") == RopeScaling(
        "freq_factors", factors=(1.0, 8.0))
    assert gguf_rope_scaling({}, "llama", {}, "f.gguf") == NO_SCALING
    phi3 = {"phi3.rope.scaling.original_context_length": 4096, "phi3.rope.scaling.attn_factor": 1.19}
    long = gguf_rope_scaling(phi3, "phi3", {"rope_factors_long": (2.0,), "rope_factors_short": (1.0,)}, "f.gguf")
    assert (long.rope_type, long.original_max_position_embeddings, long.attention_factor) == ("longrope", 4096, 1.19)
    older = {**phi3, "phi3.rope.scaling.type": "su"}      # the config.json alias is read here too
    assert gguf_rope_scaling(older, "phi3", {"rope_factors_long": (2.0,), "rope_factors_short": (1.0,)}, "f.gguf") == long
    with pytest.raises(ModelFormatError, match="f.gguf: RoPE scaling type 'ntk'"):
        gguf_rope_scaling({"llama.rope.scaling.type": "ntk"}, "llama", {}, "f.gguf")
    with pytest.raises(ModelFormatError, match="f.gguf: YaRN scaling without llama.rope.scaling.factor"):
        gguf_rope_scaling({"llama.rope.scaling.type": "yarn"}, "llama", {}, "f.gguf")
    yarn = {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
            "qwen2.rope.scaling.original_context_length": 32768}
    assert gguf_rope_scaling(yarn, "qwen2", {}, "f.gguf") == RopeScaling(
        "yarn", factor=4.0, original_max_position_embeddings=32768, attention_factor=0.1 * math.log(4.0) + 1.0)
    deepseek = {**yarn, "qwen2.rope.scaling.yarn_log_multiplier": 0.0707}   # the correction moves to the softmax
    assert gguf_rope_scaling(deepseek, "qwen2", {}, "f.gguf").attention_factor == 1.0
    with pytest.raises(ModelFormatError, match="f.gguf: has only one of rope_factors_long"):
        gguf_rope_scaling(phi3, "phi3", {"rope_factors_long": (2.0,)}, "f.gguf")
    with pytest.raises(ModelFormatError, match="original_context_length"):
        gguf_rope_scaling({}, "phi3", {"rope_factors_long": (2.0,), "rope_factors_short": (1.0,)}, "f.gguf")


def test_factor_counts_are_checked() -> None:
    with pytest.raises(ModelFormatError, match="short_factor must have head_dim / 2 = 16 entries, not 3"):
        ModelConfig(architecture="phi3", vocab_size=10, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, rope_scaling=RopeScaling("longrope", original_max_position_embeddings=8,
                                                                    short_factor=(1.0,) * 3, long_factor=(1.0,) * 16))


def test_scaling_is_shown_in_one_line() -> None:
    assert str(NO_SCALING) == "default"
    long = RopeScaling("longrope", original_max_position_embeddings=4096, short_factor=(1.0,) * 48,
                       long_factor=(2.0,) * 48, attention_factor=1.19)
    assert str(long) == ("longrope (original_max_position_embeddings=4096, attention_factor=1.19, "
                         "short_factor=48 values, long_factor=48 values)")
