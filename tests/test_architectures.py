"""The architectures of ``tests/_tiny_models.py``, end to end through GGUF, against transformers.

For each of them (llama, mistral, qwen2, qwen3, gemma3: the ones whose GGUF conversion
``_tiny_models.write_gguf`` reproduces) a tiny random transformers model is converted to GGUF and
loaded with ``build_from_gguf``. Every registered architecture, these included, is also covered with
files written by llama.cpp's own converter in ``tests/test_arch_conversions.py``, which fails when an
entry of the registry has no case.

Tolerances (float32 on CPU):
* F32 file vs the transformers model: ``max|oxide - hf| <= 1e-4 * max|hf|`` and equal argmax at
  every position.
* Quantized file (Q8_0, F16) vs transformers loading *the same file* (``gguf_file=``, which
  dequantizes to float32), on the compiled core's float32-activation path: the same bound; and vs the
  original model, a loose ``max|diff| <= 0.1 * max|hf|`` showing the file still holds this model's
  weights, which the default path (int8 activations on a CPU with AVX-512 VNNI) meets too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from _tiny_models import TINY_MODELS, TinyModel, hf_logits, random_ids, rope_bases, write_gguf
from conftest import float32_activations
from transformers import AutoModelForCausalLM, PreTrainedModel

from oxide.config import FULL_ATTENTION, SLIDING_ATTENTION
from oxide.models.builder import build_from_gguf
from oxide.models.decoder import DecoderLM
from oxide.registry import ARCHITECTURES, ArchSpec, detect_gguf
from oxide.weights.gguf import GGUFFile

F32 = gguf.GGMLQuantizationType.F32
REL_TOL = 1e-4               # max |diff| / max |reference logit|, float32 paths
QUANT_VS_ORIGINAL_TOL = 0.1  # quantized file vs the unquantized model: same weights, rounded
PROMPT_LEN = 24
CPU = torch.device("cpu")

SPEC_PARAMS = [pytest.param(spec, id=spec.name) for spec in ARCHITECTURES if spec.name in TINY_MODELS]


pytestmark = pytest.mark.usefixtures("quiet_transformers")


def tiny_for(spec: ArchSpec) -> TinyModel:
    return TINY_MODELS[spec.name]


Converted = tuple[PreTrainedModel, Path]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[ArchSpec, gguf.GGMLQuantizationType], Converted]:
    """(spec, qtype) -> (transformers model, GGUF path), built once per module; each file in its own directory
    so ``from_pretrained(directory, gguf_file=...)`` sees only it."""
    models: dict[str, PreTrainedModel] = {}
    files: dict[tuple[str, gguf.GGMLQuantizationType], Path] = {}

    def get(spec: ArchSpec, qtype: gguf.GGMLQuantizationType) -> Converted:
        tiny = tiny_for(spec)
        if spec.name not in models:
            models[spec.name] = tiny.build()
        key = (spec.name, qtype)
        if key not in files:
            directory = tmp_path_factory.mktemp(f"{spec.name}-{qtype.name}")
            files[key] = write_gguf(models[spec.name], directory / f"tiny-{spec.name}-{qtype.name}.gguf", qtype)
        return models[spec.name], files[key]

    return get


def load_oxide(path: Path) -> DecoderLM:
    _, model = build_from_gguf(path, CPU, torch.float32)
    return model


def oxide_logits(model: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    return model.forward(ids, model.new_cache(64))


def assert_close_logits(actual: torch.Tensor, expected: torch.Tensor, rel_tol: float, what: str) -> None:
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert diff <= rel_tol * scale, f"{what}: max |diff| {diff:.3g} exceeds {rel_tol} x logit scale {scale:.3g}"
    mismatched = (actual.argmax(-1) != expected.argmax(-1)).nonzero()
    assert mismatched.numel() == 0, f"{what}: argmax differs at positions {mismatched[:, -1].tolist()}"


def as_f32(value: float) -> float:
    return float(np.float32(value))


def hf_gguf_overrides(model: PreTrainedModel) -> dict[str, object]:
    """Config values transformers' GGUF loader does not read, passed explicitly.

    * Qwen3: the loader ignores ``qwen3.attention.key_length`` and keeps Qwen3Config's default
      head_dim of 128, so any Qwen3 file whose head_dim is not 128 fails to load without this.
    * Gemma 3: GGUF has no ``query_pre_attn_scalar``; transformers defaults to 256, llama.cpp (and
      oxide) use head_dim. Real Gemma 3 models have head_dim 256, so both agree there.
    """
    config = model.config
    if config.model_type == "qwen3":
        return {"head_dim": config.head_dim}
    if config.model_type == "gemma3_text":
        return {"query_pre_attn_scalar": config.query_pre_attn_scalar}
    return {}


# --- the registry and the factories -----------------------------------------------------------

def test_every_tiny_model_is_registered() -> None:
    registered = {spec.name for spec in ARCHITECTURES}
    stale = sorted(set(TINY_MODELS) - registered)
    assert not stale, f"tests/_tiny_models.py has models for unregistered architectures: {stale}"


@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_tiny_model_logits_are_informative(spec: ArchSpec, converted) -> None:
    """A near-uniform reference would let a broken model pass: logits must spread over several units."""
    model, _ = converted(spec, F32)
    logits = hf_logits(model, random_ids(PROMPT_LEN, seed=1))
    assert logits.std().item() > 0.5
    assert (logits.max(-1).values - logits.min(-1).values).min().item() > 3.0


# --- F32 file vs the transformers model -------------------------------------------------------

@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_f32_gguf_logits_match_transformers(spec: ArchSpec, converted) -> None:
    model, path = converted(spec, F32)
    ids = random_ids(PROMPT_LEN, seed=100 + len(spec.name))
    expected = hf_logits(model, ids)
    actual = oxide_logits(load_oxide(path), ids)
    assert actual.shape == expected.shape == (1, PROMPT_LEN, model.config.vocab_size)
    assert actual.dtype == torch.float32
    assert_close_logits(actual, expected, REL_TOL, f"{spec.name} F32 GGUF vs transformers")


@pytest.mark.parametrize("spec", SPEC_PARAMS)
def test_gguf_file_and_config_match_what_was_written(spec: ArchSpec, converted) -> None:
    model, path = converted(spec, F32)
    tiny, hf = tiny_for(spec), model.config
    with GGUFFile(path) as f:
        assert f.architecture == tiny.gguf_arch
        assert detect_gguf(f.metadata).name == tiny.detected_as
        assert ("output.weight" in f.tensors) == (not hf.tie_word_embeddings)
    config = load_oxide(path).config
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    layer_types = tuple(getattr(hf, "layer_types", None) or (FULL_ATTENTION,) * hf.num_hidden_layers)
    expected = {
        "vocab_size": hf.vocab_size,
        "hidden_size": hf.hidden_size,
        "intermediate_size": hf.intermediate_size,
        "num_hidden_layers": hf.num_hidden_layers,
        "num_attention_heads": hf.num_attention_heads,
        "num_key_value_heads": hf.num_key_value_heads,
        "head_dim": head_dim,
        "sliding_window": (hf.sliding_window or 0) if SLIDING_ATTENTION in layer_types else 0,
        "layer_types": layer_types,
        "tie_word_embeddings": hf.tie_word_embeddings,
        "rms_norm_eps": as_f32(hf.rms_norm_eps),      # GGUF stores these as float32
        "rope_theta": as_f32(rope_bases(hf)[0]),
    }
    actual = {name: getattr(config, name) for name in expected}
    assert actual == expected
    hf_attention = model.model.layers[0].self_attn
    assert math.isclose(config.attention_scale, hf_attention.scaling, rel_tol=1e-12)
    assert config.attention_bias == (hf_attention.q_proj.bias is not None)
    assert config.qk_norm == hasattr(hf_attention, "q_norm")
    if SLIDING_ATTENTION in layer_types:
        assert config.rope_local_base_freq == as_f32(rope_bases(hf)[1])


# --- quantized files vs transformers reading the same file ------------------------------------

QUANT_PARAMS = [
    pytest.param(spec, qtype, id=f"{spec.name}-{qtype.name}")
    for spec in ARCHITECTURES if spec.name in TINY_MODELS
    for qtype in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16)
]


@pytest.mark.parametrize(("spec", "qtype"), QUANT_PARAMS)
def test_quantized_gguf_matches_transformers_on_the_same_file(spec: ArchSpec, qtype: gguf.GGMLQuantizationType,
                                                               converted) -> None:
    model, path = converted(spec, qtype)
    with GGUFFile(path) as f:
        matrix_types = {info.qtype for info in f.tensors.values() if len(info.shape) == 2}
        vector_types = {info.qtype for info in f.tensors.values() if len(info.shape) == 1}
    assert matrix_types == {qtype}
    assert vector_types == {F32}

    hf_from_gguf = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager",
        **hf_gguf_overrides(model)).eval()
    ids = random_ids(PROMPT_LEN, seed=200 + len(spec.name))
    expected = hf_logits(hf_from_gguf, ids)
    oxide_model = load_oxide(path)
    with float32_activations():
        actual = oxide_logits(oxide_model, ids)
    assert_close_logits(actual, expected, REL_TOL, f"{spec.name} {qtype.name} GGUF vs transformers on the same file")

    original = hf_logits(model, ids)
    for logits, path_name in ((actual, "float32 activations"), (oxide_logits(oxide_model, ids), "default path")):
        drift = (logits - original).abs().max().item()
        assert drift <= QUANT_VS_ORIGINAL_TOL * original.abs().max().item(), (
            f"{spec.name} {qtype.name} ({path_name}): logits drift {drift:.3g} from the unquantized model")
