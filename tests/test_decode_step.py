"""The compiled decode step (``oxide.models.step.DecodeStep``) against the model's Python forward.

A replayed step must give exactly the forward's logits, bit for bit (the same kernels run on the same
inputs), step after step: past a sliding window's ring, after the thread count changes, with biases
and qk-norm. The program's logits buffer is poisoned with NaN before each replay, so a replay that
skipped the head would fail. Where the forward cannot be recorded (dense float32 weights, which the
compiled core does not serve; a layer that adds with torch between the compiled calls) the step must
notice and run the Python forward, with the same results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from _arch_cases import build_gemma, build_gemma2, build_llama_dynamic, build_phi3
from _tiny_models import TINY_MODELS, random_ids
from transformers import PreTrainedModel

from oxide.ops import cpu, reference
from oxide.ops.cpu.program import NotRecordable, recording
from oxide.models.decoder import DecoderLM
from oxide.models.hf import build_from_hf_dir
from oxide.models.step import DecodeStep
from oxide.quant import GGMLType, QuantTensor

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the compiled CPU core oxide._cpu is not built")

CPU = torch.device("cpu")
MATRICES = ("q", "k", "v", "o", "gate", "up", "down")


def _q8(m: QuantTensor) -> QuantTensor:
    dense = m.dequantize(torch.float32).numpy()
    raw = gguf.quants.quantize(dense, GGMLType.Q8_0)
    return QuantTensor(torch.from_numpy(raw.reshape(-1).view(np.uint8)), GGMLType.Q8_0, tuple(m.shape))


def tiny_lm(name: str | Callable[[], PreTrainedModel], folder: Path, *, quantized: bool = True) -> DecoderLM:
    """A tiny transformers model (``TINY_MODELS[name]`` or a builder), saved and loaded by oxide; its matrices
    quantized to Q8_0 (which the compiled core serves) unless ``quantized`` is False (then they stay dense
    float32)."""
    build = TINY_MODELS[name].build if isinstance(name, str) else name
    build().save_pretrained(folder, safe_serialization=True)
    lm = build_from_hf_dir(folder, CPU, torch.float32)
    if not quantized:
        return lm
    w = lm.weights
    for layer in w.layers:
        for attr in MATRICES:
            setattr(layer, attr, _q8(getattr(layer, attr)))
    tied = w.output is w.embed
    w.embed = _q8(w.embed)
    w.output = w.embed if tied else _q8(w.output)
    return DecoderLM(lm.config, w, CPU, torch.float32)


def run_both(lm: DecoderLM, steps: int, prompt_len: int = 5, switch_threads_at: int | None = None) -> DecodeStep:
    """Feed the same tokens to ``lm.forward`` on one cache and to a DecodeStep on another, asserting equal logits."""
    ids = random_ids(prompt_len, seed=prompt_len, vocab=lm.config.vocab_size).view(1, -1)
    n_ctx = prompt_len + steps + 8
    reference_cache, step_cache = lm.new_cache(n_ctx), lm.new_cache(n_ctx)
    want = lm.forward(ids, reference_cache, last_only=True)[0, -1]
    lm.forward(ids, step_cache, last_only=True)
    step = DecodeStep(lm, step_cache)
    threads = torch.get_num_threads()
    tokens = random_ids(steps, seed=99, vocab=lm.config.vocab_size).view(-1).tolist()
    try:
        for i in range(steps):
            if i == switch_threads_at:
                torch.set_num_threads(1 if threads > 1 else 2)
            token = int(want.argmax()) if i % 2 else tokens[i]        # greedy and arbitrary tokens in turn
            if step._logits is not None:
                with torch.inference_mode():       # the forward made it, in inference mode
                    step._logits.fill_(float("nan"))
            got = step(token)
            want = lm.forward(torch.tensor([[token]]), reference_cache, last_only=True)[0, -1]
            assert torch.equal(got, want), f"step {i}: max |diff| {(got - want).abs().max().item():.3g}"
    finally:
        torch.set_num_threads(threads)
    assert step_cache.seq_len == reference_cache.seq_len == prompt_len + steps
    return step


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "gemma3"])
def test_replayed_steps_equal_the_forward(name: str, tmp_path: Path) -> None:
    """llama: plain; qwen2: q/k/v biases; qwen3: qk-norm; gemma3: embedding scale, sandwich norms and
    sliding layers whose 8-slot ring wraps several times in 30 steps."""
    step = run_both(tiny_lm(name, tmp_path), steps=30)
    assert step.compiled


@pytest.mark.parametrize("build,prompt_len", [(build_llama_dynamic, 5), (build_phi3, 250), (build_gemma, 5),
                                              (build_gemma2, 5)], ids=["llama-dynamic", "phi3-longrope", "gemma",
                                                                       "gemma2"])
def test_replayed_steps_follow_the_rope_scaling_and_caps(build, prompt_len: int, tmp_path: Path) -> None:
    """Dynamic NTK changes its frequencies at every step past 24 positions, and Phi-3's LongRoPE switches
    from its short to its long factors past 256 (with its attention factor on cos and sin): the replayed
    program reads the frequencies from the buffer the step rewrites. Gemma: embedding scale, GeGLU; Gemma 2:
    attention and final soft-caps, sliding window."""
    step = run_both(tiny_lm(build, tmp_path), steps=30 if prompt_len < 24 else 12, prompt_len=prompt_len)
    assert step.compiled


def test_a_thread_count_change_records_again(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    step = run_both(tiny_lm("gemma3", tmp_path), steps=12, switch_threads_at=6)
    assert step.compiled and step._threads == (1 if threads > 1 else 2)


def test_dense_weights_run_the_python_forward(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """float32 matrices go to torch's F.linear, which a replay would not repeat."""
    with caplog.at_level(logging.INFO, logger="oxide.step"):
        step = run_both(tiny_lm("llama", tmp_path, quantized=False), steps=6)
    assert not step.compiled
    assert "computed between the compiled calls" in caplog.text


def test_oxide_impl_torch_runs_the_python_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """With every op on the reference, the recording holds no call that writes the logits."""
    monkeypatch.setenv("OXIDE_IMPL", "torch")
    with caplog.at_level(logging.INFO, logger="oxide.step"):
        step = run_both(tiny_lm("gemma3", tmp_path), steps=4)
    assert not step.compiled
    assert "computed between the compiled calls" in caplog.text or "not written by the compiled core" in caplog.text


def test_a_torch_op_between_compiled_calls_stops_the_recording(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    lm = tiny_lm("qwen3", tmp_path)
    for block in lm.blocks:   # the residual add in torch: its output feeds the next compiled norm
        block.ops = type(block.ops)(**{**vars(block.ops), "add": reference.add})
    with caplog.at_level(logging.INFO, logger="oxide.step"):
        step = run_both(lm, steps=6)
    assert not step.compiled
    assert "rms_norm reads memory that torch's add computed" in caplog.text


def test_a_call_whose_result_goes_back_to_python_is_not_recordable() -> None:
    program = cpu.extension().StepProgram()
    x = torch.randn(10)
    with pytest.raises(NotRecordable, match="argmax"):
        with recording(program, {}):
            cpu.extension().argmax(x.data_ptr(), 10)
    assert len(program) == 0
    assert cpu.extension() is cpu._load()[0]          # the module again, not the recorder


@pytest.mark.parametrize("write", [
    lambda x: x.add_(1.0),                       # an in-place op
    lambda x: x.__setitem__(0, 1.0),             # item assignment
    lambda x: x.__imul__(2.0),                   # an augmented assignment
    lambda x: torch.mul(x, 2.0, out=x),          # an out= argument
], ids=["add_", "setitem", "imul", "out="])
def test_the_recorder_notices_torch_writing_what_a_compiled_call_reads(write) -> None:
    x, out = torch.randn(64), torch.empty(64)
    with pytest.raises(NotRecordable, match="scale reads memory"):
        with recording(cpu.extension().StepProgram(), {}):
            write(x)
            cpu.extension().scale(x.data_ptr(), out.data_ptr(), 64, 2.0, 1)


def test_views_and_allocations_are_recorded_as_they_are() -> None:
    """Views of a buffer made before recording, and outputs allocated inside it, are fine: a replay
    rewrites the outputs from the buffer's current contents."""
    x = torch.randn(8, 8)
    program = cpu.extension().StepProgram()
    with recording(program, {}) as recorded:
        out = torch.empty(64)
        cpu.extension().scale(x.view(-1).data_ptr(), out.data_ptr(), 64, 2.0, 1)
    assert len(program) == 1 and any(t is out for t in recorded.kept)
    x.copy_(torch.randn(8, 8))
    program.run()
    assert torch.equal(out, x.view(-1) * 2.0)


@pytest.mark.parametrize(("name", "impl"), [("llama", "cpp"), ("llama", "torch"), ("gemma3", "cpp"),
                                            ("gemma3", "torch"), ("deepseek-v3", "torch")])
def test_static_cache_views_give_the_same_logits(name: str, impl: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA graph's decode step attends over every slot of the cache, the empty ones masked by their
    position (``KVCache.use_static_views``): the same logits as over the slots in use, for full layers,
    Gemma 3's wrapping rings and DeepSeek's latent cache, with the compiled and the reference attention."""
    from _arch_cases import CASES

    from oxide.ops import dispatch

    monkeypatch.setenv("OXIDE_IMPL", impl)
    dispatch._RESOLVED.clear()
    latent = name in CASES                       # its matrices stay dense: tiny_lm quantizes those of plain attention
    lm = tiny_lm(CASES[name].build if latent else name, tmp_path, quantized=not latent)
    ids = random_ids(5, seed=3, vocab=lm.config.vocab_size).view(1, -1)
    plain, static = lm.new_cache(24), lm.new_cache(24)
    static.use_static_views()
    for cache in (plain, static):
        lm.forward(ids, cache)
    for token in random_ids(12, seed=4, vocab=lm.config.vocab_size).view(-1).tolist():   # gemma3: a ring of 8
        want = lm.forward(torch.tensor([[token]]), plain, last_only=True)[0, -1]
        got = lm.forward(torch.tensor([[token]]), static, last_only=True)[0, -1]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    dispatch._RESOLVED.clear()
