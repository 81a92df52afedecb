"""Rotary position embedding: the plain frequencies and one named function per scaling.

Plain RoPE rotates dimension pair i of a head by ``position * inv_freq[i]`` with
``inv_freq[i] = theta ** (-2i / head_dim)``, i < head_dim / 2. A scaling changes ``inv_freq`` and may
scale cos and sin by an attention factor. Each function below takes the head size, the base, the
:class:`~oxide.config.RopeScaling` and ``end`` (one past the last position of the sequence so far:
only ``dynamic`` and ``longrope`` look at it) and returns ``(inv_freq, attention_factor)``.
The formulas are those of the papers as transformers' ``modeling_rope_utils`` computes them
(float32 ``inv_freq``), so logits agree to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import ops
from ..config import RopeScaling

Frequencies = tuple[torch.Tensor, float]


def plain_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """``theta ** (-2i / head_dim)`` for i < head_dim / 2, float32: (head_dim / 2,)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta ** exponents)


def plain(head_dim: int, theta: float, scaling: RopeScaling, end: int) -> Frequencies:
    """No scaling."""
    return plain_inv_freq(head_dim, theta), 1.0


def linear(head_dim: int, theta: float, scaling: RopeScaling, end: int) -> Frequencies:
    """Position interpolation: ``inv_freq / factor`` (positions / factor)."""
    return plain_inv_freq(head_dim, theta) / scaling.factor, 1.0


def llama3(head_dim: int, theta: float, scaling: RopeScaling, end: int) -> Frequencies:
    """Llama 3.1: with ``L`` the original context and wavelength ``w = 2 pi / inv_freq``, frequencies with
    ``w < L / high_freq_factor`` stay, those with ``w > L / low_freq_factor`` are divided by ``factor``, and
    between them ``inv_freq * ((1 - s) / factor + s)`` with ``s = (L / w - low) / (high - low)``."""
    inv_freq = plain_inv_freq(head_dim, theta)
    return inv_freq / llama3_divisors(inv_freq, scaling), 1.0


def llama3_divisors(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """The per-frequency divisors of :func:`llama3` (what llama.cpp's converter stores as ``rope_freqs``)."""
    context, low, high = scaling.original_max_position_embeddings, scaling.low_freq_factor, scaling.high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)
    divisors = 1.0 / ((1 - smooth) / scaling.factor + smooth)
    divisors = torch.where(wavelength < context / high, torch.ones_like(divisors), divisors)
    return torch.where(wavelength > context / low, torch.full_like(divisors, scaling.factor), divisors)


def freq_factors(head_dim: int, theta: float, scaling: RopeScaling, end: int) -> Frequencies:
    """Stored per-frequency divisors (GGUF ``rope_freqs``): ``inv_freq / factors``."""
    return plain_inv_freq(head_dim, theta) / torch.tensor(scaling.factors, dtype=torch.float32), 1.0


def dynamic(head_dim: int, theta: float, scaling: RopeScaling, end: int) -> Frequencies:
    """Dynamic NTK: past the original context ``L``, the base becomes
    ``theta * (factor * end / L - (factor - 1)) ** (head_dim / (head_dim - 2))``; within it, plain."""
    context = scaling.original_max_position_embeddings
    length = max(end, context)
    base = theta * (scaling.factor * length / context - (scaling.factor - 1)) ** (head_dim / (head_dim - 2))
    return plain_inv_freq(head_dim, base), 1.0


def longrope(head_dim: int, theta: float, scaling: RopeScaling, end: int) -> Frequencies:
    """LongRoPE (Phi-3 ``su``): ``inv_freq / long_factor`` once the sequence passes the original context,
    ``inv_freq / short_factor`` within it; cos and sin are multiplied by ``attention_factor``."""
    long = end > scaling.original_max_position_embeddings
    divisors = torch.tensor(scaling.long_factor if long else scaling.short_factor, dtype=torch.float32)
    return plain_inv_freq(head_dim, theta) / divisors, scaling.attention_factor


def yarn(head_dim: int, theta: float, scaling: RopeScaling, end: int) -> Frequencies:
    """YaRN: with ``L`` the original context, dimension pair i turns ``L * inv_freq[i] / 2 pi`` times over it;
    pairs between ``beta_fast`` and ``beta_slow`` turns (the correction range, as pair indices ``low``,
    ``high``, rounded outwards when ``truncate``) ramp linearly from the plain frequency (fast pairs) to
    ``inv_freq / factor`` (slow ones); cos and sin are scaled by ``attention_factor``."""
    context, factor = scaling.original_max_position_embeddings, scaling.factor

    def pair_of(turns: float) -> float:   # the (fractional) dimension whose pair turns `turns` times over L
        return head_dim * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_of(scaling.beta_fast), pair_of(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low if high != low else 0.001)).clamp(0, 1)
    inv_freq = plain_inv_freq(head_dim, theta)
    return inv_freq / factor * ramp + inv_freq * (1 - ramp), scaling.attention_factor


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction ``0.1 * mscale * ln(factor) + 1`` (1 when not stretched)."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1.0 else 1.0


SCALINGS: dict[str, Callable[[int, float, RopeScaling, int], Frequencies]] = {
    "default": plain,
    "linear": linear,
    "llama3": llama3,
    "freq_factors": freq_factors,
    "dynamic": dynamic,
    "longrope": longrope,
    "yarn": yarn,
}


def _regime(scaling: RopeScaling, end: int) -> int:
    """A key that changes exactly when the frequencies do: the sequence length for ``dynamic`` past the
    original context, long or short for ``longrope``, nothing for the others."""
    context = scaling.original_max_position_embeddings
    if scaling.rope_type == "dynamic":
        return max(end, context)
    if scaling.rope_type == "longrope":
        return int(end > context)
    return 0


class RotaryEmbedding:
    """cos and sin tables of one RoPE (a base and a scaling) for the positions of a forward step.

    The frequencies live in one buffer, rewritten in place when the scaling's regime changes
    (:meth:`prepare`), so that a recorded decode step (:class:`oxide.models.step.DecodeStep`), which
    reads the buffer, stays valid: the step prepares the frequencies before each replay.
    """

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling, device: torch.device) -> None:
        self.head_dim, self.theta, self.scaling, self.device = head_dim, theta, scaling, device
        self._compute = SCALINGS[scaling.rope_type]
        self._key: int | None = None
        self._inv_freq = torch.empty(head_dim // 2, dtype=torch.float32, device=device)
        self._attention_factor = 1.0
        self.prepare(0)

    def prepare(self, end: int) -> None:
        """Make the frequencies those of a sequence whose length after this step is ``end``."""
        key = self.regime_for(end)
        if key != self._key:
            inv_freq, self._attention_factor = self._compute(self.head_dim, self.theta, self.scaling, end)
            self._inv_freq.copy_(inv_freq)
            self._key = key

    def regime_for(self, end: int) -> int:
        """The regime of a sequence whose length after this step is ``end``."""
        return _regime(self.scaling, end)

    @property
    def regime(self) -> int | None:
        """The scaling's regime the frequencies were computed for (see :meth:`prepare`)."""
        return self._key

    def cos_sin(self, positions: torch.Tensor, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (T, head_dim / 2), for absolute ``positions`` (T,) of a sequence whose length after
        this step is ``end``, both times the scaling's attention factor."""
        self.prepare(end)
        return ops.rope_cos_sin(positions, self._inv_freq, self._attention_factor)
