"""Every registered architecture, from safetensors and from GGUF files written by llama.cpp, against
transformers and llama.cpp.

Each case of ``tests/_arch_cases.py`` (one per architecture, several for Llama's RoPE scalings) is a
tiny random transformers model saved as a Hugging Face folder without ``tokenizer.json`` (so it also
loads the way a weights-only folder does), and its GGUF files from llama.cpp's converter (F16, Q8_0)
and quantizer (Q4_K_M, from the F16 file). Checks, float32 on CPU, ``range`` = max - min of the reference
logits:

* safetensors vs transformers, one forward and incremental decode (a prefill then one token at a time):
  ``max|diff| <= 1e-4 * range`` and the same argmax;
* F16 GGUF vs transformers, forward and decode: the same bound (the tiny weights are float16 values, so
  F16 is lossless);
* every GGUF vs llama.cpp running the same file: top-1 agreement >= 95% and mean KL(llama.cpp || oxide)
  under a per-type bound. llama.cpp also rounds activations (to f16 for F16 weights, to 8 bits for the
  quantized types), which is most of what these measure.

Where the converter or llama.cpp's runtime cannot hold the model over all positions, the case names
the reason and the positions compared.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _arch_cases import (CASES, GGUF_KINDS, TOKENS, VOCAB, Case, build_mistral3, gguf_files, hf_decode_logits,
                         hf_folder)
from transformers import PreTrainedModel

import oxide
from oxide.models.builder import build_from_gguf
from oxide.models.decoder import DecoderLM
from oxide.registry import ARCHITECTURES, ArchSpec, detect_gguf, supported_names
from oxide.weights.gguf import GGUFFile

REL_TOL = 1e-4
TOP1_MIN = 0.95
KL_MAX = {"F16": 1e-4, "Q8_0": 5e-3, "Q4_K_M": 2e-2}
N_CTX = 64
PREFILL = 12                     # incremental decode: this many tokens at once, then one at a time
CPU = torch.device("cpu")
CASE_PARAMS = [pytest.param(case, id=case.name) for case in CASES.values()]
GGUF_PARAMS = [pytest.param(case, kind, id=f"{case.name}-{kind}") for case in CASES.values() for kind in GGUF_KINDS]


pytestmark = pytest.mark.usefixtures("quiet_transformers")


Built = tuple[PreTrainedModel, Path]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Case], Built]:
    """case -> (transformers model, its Hugging Face folder), once per module."""
    done: dict[str, Built] = {}

    def get(case: Case) -> Built:
        if case.name not in done:
            model = case.build()
            done[case.name] = (model, hf_folder(model, tmp_path_factory.mktemp(case.name), bpe=case.bpe_pre is not None))
        return done[case.name]

    return get


def ids_of(n: int) -> torch.Tensor:
    """(1, n) token ids in [4, vocab): never a special piece."""
    return torch.randint(4, VOCAB, (1, n), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def hf_logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float()


def _steps(n: int) -> list[tuple[int, int]]:
    return [(0, PREFILL)] + [(i, i + 1) for i in range(PREFILL, n)]


def oxide_incremental_logits(model: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    cache = model.new_cache(N_CTX)
    return torch.cat([model.forward(ids[:, start:stop], cache) for start, stop in _steps(ids.shape[1])], dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    span = (expected.max() - expected.min()).item()
    diff = (actual - expected).abs().max().item()
    print(f"{what}: max|diff| {diff / span:.2e} of the range")
    assert diff <= REL_TOL * span, f"{what}: max |diff| {diff:.3g} > {REL_TOL} x logit range {span:.3g}"
    wrong = (actual.argmax(-1) != expected.argmax(-1)).nonzero()
    assert wrong.numel() == 0, f"{what}: argmax differs at positions {wrong[:, -1].tolist()}"


def gguf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    """oxide's float32 logits (1, T, V) of one forward over ``ids`` with the GGUF file's model."""
    model = build_from_gguf(path, CPU, torch.float32)[1]
    return model.forward(ids, model.new_cache(N_CTX))


# --- the registry ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in ARCHITECTURES])
def test_every_registered_architecture_has_a_case(spec: ArchSpec) -> None:
    if not any(case.spec == spec.name for case in CASES.values()):
        pytest.fail(f"architecture {spec.name!r} is registered in oxide/registry.py but no case in "
                    f"tests/_arch_cases.py builds it: add a tiny model for it to CASES")


def test_unsupported_architecture_lists_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}')
    with pytest.raises(oxide.UnsupportedArchitecture) as caught:
        oxide.load(tmp_path)
    message = str(caught.value)
    assert "'GPTNeoXForCausalLM'" in message and str(tmp_path / "config.json") in message
    assert all(name in message for name in supported_names())
    assert sorted(caught.value.supported) == sorted(supported_names())


# --- safetensors -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASE_PARAMS)
def test_safetensors_forward_and_decode_match_transformers(case: Case, built) -> None:
    model, folder = built(case)
    loaded = oxide.load(folder, device="cpu", n_ctx=N_CTX)
    assert loaded.config.architecture == case.spec
    ids = ids_of(TOKENS)
    expected = hf_logits(model, ids)
    assert_close(loaded.logits(ids[0].tolist())[None], expected, f"{case.name} safetensors forward")
    reference = hf_decode_logits(model, ids, _steps(TOKENS)) if case.stateful_rope else expected
    assert_close(oxide_incremental_logits(loaded.lm, ids), reference, f"{case.name} safetensors decode")


def test_unregistered_multimodal_wrapper_runs_its_language_model(tmp_path: Path) -> None:
    """``Mistral3ForConditionalGeneration`` is not in the registry; its ``text_config`` (Mistral) is."""
    model = build_mistral3()
    loaded = oxide.load(hf_folder(model, tmp_path), device="cpu")
    assert loaded.config.architecture == "mistral"
    ids = ids_of(TOKENS)
    assert_close(loaded.logits(ids[0].tolist())[None], hf_logits(model, ids), "Mistral 3 language model")


# --- GGUF written by llama.cpp -----------------------------------------------------------------

@pytest.mark.parametrize("case", CASE_PARAMS)
def test_f16_gguf_matches_transformers(case: Case, built) -> None:
    """``gguf_tokens``: the positions over which the converter's file holds the model (``case.why``)."""
    model, folder = built(case)
    if case.stateful_rope:     # transformers' dynamic RoPE keeps the frequencies of the longest sequence it saw
        model = case.build()
    path = gguf_files(case, folder)["F16"]
    with GGUFFile(path) as f:
        assert detect_gguf(f.metadata).name == case.gguf_spec
    ids = ids_of(case.gguf_tokens)
    expected = hf_logits(model, ids)
    assert_close(gguf_logits(path, ids), expected, f"{case.name} F16 GGUF vs transformers")
    decoded = oxide_incremental_logits(build_from_gguf(path, CPU, torch.float32)[1], ids)
    assert_close(decoded, expected, f"{case.name} F16 GGUF decode vs transformers")


@pytest.mark.parametrize(("case", "kind"), GGUF_PARAMS)
def test_gguf_matches_llama_cpp(case: Case, kind: str, built) -> None:
    import llama_cpp

    if case.llama_differs:
        pytest.skip(case.llama_differs)
    _, folder = built(case)
    path = gguf_files(case, folder)[kind]
    with GGUFFile(path) as f:
        types = {info.qtype.name for info in f.tensors.values() if len(info.shape) == 2}
    assert {"F16": {"F16"}, "Q8_0": {"Q8_0"}, "Q4_K_M": {"Q4_K", "Q6_K"}}[kind] <= types, types

    n = min(case.gguf_tokens, case.llama_tokens)
    ids = ids_of(n)
    ours = gguf_logits(path, ids)[0]
    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids[0].tolist())
    theirs = torch.from_numpy(np.array(llm.scores[:n], dtype=np.float32))
    top1 = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    kl = (theirs.log_softmax(-1).exp() * (theirs.log_softmax(-1) - ours.log_softmax(-1))).sum(-1).mean().item()
    span = (theirs.max() - theirs.min()).item()
    print(f"{case.name} {kind}: top-1 {top1:.3f}, KL {kl:.2e}, max|diff| {(ours - theirs).abs().max() / span:.2e} "
          f"of the range, {n} positions")
    assert top1 >= TOP1_MIN, f"{case.name} {kind}: top-1 agreement with llama.cpp {top1:.3f} < {TOP1_MIN}"
    assert math.isfinite(kl) and kl <= KL_MAX[kind], f"{case.name} {kind}: KL {kl:.3g} > {KL_MAX[kind]}"
