"""Builder for Hugging Face model directories (config.json + safetensors)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from gguf import get_tensor_name_map
from gguf.constants import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR

from ..errors import ModelFormatError
from ..log import get_logger
from ..quant import GGMLType, QuantTensor
from ..config import ModelConfig
from ..registry import ArchSpec, detect_hf
from ..sources import read_hf_config
from ..weights.safetensors import SafetensorsReader
from .decoder import DecoderLM

if TYPE_CHECKING:
    from .vision.model import VisionModel
from .transforms import cast_vectors, fold_norm_offset
from ..validation import Values, check_tensors, layer_indices
from .weights import collect_weights, gguf_tensor_name

log = get_logger("load")

_DTYPE_TO_GGML = {torch.float32: GGMLType.F32, torch.float16: GGMLType.F16, torch.bfloat16: GGMLType.BF16}


def as_quant(tensor: torch.Tensor, name: str, source: Path | str) -> QuantTensor:
    """A dense checkpoint tensor as a QuantTensor of type F32/F16/BF16 (its bytes, not a copy)."""
    qtype = _DTYPE_TO_GGML.get(tensor.dtype)
    if qtype is None:
        raise ModelFormatError(f"{source}: tensor {name!r} has dtype {tensor.dtype}; oxide reads f32, f16 and bf16 "
                               f"checkpoints")
    raw = tensor.contiguous().view(torch.uint8).reshape(-1)
    return QuantTensor(raw, qtype, tuple(tensor.shape), name=name)


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The language model's settings: a multimodal config.json (Llava, Pixtral) nests them in ``text_config``,
    which then overrides the outer keys (as llama.cpp's converter reads it)."""
    inner = raw.get("text_config")
    return {**raw, **inner} if isinstance(inner, dict) else raw


def text_tensor_name(name: str) -> str:
    """A checkpoint name without the ``language_model.`` segment under which multimodal models keep their
    language model (``language_model.model.layers.0...`` and ``model.language_model.layers.0...`` alike)."""
    return name.replace("language_model.", "", 1)


_EXPERT = re.compile(r"\.experts\.(\d+)\.")   # a per-expert tensor: ...mlp.experts.7.up_proj.weight


def hf_config(directory: Path) -> tuple[ArchSpec, ModelConfig, SafetensorsReader, dict[str, str | list[str]]]:
    """Read config.json and list the checkpoint: (spec, config, reader, GGUF name -> checkpoint name).

    Checkpoint names are mapped to roles through gguf-py's tables, so both front doors share one naming.
    Experts kept one tensor each (``experts.<e>.<proj>``) map, as gguf-py names their stack, to the list
    of their names in expert order; the lookup stacks them (GGUF's ``ffn_*_exps`` layout).
    """
    source = str(directory / "config.json")
    outer = read_hf_config(directory)
    spec = detect_hf(outer, source)
    raw_config = text_config(outer)
    values = Values(raw_config, source, gguf=False)
    n_layers = values.integer("num_hidden_layers", "layers")    # sizes the name maps below
    reader = SafetensorsReader(directory)
    arch = next(a for a, n in MODEL_ARCH_NAMES.items() if n == spec.gguf_tables)
    # gguf-py maps only the tensors llama.cpp's graph for the architecture has; the plain block's (Llama's)
    # names come second, for what it lacks: the dense MLPs among Qwen-MoE's expert layers (mlp_only_layers)
    name_maps = (get_tensor_name_map(MODEL_ARCH(arch), n_layers), get_tensor_name_map(MODEL_ARCH.LLAMA, n_layers))
    hf_names: dict[str, str | list[str]] = {}
    experts: dict[str, dict[int, str]] = {}
    for name in reader.names():
        # DeepSeek V3's router bias is a buffer named like a weight; gguf-py names it as a bias
        plain = text_tensor_name(name).replace(".e_score_correction_bias", ".e_score_correction.bias")
        expert = _EXPERT.search(plain)
        key = _EXPERT.sub(".experts.", plain, count=1) if expert else plain
        found = next(filter(None, (m.get_type_and_name(key, try_suffixes=(".weight", ".bias")) for m in name_maps)),
                     None)
        if found is None:
            log.debug("%s: ignoring tensor %s", directory, name)
        elif expert:
            experts.setdefault(found[1], {})[int(expert.group(1))] = name
        else:
            hf_names[found[1]] = name
    for stacked, by_index in experts.items():
        missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
        if missing:
            raise ModelFormatError(f"{directory}: expert {missing[0]} of {stacked!r} is missing from the checkpoint "
                                   f"(it has experts {sorted(by_index)})")
        hf_names[stacked] = [by_index[e] for e in range(len(by_index))]
    tied = gguf_tensor_name(MODEL_TENSOR.OUTPUT, None, "weight") not in hf_names or \
        values.flag("tie_word_embeddings", False)
    config = spec.load_adapter().config_from_hf(raw_config, tied=tied, source=source)
    embed_name = hf_names.get(gguf_tensor_name(MODEL_TENSOR.TOKEN_EMBD, None, "weight"))
    check_tensors(config, source=f"{directory}", embedding=None if not isinstance(embed_name, str) else
                  reader.describe(embed_name)[1], embedding_name=embed_name or "model.embed_tokens.weight",
                  layers_found=layer_indices(reader.names(), text_tensor_name),
                  extra_layers=values.integer("num_nextn_predict_layers", "count", 0),
                  keys={name: f"config.json's {name}" for name in ("hidden_size", "vocab_size", "num_hidden_layers")})
    return spec, config, reader, hf_names


def build_from_hf_dir(directory: Path, device: torch.device, dtype: torch.dtype) -> DecoderLM:
    """Build the model of a Hugging Face directory (config.json + safetensors)."""
    spec, config, reader, hf_names = hf_config(directory)

    def lookup(role: MODEL_TENSOR, layer: int | None, suffix: str) -> QuantTensor | None:
        name = hf_names.get(gguf_tensor_name(role, layer, suffix))
        if isinstance(name, list):          # one tensor per expert: stacked (a copy) as (E, out, in)
            experts = [reader.get(n) for n in name]
            odd = next((n for n, t in zip(name, experts) if (t.shape, t.dtype) != (experts[0].shape, experts[0].dtype)),
                       None)
            if odd is not None:
                shape = tuple(experts[name.index(odd)].shape)
                raise ModelFormatError(f"{reader.files[odd]}: expert tensor {odd!r} is {shape} but {name[0]!r} is "
                                       f"{tuple(experts[0].shape)} (dtypes must match too); the checkpoint is corrupt")
            return as_quant(torch.stack(experts), _EXPERT.sub(".experts.", name[0], count=1), reader.files[name[0]])
        return None if name is None else as_quant(reader.get(name), name, reader.files[name])

    def describe(role: MODEL_TENSOR, layer: int | None, suffix: str) -> str:
        gguf_name = gguf_tensor_name(role, layer, suffix)
        name = hf_names.get(gguf_name, f"the checkpoint tensor for {gguf_name}")
        return f"{directory}: {name if isinstance(name, str) else _EXPERT.sub('.experts.*.', name[0], count=1)}"

    for split in spec.load_adapter().source_transforms:
        lookup, describe = split(lookup, describe, config)
    weights = collect_weights(config, lookup, describe)
    fold_norm_offset(weights, config)
    weights.move_matrices(device)
    cast_vectors(weights, device)
    return DecoderLM(config, weights, device, dtype)


def build_vision_from_hf_dir(directory: Path, device: torch.device, dtype: torch.dtype
                             ) -> tuple[VisionModel | None, str]:
    """The vision tower and projector of a Hugging Face directory, and a sentence saying what was decided:
    (None, why) for a text-only model or a vision tower oxide does not run (see :mod:`oxide.models.vision`)."""
    from .vision.model import build_vision

    return build_vision(directory, read_hf_config(directory), SafetensorsReader(directory), device, dtype)
