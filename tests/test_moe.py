"""Mixtures of experts beyond what every architecture's case covers (tests/test_arch_conversions.py):
dense and expert layers mixed, every expert used by the compared tokens, the router's variants, expert
counts that disagree with the config, and the decode step of a model whose routing runs in torch.

Tolerance as in test_arch_conversions: ``max|diff| <= 1e-4`` of the reference logits' range, same argmax.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _arch_cases import CASES, EXPERTS, TOKENS, build_qwen2moe, hf_decode_logits, hf_folder

import oxide
from oxide.models.blocks import MixtureOfExperts
from oxide.models.step import DecodeStep

REL_TOL = 1e-4
MOE_CASES = [pytest.param(CASES[name], id=name) for name in ("mixtral", "qwen2moe", "qwen3moe", "deepseek-v2",
                                                               "deepseek-v3")]


def ids_of(n: int) -> torch.Tensor:
    return torch.randint(4, 300, (1, n), generator=torch.Generator().manual_seed(11))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    span = (expected.max() - expected.min()).item()
    diff = (actual - expected).abs().max().item()
    assert diff <= REL_TOL * span, f"{what}: max |diff| {diff:.3g} > {REL_TOL} x logit range {span:.3g}"
    assert torch.equal(actual.argmax(-1), expected.argmax(-1)), f"{what}: argmax differs"


@torch.no_grad()
def test_dense_and_expert_layers_mixed(tmp_path: Path) -> None:
    """Qwen2-MoE with ``mlp_only_layers``: layer 1 is a dense MLP between two layers of experts."""
    model = build_qwen2moe(mlp_only_layers=(1,))
    loaded = oxide.load(hf_folder(model, tmp_path), device="cpu", n_ctx=64)
    assert [block.mlp.__class__.__name__ for block in loaded.lm.blocks] == \
        ["MixtureOfExperts", "GatedMLP", "MixtureOfExperts"]
    ids = ids_of(TOKENS)
    expected = model(input_ids=ids, use_cache=False).logits.float()
    assert_close(loaded.logits(ids[0].tolist())[None], expected, "mixed layers, forward")
    steps = [(0, 12)] + [(i, i + 1) for i in range(12, TOKENS)]
    cache = loaded.lm.new_cache(64)
    decoded = torch.cat([loaded.lm.forward(ids[:, a:b], cache) for a, b in steps], dim=1)
    assert_close(decoded, hf_decode_logits(model, ids, steps), "mixed layers, decode")


@pytest.mark.parametrize("case", MOE_CASES)
def test_the_compared_tokens_use_every_expert(case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """So that the architecture tests exercise every expert's weights (and the token grouping per expert)."""
    loaded = oxide.load(hf_folder(case.build(), tmp_path), device="cpu", n_ctx=64)
    used: dict[int, set[int]] = {}
    original = MixtureOfExperts.__call__

    def spying(self: MixtureOfExperts, x: torch.Tensor) -> torch.Tensor:
        _, chosen = self.route(self.router(x.reshape(-1, x.shape[-1])).float())
        used.setdefault(id(self), set()).update(chosen.unique().tolist())
        return original(self, x)

    monkeypatch.setattr(MixtureOfExperts, "__call__", spying)
    loaded.logits(ids_of(TOKENS)[0].tolist())
    experts = set(range(loaded.config.num_experts))
    assert used and all(picked == experts for picked in used.values()), used


def test_expert_counts_that_disagree_with_the_config_name_the_tensor(tmp_path: Path) -> None:
    folder = hf_folder(CASES["mixtral"].build(), tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_local_experts"] = EXPERTS + 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(oxide.ModelFormatError, match=r"block_sparse_moe\.gate\.weight' has shape \(5, 768\).*\(6, 768\)"):
        oxide.load(folder, device="cpu")


def test_a_missing_expert_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = hf_folder(CASES["qwen3moe"].build(), tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.experts.2.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(oxide.ModelFormatError, match=r"expert 2 of 'blk\.1\.ffn_up_exps\.weight' is missing"):
        oxide.load(folder, device="cpu")


def test_decode_steps_of_an_expert_model_run_the_python_forward(tmp_path: Path) -> None:
    """The router's top-k runs in torch, which a recorded step would not repeat: the step notices and runs
    the Python forward, with the same logits."""
    lm = oxide.load(hf_folder(CASES["mixtral"].build(), tmp_path), device="cpu", n_ctx=64).lm
    ids = ids_of(8)
    reference_cache, step_cache = lm.new_cache(64), lm.new_cache(64)
    want = lm.forward(ids, reference_cache, last_only=True)[0, -1]
    lm.forward(ids, step_cache, last_only=True)
    step = DecodeStep(lm, step_cache)
    for _ in range(4):
        token = int(want.argmax())
        got = step(token)
        want = lm.forward(torch.tensor([[token]]), reference_cache, last_only=True)[0, -1]
        assert torch.equal(got, want)
    assert not step.compiled
