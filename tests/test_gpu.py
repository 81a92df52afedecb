"""The same model on a GPU (skipped, by capability, where torch sees no CUDA device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import oxide

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TEXT = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined type."


@pytest.fixture(scope="module")
def cpu_logits(gemma_path: Path) -> torch.Tensor:
    model = oxide.load(gemma_path, device="cpu")
    return model.logits(model.encode_prompt(TEXT))


def test_default_policy_on_cuda(gemma_path: Path, cpu_logits: torch.Tensor) -> None:
    model = oxide.load(gemma_path)
    assert model.device.type == "cuda" and model.dtype in (torch.bfloat16, torch.float16)
    logits = model.logits(model.encode_prompt(TEXT)).cpu()
    agreement = (logits.argmax(-1) == cpu_logits.argmax(-1)).float().mean().item()
    assert agreement >= 0.9, agreement


def test_f32_on_cuda_matches_cpu(gemma_path: Path, cpu_logits: torch.Tensor) -> None:
    model = oxide.load(gemma_path, device="cuda", dtype="f32")
    logits = model.logits(model.encode_prompt(TEXT)).cpu()
    scale = cpu_logits.abs().max().item()
    torch.testing.assert_close(logits, cpu_logits, rtol=0, atol=2e-3 * scale)
    done = model.generate("The capital of France is", max_new_tokens=8, sampling=oxide.SamplingOptions.greedy())
    assert done.text.startswith(" the capital of the country of France")


def test_cuda_graph_decode_equals_eager_decode(gemma_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode steps replayed from a captured CUDA graph give the eager steps' tokens and logits."""
    from oxide.models.step import DecodeStep

    def decode(graphs: bool) -> list[torch.Tensor]:
        monkeypatch.setenv("OXIDE_CUDA_GRAPHS", "1" if graphs else "0")
        model = oxide.load(gemma_path, device="cuda", dtype="f32")
        cache = model.lm.new_cache(128)
        logits = model.lm.forward(torch.tensor([model.encode_prompt(TEXT)], device="cuda"), cache, last_only=True)[0, -1]
        step = DecodeStep(model.lm, cache)
        assert (step.graph is not None) == graphs
        out = []
        for _ in range(24):
            logits = step(int(logits.argmax())).clone()
            out.append(logits.cpu())
        assert not graphs or not step.graph.failed
        return out

    for eager, replayed in zip(decode(False), decode(True), strict=True):
        assert int(eager.argmax()) == int(replayed.argmax())
        torch.testing.assert_close(replayed, eager, rtol=0, atol=1e-3 * eager.abs().max().item())
