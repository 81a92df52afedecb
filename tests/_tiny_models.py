"""Tiny random-weight transformers models of llama, mistral, qwen2, qwen3 and gemma3, and a GGUF writer for them.

Every registered architecture (these included) also has a case in ``tests/_arch_cases.py``, converted by
llama.cpp's own converter; new architectures get only that (this writer is not extended to them).

``TINY_MODELS[name].build()`` returns a seeded, float32, eval-mode transformers model with eager
attention whose weights are re-drawn with a spread large enough that logits are far from uniform.

``write_gguf(model, path, qtype)`` converts such a model the way llama.cpp's
``convert_hf_to_gguf.py`` (``conversion/base.py``, ``llama.py``, ``qwen.py``, ``gemma.py``) does:

* metadata: ``general.*`` (type, name, file type, quantization version), then the ``<arch>.*`` keys
  of ``TextModel.set_gguf_parameters`` (block count, context, embedding, feed-forward length, head
  counts, RoPE base of the full-attention layers and of the sliding ones when the config has one,
  RMS epsilon, key/value length when ``head_dim`` is in the config); Llama adds ``vocab_size`` and
  ``rope.dimension_count``; Gemma 3 adds ``attention.sliding_window``;
* ``MistralForCausalLM`` is converted by ``LlamaModel``, so its file says ``general.architecture
  = llama``;
* Llama/Mistral ``q_proj``/``k_proj`` rows (weights and biases) are permuted per head from the
  half-split RoPE layout to ggml's adjacent pairs; Qwen and Gemma are stored as they are;
* Gemma's RMSNorm multiplies by ``1 + w``: every ``*norm.weight`` is stored as ``w + 1``;
* tied embeddings: no ``output.weight``;
* tensor names come from gguf-py's ``TensorNameMap``; 1-D tensors and norms stay F32, matrices take
  the requested type (a row length that the type cannot block falls back to F16, as the converter does).

A minimal SentencePiece-style vocabulary (``tokenizer.ggml.*``) makes the file a well-formed model file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 300
HIDDEN = 64
FFN = 128
HEADS = 4
KV_HEADS = 2
GEMMA_WINDOW = 8
GEMMA_LAYERS = 7          # llama.cpp's fixed pattern: 5 sliding layers, 1 full, then sliding again
MATRIX_STD = 0.15         # weights ~ N(0, 0.15^2): logits spread over several units
VECTOR_STD = 0.2          # norm weights (around their neutral value) and biases


def _common(**overrides: object) -> dict[str, object]:
    kwargs: dict[str, object] = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, rms_norm_eps=1e-6, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, attn_implementation="eager",
    )
    kwargs.update(overrides)
    return kwargs


@torch.no_grad()
def redraw_parameters(model: PreTrainedModel, gen: torch.Generator, norm_center: float,
                      matrix_std: Callable[[int], float]) -> None:
    """Redraw every parameter from ``gen``: matrices N(0, matrix_std(fan_in)^2), biases N(0, VECTOR_STD^2),
    norm weights ``norm_center + N(0, VECTOR_STD^2)``."""
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen)
        if name.endswith("norm.weight"):
            param.copy_(norm_center + VECTOR_STD * noise)
        elif param.ndim == 1:
            param.copy_(VECTOR_STD * noise)
        else:
            param.copy_(matrix_std(param.shape[-1]) * noise)


def _randomize(model: PreTrainedModel, seed: int, norm_center: float) -> PreTrainedModel:
    """Every parameter redrawn (:func:`redraw_parameters`), matrices N(0, MATRIX_STD^2)."""
    redraw_parameters(model, torch.Generator().manual_seed(seed), norm_center, lambda fan_in: MATRIX_STD)
    return model.float().eval()


def build_llama() -> PreTrainedModel:
    config = LlamaConfig(**_common(num_hidden_layers=2, rope_theta=10000.0, tie_word_embeddings=False))
    return _randomize(LlamaForCausalLM(config), seed=11, norm_center=1.0)


def build_mistral() -> PreTrainedModel:
    # sliding_window=None: llama.cpp's LlamaModel never writes a window for Mistral.
    config = MistralConfig(**_common(num_hidden_layers=2, head_dim=16, sliding_window=None, rope_theta=50000.0,
                                     tie_word_embeddings=True))
    return _randomize(MistralForCausalLM(config), seed=12, norm_center=1.0)


def build_qwen2() -> PreTrainedModel:
    # Qwen2's q/k/v projections always carry biases in transformers.
    config = Qwen2Config(**_common(num_hidden_layers=2, rope_theta=1000000.0, tie_word_embeddings=True,
                                   use_sliding_window=False))
    return _randomize(Qwen2ForCausalLM(config), seed=13, norm_center=1.0)


def build_qwen3() -> PreTrainedModel:
    # head_dim 32 with 4 heads: the attention width (128) differs from hidden_size (64).
    config = Qwen3Config(**_common(num_hidden_layers=3, head_dim=32, rope_theta=1000000.0, tie_word_embeddings=False,
                                   use_sliding_window=False))
    return _randomize(Qwen3ForCausalLM(config), seed=14, norm_center=1.0)


def build_gemma3() -> PreTrainedModel:
    # GGUF stores neither the layer pattern nor query_pre_attn_scalar; llama.cpp assumes every 6th
    # layer full and a scale of head_dim ** -0.5, so the tiny model uses exactly those.
    head_dim = 16
    config = Gemma3TextConfig(**_common(
        num_hidden_layers=GEMMA_LAYERS, head_dim=head_dim, query_pre_attn_scalar=head_dim,
        sliding_window=GEMMA_WINDOW, tie_word_embeddings=True,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(GEMMA_LAYERS)],
    ))
    return _randomize(Gemma3ForCausalLM(config), seed=15, norm_center=0.0)


@dataclass(frozen=True)
class TinyModel:
    """A registered architecture's tiny model: ``build()`` and what its GGUF file looks like."""

    name: str
    build: Callable[[], PreTrainedModel]
    gguf_arch: str            # general.architecture written by llama.cpp's converter
    detected_as: str          # the oxide registry spec that file is detected as


TINY_MODELS: dict[str, TinyModel] = {
    t.name: t for t in (
        TinyModel("llama", build_llama, "llama", "llama"),
        TinyModel("mistral", build_mistral, "llama", "llama"),
        TinyModel("qwen2", build_qwen2, "qwen2", "qwen2"),
        TinyModel("qwen3", build_qwen3, "qwen3", "qwen3"),
        TinyModel("gemma3", build_gemma3, "gemma3", "gemma3"),
    )
}


# --- conversion -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Conversion:
    arch: gguf.MODEL_ARCH
    permute_qk: bool          # LlamaModel.undo_permute
    norm_shift: float         # Gemma: norms stored as w + 1


_CONVERSIONS: dict[str, _Conversion] = {
    "llama": _Conversion(gguf.MODEL_ARCH.LLAMA, True, 0.0),
    "mistral": _Conversion(gguf.MODEL_ARCH.LLAMA, True, 0.0),
    "qwen2": _Conversion(gguf.MODEL_ARCH.QWEN2, False, 0.0),
    "qwen3": _Conversion(gguf.MODEL_ARCH.QWEN3, False, 0.0),
    "gemma3_text": _Conversion(gguf.MODEL_ARCH.GEMMA3, False, 1.0),
}

_FILE_TYPES = {
    gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
    gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
    gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
}


def permute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per head, row ``s * hd/2 + j`` (s in {0, 1}) moves to ``2j + s``: half-split -> adjacent-pair RoPE."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_bases(config) -> tuple[float, float | None]:
    """(RoPE base of full-attention layers, of sliding layers or None), from transformers >= 5
    ``rope_parameters`` (per layer type or flat) or the older ``rope_theta`` / ``rope_local_base_freq``."""
    params = getattr(config, "rope_parameters", None)
    if params:
        sliding = params.get("sliding_attention")
        return float(params.get("full_attention", params)["rope_theta"]), (
            None if sliding is None else float(sliding["rope_theta"]))
    local = getattr(config, "rope_local_base_freq", None)
    return float(config.rope_theta), None if local is None else float(local)


def _write_hparams(writer: gguf.GGUFWriter, config, conv: _Conversion) -> None:
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    full_base, sliding_base = rope_bases(config)
    writer.add_rope_freq_base(full_base)
    if sliding_base is not None:
        writer.add_rope_freq_base_swa(sliding_base)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if conv.arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim or config.hidden_size // config.num_attention_heads)
    if conv.arch == gguf.MODEL_ARCH.GEMMA3:
        writer.add_sliding_window(config.sliding_window)
        if config.final_logit_softcapping:
            writer.add_final_logit_softcapping(config.final_logit_softcapping)


def _write_vocab(writer: gguf.GGUFWriter, vocab_size: int) -> None:
    """A placeholder SentencePiece vocabulary: <unk>, <s>, </s>, then one piece per remaining id."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"\u2581t{i}" for i in range(3, vocab_size)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.NORMAL] * (vocab_size - 3)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(vocab_size)])
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def _tensor_type(gguf_name: str, n_dims: int, qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    if n_dims <= 1 or gguf_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    return qtype


def write_gguf(model: PreTrainedModel, path: str | Path,
               qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32, name: str | None = None,
               vocab: Callable[[gguf.GGUFWriter, int], None] = _write_vocab) -> Path:
    """Convert ``model`` to a GGUF file at ``path``; matrices stored as ``qtype`` (see module docstring).
    ``vocab`` writes the ``tokenizer.*`` metadata (default: the placeholder vocabulary)."""
    path = Path(path)
    config = model.config
    conv = _CONVERSIONS[config.model_type]
    arch_name = gguf.MODEL_ARCH_NAMES[conv.arch]
    tensor_map = gguf.get_tensor_name_map(conv.arch, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, arch_name)

    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue                                   # tied: the file has no output.weight
        data = tensor.detach().float()
        if conv.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute_rows(data, config.num_attention_heads)
        if conv.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute_rows(data, config.num_key_value_heads)
        if hf_name.endswith("norm.weight"):
            data = data + conv.norm_shift
        gguf_name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for tensor {hf_name!r} of {arch_name}")
        array = data.numpy()
        tensor_qtype = _tensor_type(gguf_name, array.ndim, qtype)
        try:
            raw = gguf.quants.quantize(array, tensor_qtype)
        except gguf.QuantError:
            tensor_qtype = gguf.GGMLQuantizationType.F16
            raw = gguf.quants.quantize(array, tensor_qtype)
        writer.add_tensor(gguf_name, raw, raw_dtype=tensor_qtype)

    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or f"tiny-{config.model_type}")
    _write_hparams(writer, config, conv)
    writer.add_file_type(_FILE_TYPES[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab(writer, config.vocab_size)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_ids(n: int, seed: int, vocab: int = VOCAB) -> torch.Tensor:
    """(1, n) random token ids in [3, vocab): ordinary pieces, never the special ids."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (1, n), generator=gen)


@torch.no_grad()
def hf_logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """transformers' float32 logits (1, T, V) for one forward over ``ids`` without a cache."""
    return model(input_ids=ids, use_cache=False).logits.float()
