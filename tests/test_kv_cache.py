"""The KV cache: incremental decoding equals one full forward.

Each architecture's tiny random model (``tests/_tiny_models.py``) is converted to an F32 GGUF and
loaded with ``build_from_gguf``. A sequence is fed as a prefix then single tokens, and in uneven
chunks; the logits of every position must equal those of one forward over the whole sequence
within ``ATOL = 1e-5`` (float32). The Gemma 3 case (window 8, 40 tokens) crosses the sliding
window several times, so the bounded sliding-layer buffers are exercised, and is also compared
with transformers on the whole sequence (``max|diff| <= 1e-4 * max|logit|``, equal argmax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from _tiny_models import GEMMA_WINDOW, TINY_MODELS, hf_logits, random_ids, write_gguf
from transformers import PreTrainedModel

from oxide.cache import KVCache
from oxide.errors import ContextOverflowError
from oxide.models.builder import build_from_gguf
from oxide.models.decoder import DecoderLM
from oxide.registry import ARCHITECTURES, ArchSpec

ATOL = 1e-5
HF_REL_TOL = 1e-4
N_CTX = 64
CPU = torch.device("cpu")

# the architectures whose GGUF tests/_tiny_models.py writes; tests/test_arch_conversions.py decodes every one
SPEC_PARAMS = [pytest.param(spec, id=spec.name) for spec in ARCHITECTURES if spec.name in TINY_MODELS]
# (prefix then one token at a time) and (uneven chunks); each sums to its sequence length.
SCHEDULES_30 = {"prefill-then-single": [12] + [1] * 18, "uneven-chunks": [5, 1, 3, 7, 2, 1, 11]}
SCHEDULES_40 = {"prefill-then-single": [9] + [1] * 31, "uneven-chunks": [5, 1, 3, 7, 2, 1, 11, 4, 6]}

Loaded = tuple[PreTrainedModel, DecoderLM]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Loaded]:
    """name -> (transformers model, oxide model from its F32 GGUF), built once per module."""
    cache: dict[str, Loaded] = {}

    def get(name: str) -> Loaded:
        if name not in cache:
            model = TINY_MODELS[name].build()
            path = write_gguf(model, Path(tmp_path_factory.mktemp(name)) / f"tiny-{name}.gguf")
            _, oxide_model = build_from_gguf(path, CPU, torch.float32)
            cache[name] = (model, oxide_model)
        return cache[name]

    return get


def run_in_chunks(model: DecoderLM, ids: torch.Tensor, chunks: Sequence[int], cache: KVCache) -> torch.Tensor:
    """Feed ``ids`` (1, T) chunk by chunk through one cache; returns the logits of all positions (1, T, V)."""
    assert sum(chunks) == ids.shape[1]
    outputs, start = [], 0
    for size in chunks:
        outputs.append(model.forward(ids[:, start:start + size], cache))
        start += size
        assert cache.seq_len == start
    return torch.cat(outputs, dim=1)


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= ATOL, f"{what}: max |diff| {diff:.3g} > {ATOL}"


@pytest.mark.parametrize("schedule", list(SCHEDULES_30))
@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_incremental_decoding_matches_full_forward(spec: ArchSpec, schedule: str, loaded) -> None:
    _, model = loaded(spec.name)
    ids = random_ids(30, seed=300 + len(spec.name))
    full = model.forward(ids, model.new_cache(N_CTX))
    incremental = run_in_chunks(model, ids, SCHEDULES_30[schedule], model.new_cache(N_CTX))
    assert_same_logits(incremental, full, f"{spec.name} {schedule}")


@pytest.mark.parametrize("schedule", list(SCHEDULES_40))
def test_gemma3_sliding_window_cache_across_many_windows(schedule: str, loaded) -> None:
    hf_model, model = loaded("gemma3")
    config = model.config
    assert config.sliding_window == GEMMA_WINDOW
    assert {config.is_sliding(i) for i in range(config.num_hidden_layers)} == {True, False}
    ids = random_ids(40, seed=400)                      # 5 windows long

    full = model.forward(ids, model.new_cache(N_CTX))
    cache = model.new_cache(N_CTX)
    incremental = run_in_chunks(model, ids, SCHEDULES_40[schedule], cache)
    assert_same_logits(incremental, full, f"gemma3 {schedule}")

    for i, layer in enumerate(cache.layers):            # sliding layers hold a window of positions, full ones n_ctx
        capacity = GEMMA_WINDOW if config.is_sliding(i) else N_CTX
        assert layer.k.shape[2] == layer.v.shape[2] == capacity
        assert layer.length == min(capacity, 40)
        assert sorted(layer.pos[:layer.length].tolist()) == list(range(40 - layer.length, 40))

    expected = hf_logits(hf_model, ids)
    scale, diff = expected.abs().max().item(), (incremental - expected).abs().max().item()
    assert diff <= HF_REL_TOL * scale, f"gemma3 {schedule} vs transformers: {diff:.3g} > {HF_REL_TOL} x {scale:.3g}"
    assert torch.equal(incremental.argmax(-1), expected.argmax(-1))


def test_window_matters_for_the_gemma3_case(loaded) -> None:
    """The case above is not vacuous: the same weights with no effective window agree on the first
    window and differ past it."""
    _, model = loaded("gemma3")
    unwindowed = DecoderLM(model.config.with_updates(sliding_window=N_CTX), model.weights, CPU, torch.float32)
    ids = random_ids(40, seed=400)
    windowed_logits = model.forward(ids, model.new_cache(N_CTX))
    unwindowed_logits = unwindowed.forward(ids, unwindowed.new_cache(N_CTX))
    assert_same_logits(windowed_logits[:, :GEMMA_WINDOW], unwindowed_logits[:, :GEMMA_WINDOW], "first window")
    assert (windowed_logits[:, GEMMA_WINDOW:] - unwindowed_logits[:, GEMMA_WINDOW:]).abs().max().item() > 0.1


def test_context_overflow_raises_and_leaves_the_cache_usable(loaded) -> None:
    _, model = loaded("llama")
    ids = random_ids(20, seed=500)
    cache = model.new_cache(16)
    with pytest.raises(ContextOverflowError, match="exceed the context of 16"):
        model.forward(ids[:, :17], cache)
    assert cache.seq_len == 0
    model.forward(ids[:, :10], cache)
    model.forward(ids[:, 10:16], cache)                 # exactly full is allowed
    assert cache.seq_len == 16
    with pytest.raises(ContextOverflowError, match="cached 16 \\+ new 1"):
        model.forward(ids[:, 16:17], cache)
    assert cache.seq_len == 16
    with pytest.raises(ContextOverflowError):
        cache.positions_for(1, CPU)


def test_positions_continue_after_chunks_and_reset(loaded) -> None:
    _, model = loaded("qwen2")
    ids = random_ids(18, seed=600)
    cache = model.new_cache(N_CTX)
    first = run_in_chunks(model, ids[:, :9], [5, 1, 3], cache)
    assert cache.seq_len == 9
    assert cache.positions_for(4, CPU).tolist() == [9, 10, 11, 12]
    assert cache.seq_len == 9                           # asking for positions does not advance
    rest = model.forward(ids[:, 9:], cache)
    assert cache.seq_len == 18
    assert_same_logits(torch.cat((first, rest), dim=1), model.forward(ids, model.new_cache(N_CTX)), "qwen2 chunks")

    cache.reset()
    assert cache.seq_len == 0
    assert cache.positions_for(3, CPU).tolist() == [0, 1, 2]
    assert_same_logits(model.forward(ids[:, :9], cache), first, "qwen2 after reset")
