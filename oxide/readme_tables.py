"""The README's generated tables: supported architectures and GGUF tensor types.

``python -m oxide.readme_tables`` prints them; a test fails when README.md is out of date.
"""

from __future__ import annotations

from .quant import SUPPORTED_TYPES, bits_per_weight, block_geometry, qtype_name
from .registry import markdown_table as architectures_table


def quant_types_table() -> str:
    lines = ["| GGUF type | weights per block | bytes per block | bits per weight |", "|---|---|---|---|"]
    for qtype in sorted(SUPPORTED_TYPES, key=lambda t: (bits_per_weight(t), qtype_name(t))):
        geometry = block_geometry(qtype)
        lines.append(f"| {qtype_name(qtype)} | {geometry.block_size} | {geometry.type_size} | "
                     f"{bits_per_weight(qtype):.4g} |")
    return "\n".join(lines)


def tables() -> str:
    return f"{architectures_table()}\n\n{quant_types_table()}"


if __name__ == "__main__":
    print(tables())
