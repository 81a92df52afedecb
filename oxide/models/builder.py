"""Builders: a model source -> (ModelConfig, DecoderLM). Only this module knows file formats."""

from __future__ import annotations

from pathlib import Path

import torch
from gguf.constants import MODEL_TENSOR

from ..config import ModelConfig
from ..errors import ModelFormatError, UnsupportedQuantType
from ..log import format_bytes, get_logger
from ..quant import SUPPORTED_TYPES, QuantTensor, qtype_name
from ..registry import ArchSpec, detect_gguf
from ..validation import Values, check_tensors, layer_indices
from ..weights.gguf import GGUFFile
from .decoder import DecoderLM
from .transforms import cast_vectors, fold_norm_offset
from .weights import collect_weights, gguf_tensor_name

log = get_logger("load")


def gguf_config(gguf: GGUFFile) -> tuple[ArchSpec, ModelConfig]:
    """Detect the architecture and build its ModelConfig from metadata, checked against the tensors' shapes."""
    source = str(gguf.path)
    spec = detect_gguf(gguf.metadata, source)
    arch = gguf.architecture
    meta = Values(gguf.metadata, source, gguf=True)
    embed_name = gguf_tensor_name(MODEL_TENSOR.TOKEN_EMBD, None, "weight")
    embed = gguf.tensors.get(embed_name)
    if embed is None or len(embed.shape) != 2:
        raise ModelFormatError(f"{source}: tensor {embed_name!r} is missing or not 2-D; the file is not a language model")
    tied = gguf_tensor_name(MODEL_TENSOR.OUTPUT, None, "weight") not in gguf.tensors
    config = spec.load_adapter().config_from_gguf(
        gguf.metadata, arch_key=arch, vocab_size=meta.integer(f"{arch}.vocab_size", "vocab_size", embed.shape[0]),
        tied=tied, rope_tensors=_rope_tensors(gguf), source=source)
    check_tensors(config, source=source, embedding=embed.shape, embedding_name=embed_name,
                  layers_found=layer_indices(gguf.tensors),
                  extra_layers=meta.integer(f"{arch}.nextn_predict_layers", "count", 0),
                  keys={"hidden_size": f"{arch}.embedding_length", "vocab_size": f"{arch}.vocab_size",
                        "num_hidden_layers": f"{arch}.block_count"})
    return spec, config


_ROPE_TENSORS = (MODEL_TENSOR.ROPE_FREQS, MODEL_TENSOR.ROPE_FACTORS_LONG, MODEL_TENSOR.ROPE_FACTORS_SHORT)


def _rope_tensors(gguf: GGUFFile) -> dict[str, tuple[float, ...]]:
    """The RoPE factor vectors the file holds (llama.cpp's converter stores Llama 3 and LongRoPE scalings so)."""
    found = {}
    for role in _ROPE_TENSORS:
        name = gguf_tensor_name(role, None, "weight")
        info = gguf.tensors.get(name)
        if info is not None:
            values = QuantTensor(gguf.raw(name), info.qtype, info.shape, name=name).dequantize(torch.float32)
            found[name.removesuffix(".weight")] = tuple(values.reshape(-1).tolist())
    return found


def build_from_gguf(path: str | Path, device: torch.device, dtype: torch.dtype) -> tuple[GGUFFile, DecoderLM]:
    """Open a GGUF file and build its model; weights stay quantized and memory-mapped until used."""
    gguf = GGUFFile(path)
    spec, config = gguf_config(gguf)
    adapter = spec.load_adapter()

    def lookup(role: MODEL_TENSOR, layer: int | None, suffix: str) -> QuantTensor | None:
        name = gguf_tensor_name(role, layer, suffix)
        info = gguf.tensors.get(name)
        if info is None:
            return None
        if info.qtype not in SUPPORTED_TYPES:
            raise UnsupportedQuantType(
                f"{gguf.path}: tensor {name!r} has type {qtype_name(info.qtype)}, which oxide cannot dequantize; "
                f"supported: {', '.join(sorted(qtype_name(t) for t in SUPPORTED_TYPES))}. Use a file quantized "
                f"with one of these types"
            )
        return QuantTensor(gguf.raw(name), info.qtype, info.shape, name=name)

    def describe(role: MODEL_TENSOR, layer: int | None, suffix: str) -> str:
        return f"{gguf.path}: {gguf_tensor_name(role, layer, suffix)}"

    for split in adapter.source_transforms:
        lookup, describe = split(lookup, describe, config)
    weights = collect_weights(config, lookup, describe)
    for transform in adapter.gguf_transforms:
        log.debug("applying %s", transform.__name__)
        transform(weights, config)
    fold_norm_offset(weights, config)
    weights.move_matrices(device)
    cast_vectors(weights, device)
    log.info("%s: %s, %d layers, %s of weights", gguf.path.name, spec.name, config.num_hidden_layers,
             format_bytes(sum(m.nbytes for m in weights.matrices())))
    return gguf, DecoderLM(config, weights, device, dtype)
