"""The validation layer (``oxide/validation.py``): each escape the fuzz campaign of issue 10 found is now a typed
error naming the file and the key; each limit of ``LIMITS`` admits its bounds and refuses what lies past them;
the configuration is checked against the file's tensors and the KV cache against its limits."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import oxide
from oxide.config import ModelConfig
from oxide.errors import ModelFormatError, TokenizerError, UnsupportedArchitecture
from oxide.validation import LIMITS, Values, check_cache, kv_elements_per_token

from _fuzz_formats import ARRAY, F32, I32, KV, STRING, U32, U64, parse_gguf, write_gguf
from _tiny_models import TINY_MODELS, write_gguf as write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A two-layer tiny Llama GGUF (vocabulary 300, hidden 64), as bytes to edit."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    write_tiny_gguf(TINY_MODELS["llama"].build(), path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-hf")
    TINY_MODELS["llama"].build().save_pretrained(path, safe_serialization=True)
    return path


def edited(tiny: bytes, path: Path, **changes: tuple[int, object] | None) -> Path:
    """The tiny GGUF with metadata ``key=(type, value)`` set (``__`` spells ``.``), or removed when None."""
    doc = parse_gguf(tiny)
    for name, change in changes.items():
        key = name.replace("__", ".").encode()
        doc.kvs = [kv for kv in doc.kvs if kv.key != key]
        if change is not None:
            doc.kvs.append(KV(key, *change))
    path.write_bytes(write_gguf(doc))
    return path


def refused(path: Path, error: type[Exception], key: str, *more: str) -> str:
    """Load ``path``; the error must be ``error`` and its message name the file and ``key``."""
    with pytest.raises(error) as info:
        model = oxide.load(path, device="cpu")
        model.generate("t5 t6", max_new_tokens=2)
    message = str(info.value)
    assert str(path) in message, message
    assert re.search(re.escape(key), message), message
    for text in more:
        assert re.search(text, message), message
    return message


# --- the escapes the issue lists, in GGUF metadata ---------------------------------------------------------

@pytest.mark.parametrize("key, change, error, says", [
    ("tokenizer.ggml.bos_token_id", (STRING, b"1"), TokenizerError, "must be an integer"),
    ("tokenizer.ggml.bos_token_id", (ARRAY, (U32, [1, 2])), TokenizerError, "must be an integer"),
    ("tokenizer.ggml.eos_token_id", (F32, float("inf")), TokenizerError, "must be an integer"),
    ("tokenizer.ggml.tokens", (U32, 5), TokenizerError, "must be an array of strings"),
    ("tokenizer.ggml.add_bos_token", (ARRAY, (U32, [1, 0])), TokenizerError, "must be true or false"),
    ("tokenizer.ggml.model", (ARRAY, (STRING, [b"llama"])), TokenizerError, "must be a string"),
    ("general.architecture", (ARRAY, (STRING, [b"llama"])), ModelFormatError, "must be a string"),
    ("llama.rope.scaling.type", (ARRAY, (STRING, [b"linear"])), ModelFormatError, "must be a string"),
    ("llama.block_count", (U32, 2**31), ModelFormatError, r"outside \[1, 1024\]"),
    ("llama.block_count", (U32, 2**32 - 1), ModelFormatError, r"outside \[1, 1024\]"),
    ("llama.block_count", (I32, -1), ModelFormatError, r"outside \[1, 1024\]"),
    ("llama.block_count", (F32, 2.0), ModelFormatError, "must be an integer"),
    ("llama.rope.freq_base", (F32, 0.0), ModelFormatError, r"outside \(0, 1e\+12\]"),
    ("llama.rope.freq_base", (F32, float("nan")), ModelFormatError, "must be a finite number"),
    ("llama.attention.layer_norm_rms_epsilon", (F32, 1e30), ModelFormatError, r"outside \(0, 1\]"),
    ("llama.embedding_length", (STRING, b"64"), ModelFormatError, "must be an integer"),
    ("llama.context_length", (U64, 2**63), ModelFormatError, "outside"),
    ("llama.attention.head_count_kv", (ARRAY, (U32, [2, 4])), ModelFormatError, "varies per layer"),
    ("llama.rope.scaling.factor", (F32, -4.0), ModelFormatError, "outside"),
])
def test_gguf_escape_is_typed_and_names_file_and_key(tiny_gguf: bytes, tmp_path: Path, key: str, change: tuple,
                                                      error: type[Exception], says: str) -> None:
    extra = {"llama__rope__scaling__type": (STRING, b"linear")} if key == "llama.rope.scaling.factor" else {}
    path = edited(tiny_gguf, tmp_path / "bad.gguf", **{key.replace(".", "__"): change}, **extra)
    refused(path, error, f"'{key}'", says)


def test_a_per_layer_array_of_one_value_is_accepted(tiny_gguf: bytes, tmp_path: Path) -> None:
    """llama.cpp writes some hyperparameters per layer; uniform arrays read as their value."""
    path = edited(tiny_gguf, tmp_path / "ok.gguf", llama__attention__head_count_kv=(ARRAY, (U32, [2, 2])))
    assert oxide.load(path, device="cpu").config.num_key_value_heads == 2


def test_a_missing_required_key_is_named(tiny_gguf: bytes, tmp_path: Path) -> None:
    refused(edited(tiny_gguf, tmp_path / "bad.gguf", llama__block_count=None), ModelFormatError,
            "'llama.block_count'", "missing")


def test_an_unknown_architecture_string_is_not_a_type_error(tiny_gguf: bytes, tmp_path: Path) -> None:
    refused(edited(tiny_gguf, tmp_path / "bad.gguf", general__architecture=(STRING, b"\xff\xfe")),
            UnsupportedArchitecture, "not supported")


# --- against the tensors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, says", [(1, r"tensor 'blk\.1\..*' is for layer 1, but llama.block_count = 1"),
                                          (3, r"llama.block_count = 3 but the file has no tensors for layer 2")])
def test_layer_count_matches_the_tensors(tiny_gguf: bytes, tmp_path: Path, layers: int, says: str) -> None:
    refused(edited(tiny_gguf, tmp_path / "bad.gguf", llama__block_count=(U32, layers)), ModelFormatError,
            "llama.block_count", says)


def test_hidden_size_matches_the_embedding(tiny_gguf: bytes, tmp_path: Path) -> None:
    # 32 heads of 2 keep every other check happy: only the embedding (300, 64) disagrees with 128
    path = edited(tiny_gguf, tmp_path / "bad.gguf", llama__embedding_length=(U32, 128))
    refused(path, ModelFormatError, "llama.embedding_length", r"token_embd.weight is \(300, 64\)")


def test_vocab_size_key_matches_the_embedding(tiny_gguf: bytes, tmp_path: Path) -> None:
    refused(edited(tiny_gguf, tmp_path / "bad.gguf", llama__vocab_size=(U32, 301)), ModelFormatError,
            "llama.vocab_size", "has 300 rows")


def test_token_count_matches_the_embedding(tiny_gguf: bytes, tmp_path: Path) -> None:
    doc = parse_gguf(tiny_gguf)
    for i, kv in enumerate(doc.kvs):
        if kv.key.startswith(b"tokenizer.ggml.") and kv.vtype == ARRAY:
            doc.kvs[i] = KV(kv.key, ARRAY, (kv.value[0], kv.value[1][:200]))
    path = tmp_path / "bad.gguf"
    path.write_bytes(write_gguf(doc))
    refused(path, ModelFormatError, "'tokenizer.ggml.tokens'", "200 tokens but the embedding has 300 rows")


# --- the escapes the issue lists, in config.json ----------------------------------------------------------------

def folder_with(tiny_folder: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of the tiny folder whose config.json has ``changes`` (None removes a key)."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "model.safetensors").symlink_to(tiny_folder / "model.safetensors")
    config = json.loads((tiny_folder / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key, None) if value is None else config.__setitem__(key, value)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("changes, key, says", [
    ({"num_hidden_layers": 10**6}, "'num_hidden_layers'", r"outside \[1, 1024\]"),
    ({"num_hidden_layers": 2**31}, "'num_hidden_layers'", "outside"),
    ({"num_hidden_layers": 2.5}, "'num_hidden_layers'", "must be an integer"),
    ({"rope_scaling": {"rope_type": "linear"}}, "'rope_scaling.factor'", "missing"),
    ({"rope_scaling": {"rope_type": ["linear"]}}, "'rope_scaling.rope_type'", "must be a string"),
    ({"rope_scaling": "linear"}, "'rope_scaling'", "must be an object"),
    ({"head_dim": "abc"}, "'head_dim'", "must be an integer"),
    ({"rms_norm_eps": 1e30}, "'rms_norm_eps'", r"outside \(0, 1\]"),
    ({"architectures": 1, "model_type": "llama"}, "'architectures'", "must be an array of strings"),
    ({"rope_parameters": None, "rope_theta": 0.0}, "'rope_theta'", "outside"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": float("nan")}}, "'rope_parameters.rope_theta'",
     "must be a finite number"),
    ({"vocab_size": None}, "'vocab_size'", "missing"),
    ({"hidden_act": ["silu"]}, "'hidden_act'", "must be a string"),
    ({"layer_types": ["full_attention"]}, "'layer_types'", "each of the num_hidden_layers = 2 layers"),
    ({"tie_word_embeddings": "yes"}, "'tie_word_embeddings'", "must be true or false"),
    ({"num_local_experts": 4, "num_experts_per_tok": 9}, "num_experts_per_tok", r"must lie in \[1, num_experts=4\]"),
    ({"hidden_size": 128}, "hidden_size", r"embed_tokens.weight is \(300, 64\)"),
])
def test_config_json_escape_is_typed_and_names_file_and_key(tiny_folder: Path, tmp_path: Path, changes: dict,
                                                             key: str, says: str) -> None:
    refused(folder_with(tiny_folder, tmp_path, **changes), ModelFormatError, key, says)


def test_an_integral_float_in_config_json_is_an_integer(tiny_folder: Path, tmp_path: Path) -> None:
    model = oxide.load(folder_with(tiny_folder, tmp_path, num_attention_heads=4.0), device="cpu")
    assert model.config.num_attention_heads == 4 and isinstance(model.config.num_attention_heads, int)


# --- the limits -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_limit_admits_its_bounds_and_refuses_past_them(name: str) -> None:
    limit = LIMITS[name]
    assert limit.reason
    integer = float(limit.low).is_integer() and float(limit.high).is_integer() and not limit.open_low
    read = Values({"low": limit.low, "high": limit.high, "above": limit.high * 2 + 1, "below": limit.low - 1},
                  "f.gguf", gguf=False)
    get = read.integer if integer else read.number
    if not limit.open_low:
        assert get("low", limit) == limit.low
    assert get("high", limit) == limit.high
    for key in ("above", "below"):
        with pytest.raises(ModelFormatError, match=rf"^f.gguf: key '{key}' = .* is outside .*{re.escape(limit.reason)}"):
            get(key, limit)


def test_model_config_refuses_a_huge_layer_count_before_sizing_anything() -> None:
    """2^31 layers once built a 2^31-entry layer table (MemoryError): the range is checked first."""
    with pytest.raises(ModelFormatError, match=r"num_hidden_layers=2147483648 is outside \[1, 1024\]"):
        ModelConfig("llama", vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=2**31,
                    num_attention_heads=2)


def test_kv_cache_limits() -> None:
    config = ModelConfig("llama", vocab_size=16, hidden_size=1024, intermediate_size=8, num_hidden_layers=1024,
                         num_attention_heads=1024, head_dim=1024)
    assert kv_elements_per_token(config) == 1024 * 1024 * 2048
    with pytest.raises(ModelFormatError, match="m.gguf: the KV cache needs 2,147,483,648 elements per token"):
        check_cache(config, 1, "m.gguf")
    small = ModelConfig("llama", vocab_size=16, hidden_size=1024, intermediate_size=8, num_hidden_layers=64,
                        num_attention_heads=64, num_key_value_heads=8, head_dim=128)
    check_cache(small, 8192, "m.gguf")   # 131,072 elements a token, 1G in all: fine
    with pytest.raises(ModelFormatError, match="n_ctx=16,777,216 .* load with a smaller n_ctx"):
        check_cache(small, 2**24, "m.gguf")


def test_numbers_are_checked_entry_by_entry() -> None:
    values = Values({"f": [1.0, math.inf], "g": [1, "2"], "h": np.array([0.5, 2.0], np.float32)}, "c.json",
                    gguf=False)
    with pytest.raises(ModelFormatError, match="'f' .* finite"):
        values.numbers("f")
    with pytest.raises(ModelFormatError, match="'g' .* array of numbers"):
        values.numbers("g")
    with pytest.raises(ModelFormatError, match=r"'h' .* entries outside \(0, 1\]"):
        values.numbers("h", LIMITS["rms_norm_eps"])
