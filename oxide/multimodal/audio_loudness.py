"""Loudness per ITU-R BS.1770-4: K-weighting, gated integrated loudness (LUFS), normalisation to a target.

K-weighting is two biquads: a high shelf (+4 dB above ~1.7 kHz, the head's acoustic effect) and the RLB
high-pass (~38 Hz). BS.1770 gives their coefficients at 48 kHz only; here they come from the analog
prototypes those coefficients were derived from (f0, Q and gain as fitted by libebur128 and pyloudnorm), through
the bilinear transform with pre-warping, so any sample rate gets the same response (at 48 kHz the published
coefficients, to 1e-8).

Integrated loudness: the mean square ``z_ij`` of each channel i over 400 ms blocks j with 75 % overlap (a 100 ms
step), block loudness ``l_j = -0.691 + 10 log10(sum_i G_i z_ij)``; the blocks above the absolute gate of -70 LUFS
give a relative gate 10 LU below their loudness; the loudness of the blocks above both gates is the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from oxide.errors import MediaError
from oxide.log import get_logger

log = get_logger("audio")

BLOCK_S = 0.4  # gating block length, seconds
STEP_S = 0.1  # 75 % overlap
ABSOLUTE_GATE = -70.0  # LUFS
RELATIVE_GATE = -10.0  # LU below the absolutely gated loudness
OFFSET = -0.691  # dB; makes a 1 kHz sine read its RMS level in dBFS after K-weighting

# Analog prototypes of BS.1770's two stages: (f0 Hz, Q, shelf gain dB).
SHELF = (1681.974450955533, 0.7071752369554196, 3.999843853973347)
HIGH_PASS = (38.13547087602444, 0.5003270373238773)

Biquad = tuple[tuple[float, float, float], tuple[float, float, float]]  # (b0, b1, b2), (1, a1, a2)


def k_weighting(sampling_rate: int) -> list[Biquad]:
    """The two K-weighting biquads (shelf, then high-pass) at ``sampling_rate``, ``a0`` normalised to 1."""
    f0, q, gain_db = SHELF
    k = math.tan(math.pi * f0 / sampling_rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh ** 0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = ((vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0)
    poles = (1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0)
    f0, q = HIGH_PASS
    k = math.tan(math.pi * f0 / sampling_rate)
    a0 = 1.0 + k / q + k * k
    high_pass = (1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0)
    return [(shelf, poles), ((1.0, -2.0, 1.0), high_pass)]


def biquad(x: torch.Tensor, b: Sequence[float], a: Sequence[float], block: int = 2048) -> torch.Tensor:
    """Filter ``x`` (..., samples) by ``y[n] = b0 x[n] + b1 x[n-1] + b2 x[n-2] - a1 y[n-1] - a2 y[n-2]``.

    ``a[0]`` must be 1; the state starts at zero. Exact (no truncated impulse response) and vectorised: in the
    state-space form ``s[n+1] = A s[n] + B x[n]``, ``y[n] = C s[n] + D x[n]`` (transposed direct form II), each
    block of ``block`` samples is the zero-state response (an FFT convolution with the first ``block`` samples of
    the impulse response) plus ``C A^m s0`` from the state ``s0`` it starts in; only the carry of the state from
    block to block, ``s' = A^block s0 + sum_k A^(block-1-k) B x[k]``, runs in a loop.
    """
    b0, b1, b2 = (float(v) for v in b)
    _, a1, a2 = (float(v) for v in a)
    f64 = dict(dtype=torch.float64, device=x.device)
    a_mat = torch.tensor([[-a1, 1.0], [-a2, 0.0]], **f64)
    b_vec = torch.tensor([b1 - a1 * b0, b2 - a2 * b0], **f64)
    powers = [torch.eye(2, **f64)]  # A^0 .. A^block
    for _ in range(block):
        powers.append(a_mat @ powers[-1])
    power = torch.stack(powers)  # (block + 1, 2, 2)
    to_output = power[:block, 0, :]  # (block, 2): C A^m with C = (1, 0)
    impulse = torch.cat([torch.tensor([b0], **f64), to_output[:-1] @ b_vec])  # (block,): D, C A^(m-1) B
    to_state = (power[:block] @ b_vec).flip(0)  # (block, 2): A^(block-1-k) B

    n = x.shape[-1]
    blocks = -(-n // block)
    xs = torch.nn.functional.pad(x.to(torch.float64), (0, blocks * block - n)).reshape(*x.shape[:-1], blocks, block)
    spectrum = torch.fft.rfft(xs, 2 * block) * torch.fft.rfft(impulse, 2 * block)
    y = torch.fft.irfft(spectrum, 2 * block)[..., :block]  # (..., blocks, block): zero-state part
    gathered = xs @ to_state  # (..., blocks, 2)
    states = torch.zeros_like(gathered)
    for j in range(1, blocks):
        states[..., j, :] = states[..., j - 1, :] @ power[block].T + gathered[..., j - 1, :]
    y = y + states @ to_output.T  # the zero-input part
    return y.reshape(*x.shape[:-1], blocks * block)[..., :n].to(x.dtype)


def integrated_loudness(wave: torch.Tensor, sampling_rate: int,
                        channel_weights: Sequence[float] | None = None) -> float:
    """Gated loudness of ``wave`` (channels, samples) in LUFS per BS.1770-4; ``-inf`` if every block is gated.

    ``channel_weights`` are the ``G_i``: 1.0 for every channel by default (mono, stereo, L/R/C); use 1.41 for
    the surround channels of a 5.1 mix and leave its LFE channel out. Raises :class:`MediaError` for audio
    shorter than one 400 ms block.
    """
    step = round(STEP_S * sampling_rate)
    length = 4 * step  # 400 ms, four steps: the overlap is exactly 75 %
    if wave.shape[-1] < length:
        raise MediaError(f"the waveform has {wave.shape[-1]} samples at {sampling_rate} Hz, shorter than the "
                         f"400 ms ({length} samples) that BS.1770 loudness needs; pad it or skip loudness")
    weights = torch.ones(wave.shape[0], dtype=torch.float64, device=wave.device)
    if channel_weights is not None:
        weights = torch.as_tensor(channel_weights, dtype=torch.float64, device=wave.device)
    filtered = wave.to(torch.float64)
    for b, a in k_weighting(sampling_rate):
        filtered = biquad(filtered, b, a)
    energy = torch.nn.functional.pad(filtered.square().cumsum(-1), (1, 0))  # (C, N + 1)
    starts = torch.arange(0, wave.shape[-1] - length + 1, step, device=wave.device)
    mean_square = (energy[:, starts + length] - energy[:, starts]) / length  # (C, blocks)
    power = weights @ mean_square  # (blocks,)
    block_loudness = OFFSET + 10.0 * torch.log10(power)
    kept = block_loudness > ABSOLUTE_GATE
    if not kept.any():
        return -math.inf
    relative = OFFSET + 10.0 * math.log10(float(power[kept].mean())) + RELATIVE_GATE
    kept &= block_loudness > relative
    return OFFSET + 10.0 * math.log10(float(power[kept].mean()))


def normalize_loudness(wave: torch.Tensor, sampling_rate: int, target_lufs: float,
                       channel_weights: Sequence[float] | None = None) -> torch.Tensor:
    """``wave`` scaled so that its integrated loudness is ``target_lufs``; silence (all gated) is returned as is.

    The gain is not limited: peaks may exceed 1.0 (models take floats, so nothing clips).
    """
    loudness = integrated_loudness(wave, sampling_rate, channel_weights)
    if math.isinf(loudness):
        log.warning("loudness: every block is below -70 LUFS; the waveform is left as it is")
        return wave
    return wave * 10.0 ** ((target_lufs - loudness) / 20.0)
