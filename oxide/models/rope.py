"""Rotary position embedding frequencies.

``inv_freq[i] = 1 / (theta ** (2i / head_dim))`` for i < head_dim / 2, divided by per-frequency
factors when the model ships them (GGUF ``rope_freqs``, Llama 3.1 style), with positions divided by
a linear scaling factor.
"""

from __future__ import annotations

import torch

from .. import ops


class RotaryEmbedding:
    def __init__(self, head_dim: int, theta: float, device: torch.device, *, freq_factors: torch.Tensor | None = None,
                 linear_factor: float = 1.0) -> None:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        inv_freq = 1.0 / (theta ** exponents)                           # (hd/2,)
        if freq_factors is not None:
            inv_freq = inv_freq / freq_factors.float().cpu()
        self.inv_freq = (inv_freq / linear_factor).to(device)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (T, head_dim / 2), for absolute ``positions`` (T,)."""
        return ops.rope_cos_sin(positions, self.inv_freq)
