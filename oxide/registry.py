"""The architecture registry: one table, detection from metadata only.

Each :class:`ArchSpec` names an architecture as oxide, GGUF (``general.architecture``) and Hugging
Face (``model_type`` / ``architectures``) spell it, and where its adapter lives. Adapters are
imported only when a model of that architecture is loaded, keeping ``import oxide`` light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UnsupportedArchitecture
from .log import get_logger
from .validation import Values

if TYPE_CHECKING:
    from .models.arch.base import ArchAdapter

log = get_logger("load")


@dataclass(frozen=True)
class ArchSpec:
    name: str
    adapter: str                          # "module:attribute" of the ArchAdapter
    gguf_names: tuple[str, ...]           # general.architecture values
    hf_model_types: tuple[str, ...]       # config.json model_type values
    hf_architectures: tuple[str, ...]     # config.json architectures entries
    family: str
    tensor_tables: str = ""               # gguf-py architecture whose tensor-name tables apply; "": gguf_names[0]
    gguf_experts: bool = False            # of the specs sharing a GGUF name, the one for files with experts

    @property
    def gguf_tables(self) -> str:
        return self.tensor_tables or self.gguf_names[0]

    def load_adapter(self) -> ArchAdapter:
        module, attribute = self.adapter.split(":")
        return getattr(importlib.import_module(module), attribute)


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", "oxide.models.arch.llama:LLAMA", ("llama",), ("llama",), ("LlamaForCausalLM",),
             "Llama 2/3, TinyLlama, SmolLM 1/2, Yi"),
    ArchSpec("mistral", "oxide.models.arch.llama:MISTRAL", ("mistral",), ("mistral",), ("MistralForCausalLM",),
             "Mistral 7B (llama.cpp writes these GGUFs as llama)",
             tensor_tables="llama"),
    ArchSpec("qwen2", "oxide.models.arch.qwen:QWEN2", ("qwen2",), ("qwen2",), ("Qwen2ForCausalLM",), "Qwen 2 / 2.5"),
    ArchSpec("mixtral", "oxide.models.arch.llama:MIXTRAL", ("llama",), ("mixtral",), ("MixtralForCausalLM",),
             "Mixtral 8x7B / 8x22B (llama.cpp writes these GGUFs as llama with experts)", gguf_experts=True),
    ArchSpec("qwen3", "oxide.models.arch.qwen:QWEN3", ("qwen3",), ("qwen3",), ("Qwen3ForCausalLM",), "Qwen 3 (dense)"),
    ArchSpec("qwen2moe", "oxide.models.arch.qwen:QWEN2MOE", ("qwen2moe",), ("qwen2_moe",), ("Qwen2MoeForCausalLM",),
             "Qwen 1.5 / 2 MoE"),
    ArchSpec("qwen3moe", "oxide.models.arch.qwen:QWEN3MOE", ("qwen3moe",), ("qwen3_moe",), ("Qwen3MoeForCausalLM",),
             "Qwen 3 MoE (30B-A3B, 235B-A22B)"),
    ArchSpec("gemma", "oxide.models.arch.gemma:GEMMA", ("gemma",), ("gemma",), ("GemmaForCausalLM",), "Gemma (1)"),
    ArchSpec("gemma2", "oxide.models.arch.gemma:GEMMA2", ("gemma2",), ("gemma2",), ("Gemma2ForCausalLM",), "Gemma 2"),
    ArchSpec("gemma3", "oxide.models.arch.gemma3:GEMMA3", ("gemma3",), ("gemma3_text",), ("Gemma3ForCausalLM",), "Gemma 3 (text)"),
    ArchSpec("deepseek", "oxide.models.arch.deepseek:DEEPSEEK", ("deepseek2",), ("deepseek_v2", "deepseek_v3"),
             ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"), "DeepSeek V2 / V2-Lite / V3"),
    ArchSpec("phi3", "oxide.models.arch.phi3:PHI3", ("phi3",), ("phi3",), ("Phi3ForCausalLM",),
             "Phi-3 / 3.5-mini, Phi-3-medium"),
    ArchSpec("pixtral", "oxide.models.arch.llama:PIXTRAL", (), ("llava",), ("LlavaForConditionalGeneration",),
             "Pixtral's language model (text only)", tensor_tables="llama"),
)


def supported_names() -> list[str]:
    return [spec.name for spec in ARCHITECTURES]


def detect_gguf(metadata: Mapping[str, Any], source: str = "") -> ArchSpec:
    """The spec for a GGUF file, from ``general.architecture`` (and ``<arch>.expert_count`` where one name
    covers a dense and an expert architecture: Llama and Mixtral)."""
    meta = Values(metadata, source, gguf=True)
    name = meta.string("general.architecture")
    experts = bool(meta.integer(f"{name}.expert_count", "experts", 0, per_layer=True))
    found = [spec for spec in ARCHITECTURES if name in spec.gguf_names]
    for spec in found:
        if len(found) == 1 or spec.gguf_experts == experts:
            return spec
    raise UnsupportedArchitecture(name, supported_names(), source)


def detect_hf(config: Mapping[str, Any], source: str = "") -> ArchSpec:
    """The spec for a Hugging Face ``config.json``: by ``architectures`` first, then ``model_type``; a
    multimodal wrapper that is not registered itself is detected by its ``text_config`` (its language
    model is what oxide runs; ``models/hf.py`` reads the settings and tensors through it)."""
    outer = Values(config, source, gguf=False)
    spec = _match_hf(outer)
    text = outer.mapping("text_config")
    if spec is None and text.values:
        spec = _match_hf(text)
        if spec is not None:
            log.info("%s: %s is not registered; loading its language model as %s", source, _hf_name(outer), spec.name)
    if spec is None:
        raise UnsupportedArchitecture(_hf_name(outer), supported_names(), source)
    return spec


def _hf_name(config: Values) -> str:
    """How a config.json names its model: its first ``architectures`` entry, else its ``model_type``."""
    return (list(config.strings("architectures", [])) or [config.string("model_type", "(no model_type)")])[0]


def _match_hf(config: Values) -> ArchSpec | None:
    for arch in config.strings("architectures", []):
        for spec in ARCHITECTURES:
            if arch in spec.hf_architectures:
                return spec
    model_type = config.string("model_type", None)
    return next((spec for spec in ARCHITECTURES if model_type in spec.hf_model_types), None)


def markdown_table() -> str:
    """The README's table of supported architectures."""
    lines = ["| oxide | GGUF `general.architecture` | HF `model_type` | models |", "|---|---|---|---|"]
    for spec in ARCHITECTURES:
        gguf_names = ", ".join(spec.gguf_names) or f"(written as {spec.gguf_tables})"
        lines.append(f"| {spec.name} | {gguf_names} | {', '.join(spec.hf_model_types)} | {spec.family} |")
    return "\n".join(lines)
