"""The bad-input catalogue: every case is a typed OxideError naming the file, key or value at fault."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

import oxide
from oxide.errors import (
    ContextOverflowError,
    InvalidOptionError,
    ModelFormatError,
    ModelNotFoundError,
    OxideError,
    TokenizerError,
    UnsupportedArchitecture,
    UnsupportedQuantType,
)
from oxide.registry import supported_names

def write_tiny_llama(path: Path, *, arch: str = "llama", q_rows: int = 32,
                     attn_q_type: gguf.GGMLQuantizationType | None = None,
                     metadata: dict[str, object] | None = None) -> Path:
    """A one-block Llama-shaped GGUF with random F32 weights (hidden 32, 2 heads, vocab 16); ``metadata``
    replaces or adds keys (ints as u32, floats as f32, strings as strings)."""
    hidden, ffn, vocab = 32, 64, 16
    rng = np.random.default_rng(1234)   # the same weights in every file, whichever tests run
    w = gguf.GGUFWriter(str(path), arch)
    hparams: dict[str, object] = {
        f"{arch}.context_length": 64, f"{arch}.embedding_length": hidden, f"{arch}.block_count": 1,
        f"{arch}.feed_forward_length": ffn, f"{arch}.attention.head_count": 2, f"{arch}.attention.head_count_kv": 2,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5, **(metadata or {}),
    }
    for key, value in hparams.items():
        {int: w.add_uint32, float: w.add_float32, str: w.add_string}[type(value)](key, value)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([1] * vocab)

    def add(name: str, *shape: int) -> None:
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    add("token_embd.weight", vocab, hidden)
    add("output_norm.weight", hidden)
    add("blk.0.attn_norm.weight", hidden)
    if attn_q_type is None:
        add("blk.0.attn_q.weight", q_rows, hidden)
    else:
        block, size = gguf.GGML_QUANT_SIZES[attn_q_type]
        raw = rng.integers(0, 256, size=(q_rows, hidden // block * size), dtype=np.uint8)
        w.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=attn_q_type)
    add("blk.0.attn_k.weight", hidden, hidden)
    add("blk.0.attn_v.weight", hidden, hidden)
    add("blk.0.attn_output.weight", hidden, hidden)
    add("blk.0.ffn_norm.weight", hidden)
    add("blk.0.ffn_gate.weight", ffn, hidden)
    add("blk.0.ffn_up.weight", ffn, hidden)
    add("blk.0.ffn_down.weight", hidden, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_file_loads(tmp_path: Path) -> None:
    """The fixture itself is valid, so the failures below are due to the one defect each introduces."""
    model = oxide.load(write_tiny_llama(tmp_path / "ok.gguf"), device="cpu")
    logits = model.logits([1, 2, 3])
    assert logits.shape == (3, 16) and logits.isfinite().all()


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="nope.gguf"):
        oxide.load(tmp_path / "nope.gguf")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFormatError, match=r"empty\.gguf.*empty"):
        oxide.load(tmp_path / "empty.gguf")


def test_wrong_magic(tmp_path: Path) -> None:
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(100))
    with pytest.raises(ModelFormatError, match=r"bad\.gguf.*not a GGUF file"):
        oxide.load(tmp_path / "bad.gguf")


@pytest.mark.parametrize("keep", [6, 20, 90, 300, 700])   # inside the counts, keys, token list, tensor infos
def test_truncated_header(tmp_path: Path, keep: int) -> None:
    whole = write_tiny_llama(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:keep])
    with pytest.raises(ModelFormatError, match=r"cut\.gguf.*truncated"):
        oxide.load(cut)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    whole = write_tiny_llama(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:-1000])
    with pytest.raises(ModelFormatError, match=r"cut\.gguf: tensor '.*' data ends at byte .* truncated"):
        oxide.load(cut)


def test_truncated_real_model(gemma_path: Path, tmp_path: Path) -> None:
    """Cut inside the 262,144-token vocabulary and inside the tensor data of the real file."""
    for size, what in ((3_000_000, "truncated GGUF header"), (150_000_000, "truncated")):
        cut = tmp_path / "gemma-cut.gguf"
        with open(gemma_path, "rb") as src:
            cut.write_bytes(src.read(size))
        with pytest.raises(ModelFormatError, match=what):
            oxide.load(cut)


def test_unknown_architecture(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "alien.gguf", arch="alien")
    with pytest.raises(UnsupportedArchitecture) as info:
        oxide.load(path)
    message = str(info.value)
    assert "'alien'" in message and "alien.gguf" in message
    for name in supported_names():
        assert name in message


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "q8_1.gguf", attn_q_type=gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(UnsupportedQuantType, match=r"blk\.0\.attn_q\.weight.*Q8_1"):
        oxide.load(path)


def test_shape_inconsistent_with_metadata(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "shape.gguf", q_rows=48)
    with pytest.raises(ModelFormatError, match=r"blk\.0\.attn_q\.weight.*\(48, 32\).*\(32, 32\)"):
        oxide.load(path)


@pytest.mark.parametrize("content, what", [(None, "missing"), (b"{not json", "invalid JSON"),
                                           (b"\xff\xfe\x00", "cannot be read"), (b"[1, 2]", "JSON object")])
def test_unreadable_config_json(tmp_path: Path, content: bytes | None, what: str) -> None:
    if content is not None:
        (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ModelFormatError, match=rf"config\.json.*{what}"):
        oxide.load(tmp_path)


def test_invalid_sampling_options() -> None:
    with pytest.raises(InvalidOptionError, match="temperature") as info:
        oxide.SamplingOptions(temperature=-1)
    assert isinstance(info.value, ValueError)


def test_prompt_longer_than_context(tmp_path: Path) -> None:
    model = oxide.load(write_tiny_llama(tmp_path / "ok.gguf"), device="cpu", n_ctx=8)
    with pytest.raises(ContextOverflowError, match="context"):
        model.generate(list(range(1, 12)), max_new_tokens=1)
    with pytest.raises(ContextOverflowError):
        model.logits(list(range(12)))


@pytest.mark.parametrize("bad", [16, 1000, -1])
def test_token_id_out_of_range(tmp_path: Path, bad: int) -> None:
    model = oxide.load(write_tiny_llama(tmp_path / "ok.gguf"), device="cpu")
    with pytest.raises(TokenizerError, match=rf"token id {bad} .*vocabulary of 16"):
        model.logits([1, bad])
    with pytest.raises(TokenizerError, match=str(bad)):
        model.generate([1, bad], max_new_tokens=1)


@pytest.mark.parametrize("kwargs", [{"device": "tpu"}, {"dtype": "int3"}, {"n_ctx": 0}])
def test_bad_load_options(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InvalidOptionError):
        oxide.load(write_tiny_llama(tmp_path / "ok.gguf"), **kwargs)


def test_errors_share_one_base() -> None:
    """Every exception class oxide.errors defines, found by looking (so a new one cannot slip past), is an
    OxideError and is exported by the package."""
    import inspect

    from oxide import errors

    defined = {cls for _, cls in inspect.getmembers(errors, inspect.isclass)
               if issubclass(cls, BaseException) and cls.__module__ == errors.__name__}
    exported = {value for value in map(lambda name: getattr(oxide, name), oxide.__all__)
                if inspect.isclass(value) and issubclass(value, BaseException)}
    assert {ModelFormatError, UnsupportedArchitecture, UnsupportedQuantType, TokenizerError, ContextOverflowError,
            InvalidOptionError} <= defined
    assert sorted(cls.__name__ for cls in defined if not issubclass(cls, OxideError)) == []
    assert sorted(cls.__name__ for cls in defined - exported) == []


def _header_with(tmp_path: Path, name: str, *, alignment: int | None = None,
                 tensors: list[tuple[str, tuple[int, ...]]] = ()) -> Path:
    """A GGUF header (no tensor data) with the given alignment key and tensor infos."""
    path = tmp_path / name
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_uint32("general.alignment", alignment)
    for tensor_name, shape in tensors:
        w.add_tensor_info(tensor_name, shape, np.dtype(np.float32), 4 * int(np.prod(shape, dtype=np.float64)) % 2**63)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_bad_alignment(tmp_path: Path, alignment: int) -> None:
    with pytest.raises(ModelFormatError, match=rf"general\.alignment={alignment}"):
        oxide.load(_header_with(tmp_path, "align.gguf", alignment=alignment))


def test_absurd_tensor_shape_is_truncation_not_overflow(tmp_path: Path) -> None:
    path = _header_with(tmp_path, "huge.gguf", tensors=[("token_embd.weight", (2**40, 2**40))])
    with pytest.raises(ModelFormatError, match=r"token_embd\.weight.*data ends at byte"):
        oxide.load(path)


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    path = tmp_path / "dup.gguf"
    whole = write_tiny_llama(tmp_path / "whole.gguf").read_bytes()
    path.write_bytes(whole.replace(b"blk.0.attn_k.weight", b"blk.0.attn_q.weight", 1))
    with pytest.raises(ModelFormatError, match=r"'blk\.0\.attn_q\.weight' is listed twice"):
        oxide.load(path)


@pytest.mark.parametrize("key, value", [("llama.rope.freq_base", "fast"), ("llama.attention.layer_norm_rms_epsilon", "x"),
                                        ("llama.embedding_length", "32")])
def test_metadata_of_the_wrong_type(tmp_path: Path, key: str, value: str) -> None:
    path = write_tiny_llama(tmp_path / "typed.gguf", metadata={key: value})
    with pytest.raises(ModelFormatError, match=rf"{key}.*must be (a number|an integer)"):
        oxide.load(path)


@pytest.mark.parametrize("key, value, what", [("llama.attention.head_count", 0, "'llama.attention.head_count' = 0 is outside"),
                                              ("llama.attention.head_count_kv", 3, "num_key_value_heads=3"),
                                              ("llama.attention.layer_norm_rms_epsilon", -1.0,
                                               "'llama.attention.layer_norm_rms_epsilon' = -1.0 is outside")])
def test_metadata_values_out_of_range(tmp_path: Path, key: str, value: object, what: str) -> None:
    path = write_tiny_llama(tmp_path / "range.gguf", metadata={key: value})
    with pytest.raises(ModelFormatError, match=what):
        oxide.load(path)


@pytest.mark.parametrize("damage", ["short", "missing"])
def test_phi3_fused_projection_is_named(tmp_path: Path, damage: str) -> None:
    """Phi-3's q, k, v come from one fused matrix: a wrong or absent one is named, not its split parts."""
    from safetensors.torch import load_file, save_file
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2)
    Phi3ForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    path, fused = tmp_path / "model.safetensors", "model.layers.0.self_attn.qkv_proj.weight"
    tensors = load_file(path)
    if damage == "short":
        tensors[fused] = tensors[fused][:-4].contiguous()
        expected = f"{fused}' has 60 rows but the model's config implies 64 \\(32 \\+ 16 \\+ 16, fused\\)"
    else:
        del tensors[fused]
        expected = "blk.0.attn_qkv.weight \\(fused; the rows of attn_q\\)' is missing"
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match=f"{tmp_path}: .*{expected}"):
        oxide.load(tmp_path, device="cpu")


def test_partial_rope_in_gguf_is_refused(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", metadata={"llama.rope.dimension_count": 8})
    with pytest.raises(ModelFormatError, match=f"{path}: llama.rope.dimension_count = 8 rotates only part of each "
                                               f"head \\(head_dim 16\\)"):
        oxide.load(path, device="cpu")


# --- Hugging Face checkpoints ------------------------------------------------------------------------

def _tiny_folder(tmp_path: Path) -> Path:
    from _arch_cases import CASES, hf_folder

    return hf_folder(CASES["qwen3"].build(), tmp_path / "model")


def test_a_missing_shard_is_named(tmp_path: Path) -> None:
    from safetensors import safe_open

    folder = _tiny_folder(tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    with safe_open(str(folder / "model-00001-of-00002.safetensors"), "pt") as f:
        names = list(f.keys())
    weight_map = {name: "model-00001-of-00002.safetensors" for name in names}
    weight_map[names[-1]] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(oxide.ModelFormatError, match="missing: model-00002-of-00002.safetensors"):
        oxide.load(folder, device="cpu")


@pytest.mark.parametrize("lie", ["past-the-end", "size"])
def test_a_safetensors_header_that_lies_names_the_tensor(tmp_path: Path, lie: str) -> None:
    folder = _tiny_folder(tmp_path)
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    name = "model.layers.1.mlp.down_proj.weight"
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, len(raw) + 64] if lie == "past-the-end" else [start, end - 4]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])
    with pytest.raises(oxide.ModelFormatError, match=f"{path}: tensor '{name}' claims bytes"):
        oxide.load(folder, device="cpu")


def test_an_extra_layer_in_the_checkpoint_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _tiny_folder(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.2.mlp.down_proj.weight"] = tensors["model.layers.1.mlp.down_proj.weight"].clone()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(oxide.ModelFormatError, match="'model.layers.2.mlp.down_proj.weight' is for layer 2, but "
                                                    "config.json's num_hidden_layers = 2"):
        oxide.load(folder, device="cpu")
