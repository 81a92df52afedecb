"""Band-limited resampling: a Kaiser-windowed sinc low-pass applied as a polyphase filter.

The ratio ``new / orig`` is reduced to ``L / M``; output sample ``n`` lies at input time ``t = n M / L`` and
is ``sum_i x[i] h(i - t)`` with ``h(x) = 2 f_c sinc(2 f_c x) w(x)`` (frequencies in cycles per input sample,
``w`` a Kaiser window). Only ``L`` distinct phases of ``h`` occur, so they are tabulated once and applied with
one strided ``conv1d``.

The filter is designed from the lower of the two Nyquist frequencies ``f_n``: passband up to
``rolloff * f_n`` (0.9 by default), stopband from ``f_n`` on with at least ``attenuation_db`` (80 dB by
default) of rejection, cut-off in the middle of that transition band, and the length that Kaiser's formula
``N = (A - 7.95) / (2.285 * 2 pi * df)`` gives for that attenuation ``A`` and transition width ``df``. Content
above the new Nyquist frequency is thus removed before it can alias. The input is taken as zero outside its
samples; the output has ``ceil(samples * L / M)`` samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oxide.errors import InvalidOptionError, MediaError

MAX_TABLE = 1 << 24  # filter-table entries (L phases x taps) beyond which the reduced ratio is too fine


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int, *, rolloff: float = 0.9,
             attenuation_db: float = 80.0) -> torch.Tensor:
    """Resample ``wave`` (..., samples) from ``orig_rate`` to ``new_rate`` Hz along its last axis."""
    if not 0.0 < rolloff < 1.0 or attenuation_db < 21.0:
        raise InvalidOptionError(f"resample: rolloff={rolloff} must lie in (0, 1) and attenuation_db="
                                 f"{attenuation_db} must be at least 21 (a windowed sinc's least rejection)")
    if orig_rate == new_rate:
        return wave
    step = math.gcd(orig_rate, new_rate)
    up, down = new_rate // step, orig_rate // step  # L, M
    cutoff, half = _design(up, down, rolloff, attenuation_db)
    if up * (2 * half + down) > MAX_TABLE:
        raise MediaError(f"resampling {orig_rate} Hz to {new_rate} Hz reduces to the ratio {up}/{down}, whose "
                         f"filter table ({up} x {2 * half + down}) is too large; resample to a rate with a "
                         "simpler ratio to the original (e.g. 16000, 22050, 24000, 44100 or 48000 Hz)")
    table = _polyphase_table(up, down, cutoff, half, kaiser_beta(attenuation_db), wave.dtype, wave.device)
    lead = wave.shape[:-1]
    flat = wave.reshape(-1, 1, wave.shape[-1])  # (B, 1, N)
    padded = F.pad(flat, (half, half + down))
    blocks = F.conv1d(padded, table[:, None, :], stride=down)  # (B, L, N // M + 1): block j, phase p
    out = blocks.transpose(1, 2).reshape(flat.shape[0], -1)  # (B, L * blocks), sample j * L + p
    length = -(-wave.shape[-1] * up // down)
    return out[:, :length].reshape(*lead, length)


def kaiser_beta(attenuation_db: float) -> float:
    """Kaiser's window parameter for a stopband attenuation in dB (Kaiser 1974; Oppenheim & Schafer 7.6)."""
    a = attenuation_db
    if a > 50:
        return 0.1102 * (a - 8.7)
    if a >= 21:
        return 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    return 0.0


def _design(up: int, down: int, rolloff: float, attenuation_db: float) -> tuple[float, int]:
    """``(cutoff, half)``: the cut-off in cycles per input sample and the half-length in input samples."""
    nyquist = 0.5 * min(1.0, up / down)  # the lower Nyquist frequency, in cycles per input sample
    transition = (1.0 - rolloff) * nyquist
    half = math.ceil((attenuation_db - 7.95) / (2.285 * 2 * math.pi * transition) / 2)
    return 0.5 * (1.0 + rolloff) * nyquist, half


def _polyphase_table(up: int, down: int, cutoff: float, half: int, beta: float, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """The (L, 2 * half + M) table: row p holds ``h(i - t)`` for output phase p, input ``i = j M - half + k``.

    Phase p's output lies at ``t = j M + p M / L``; the inputs within ``half`` samples of it fall in
    ``[j M - half, j M + M + half)`` because ``p M / L < M``.
    """
    k = torch.arange(2 * half + down, dtype=torch.float64, device=device)
    phase = torch.arange(up, dtype=torch.float64, device=device)[:, None] * down / up
    x = k[None, :] - half - phase  # (L, K): input minus output time, in input samples
    inside = (1.0 - (x / half) ** 2).clamp(min=0.0)
    window = torch.special.i0(beta * inside.sqrt()) / torch.special.i0(torch.tensor(beta, dtype=torch.float64))
    window = torch.where(x.abs() <= half, window, torch.zeros_like(window))
    return (2 * cutoff * torch.sinc(2 * cutoff * x) * window).to(dtype)
