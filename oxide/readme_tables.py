"""The README's generated tables: supported architectures, GGUF tensor types and GGUF tokenizers.

``python -m oxide.readme_tables`` prints them; a test fails when README.md is out of date.
"""

from __future__ import annotations

import importlib

from .quant import SUPPORTED_TYPES, bits_per_weight, block_geometry, qtype_name
from .registry import markdown_table as architectures_table


def quant_types_table() -> str:
    lines = ["| GGUF type | weights per block | bytes per block | bits per weight |", "|---|---|---|---|"]
    for qtype in sorted(SUPPORTED_TYPES, key=lambda t: (bits_per_weight(t), qtype_name(t))):
        geometry = block_geometry(qtype)
        lines.append(f"| {qtype_name(qtype)} | {geometry.block_size} | {geometry.type_size} | "
                     f"{bits_per_weight(qtype):.4g} |")
    return "\n".join(lines)


def tokenizers_table() -> str:
    """GGUF ``tokenizer.ggml.model`` values and what runs them; the BPE pre-tokenizer names below it."""
    from .tokenizer.interface import GGUF_MODELS
    from .tokenizer.pretokenize import PRE_TOKENIZERS

    lines = ["| `tokenizer.ggml.model` | oxide class | algorithm |", "|---|---|---|"]
    for model, (module, name) in GGUF_MODELS.items():
        cls = getattr(importlib.import_module(module), name)
        lines.append(f"| {model} | `{name}` | {(cls.__doc__ or '').strip().splitlines()[0].rstrip('.')} |")
    lines.append("")
    lines.append(f"BPE pre-tokenizers (`tokenizer.ggml.pre`): {', '.join(f'`{n}`' for n in sorted(PRE_TOKENIZERS))}.")
    return "\n".join(lines)


def tables() -> str:
    return f"{architectures_table()}\n\n{quant_types_table()}\n\n{tokenizers_table()}"


if __name__ == "__main__":
    print(tables())
