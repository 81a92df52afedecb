"""Spectra: STFT through ``torch.stft``, mel filterbanks (Slaney and HTK), log-mel, and Griffin-Lim back to audio.

Windows are periodic (``torch.hann_window`` / ``torch.hamming_window``), frames are centred (the signal is
reflect-padded by ``n_fft // 2`` on both sides), so ``samples // hop_length + 1`` frames come out, as in
``torch.stft`` and transformers' feature extractors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from oxide.errors import InvalidOptionError, MediaError

WINDOWS: dict[str, Callable[..., torch.Tensor]] = {"hann": torch.hann_window, "hamming": torch.hamming_window}
MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", None)
LOG_KINDS = ("whisper", "log10", "ln")
LOG_FLOOR = 1e-10  # power floor before the logarithm


def window(name: str, length: int, dtype: torch.dtype = torch.float64,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """The periodic window ``name`` ("hann" or "hamming") of ``length`` samples."""
    if name not in WINDOWS:
        raise InvalidOptionError(f"window={name!r} is not supported; use one of {', '.join(WINDOWS)}")
    return WINDOWS[name](length, periodic=True, dtype=dtype, device=device)


def stft(wave: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None,
         window_name: str = "hann") -> torch.Tensor:
    """Complex STFT (..., n_fft // 2 + 1, frames) of ``wave`` (..., samples), centred with reflect padding."""
    win_length = win_length or n_fft
    if wave.shape[-1] <= n_fft // 2:
        raise MediaError(f"the waveform has {wave.shape[-1]} samples; a centred STFT with n_fft={n_fft} needs "
                         f"more than {n_fft // 2}: pad it (e.g. with length=)")
    return torch.stft(wave, n_fft, hop_length, win_length, window(window_name, win_length, wave.dtype, wave.device),
                      center=True, pad_mode="reflect", return_complex=True)


def spectrogram(wave: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None,
                window_name: str = "hann", power: float = 2.0) -> torch.Tensor:
    """``|STFT|^power``: power (2.0) or magnitude (1.0) spectrogram, (..., n_fft // 2 + 1, frames)."""
    return stft(wave, n_fft, hop_length, win_length, window_name).abs().pow(power)


def hz_to_mel(hz: torch.Tensor, scale: str) -> torch.Tensor:
    """Hz to mels. HTK: ``2595 log10(1 + f / 700)``. Slaney (Auditory Toolbox): ``3 f / 200`` below 1 kHz,
    ``15 + 27 ln(f / 1000) / ln(6.4)`` above."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    logarithmic = 15.0 + torch.log(hz.clamp(min=1000.0) / 1000.0) * (27.0 / math.log(6.4))
    return torch.where(hz >= 1000.0, logarithmic, 3.0 * hz / 200.0)


def mel_to_hz(mel: torch.Tensor, scale: str) -> torch.Tensor:
    """The inverse of :func:`hz_to_mel`."""
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    logarithmic = 1000.0 * torch.exp((mel.clamp(min=15.0) - 15.0) * (math.log(6.4) / 27.0))
    return torch.where(mel >= 15.0, logarithmic, 200.0 * mel / 3.0)


def mel_filterbank(n_freqs: int, n_mels: int, sampling_rate: int, f_min: float = 0.0, f_max: float | None = None,
                   scale: str = "slaney", norm: str | None = "slaney") -> torch.Tensor:
    """Triangular mel filters (n_mels, n_freqs) over the STFT bins ``linspace(0, sampling_rate / 2, n_freqs)``.

    The ``n_mels + 2`` edges are equally spaced in mels from ``f_min`` to ``f_max`` (default: Nyquist); filter m
    rises from edge m to edge m + 1 and falls to edge m + 2, linearly in Hz. ``norm="slaney"`` scales filter m by
    ``2 / (f[m + 2] - f[m])`` (equal area); ``None`` leaves peaks at 1 (HTK).
    """
    if scale not in MEL_SCALES or norm not in MEL_NORMS:
        raise InvalidOptionError(f"mel scale={scale!r}, norm={norm!r}: use scale in {MEL_SCALES}, norm in {MEL_NORMS}")
    f_max = sampling_rate / 2 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sampling_rate / 2:
        raise InvalidOptionError(f"mel range f_min={f_min}, f_max={f_max} must satisfy 0 <= f_min < f_max <= "
                                 f"{sampling_rate / 2} (Nyquist at {sampling_rate} Hz)")
    limits = hz_to_mel(torch.tensor([f_min, f_max], dtype=torch.float64), scale)
    edges = mel_to_hz(torch.linspace(float(limits[0]), float(limits[1]), n_mels + 2, dtype=torch.float64), scale)
    freqs = torch.linspace(0.0, sampling_rate / 2, n_freqs, dtype=torch.float64)
    rising = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]  # (n_mels, n_freqs)
    falling = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    filters = torch.minimum(rising, falling).clamp(min=0.0)
    if norm == "slaney":
        filters = filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return filters


def log_mel(mel: torch.Tensor, kind: str) -> torch.Tensor:
    """Log of a mel power spectrogram (n_mels, frames), floored at ``LOG_FLOOR``.

    ``"whisper"``: ``x = log10(mel)``, ``max(x, x.max() - 8)``, then ``(x + 4) / 4`` (OpenAI Whisper); ``"log10"``
    and ``"ln"``: the plain logarithms.
    """
    floored = mel.clamp(min=LOG_FLOOR)
    if kind == "ln":
        return floored.log()
    logs = floored.log10()
    if kind == "log10":
        return logs
    if kind == "whisper":
        return (torch.maximum(logs, logs.max() - 8.0) + 4.0) / 4.0
    raise InvalidOptionError(f"log={kind!r} is not supported; use one of {LOG_KINDS}")


def undo_log_mel(features: torch.Tensor, kind: str) -> torch.Tensor:
    """The mel power spectrogram that :func:`log_mel` maps to ``features`` (what the floor and clamp cut stays cut)."""
    if kind == "ln":
        return features.exp()
    if kind == "log10":
        return 10.0 ** features
    if kind == "whisper":
        return 10.0 ** (4.0 * features - 4.0)
    raise InvalidOptionError(f"log={kind!r} is not supported; use one of {LOG_KINDS}")


def mel_to_linear(mel: torch.Tensor, filterbank: torch.Tensor) -> torch.Tensor:
    """A linear-frequency spectrogram (n_freqs, frames) whose mel projection approximates ``mel`` (n_mels, frames):
    the least-squares (pseudo-inverse) solution, with its negative values set to 0."""
    return (torch.linalg.pinv(filterbank.to(mel.dtype)) @ mel).clamp(min=0.0)


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop_length: int, win_length: int | None = None,
                window_name: str = "hann", n_iter: int = 32, momentum: float = 0.99, seed: int = 0) -> torch.Tensor:
    """A waveform of ``hop_length * (frames - 1)`` samples whose STFT magnitude approximates ``magnitude``
    (n_fft // 2 + 1, frames).

    Fast Griffin-Lim (Perraudin, Balazs and Søndergaard, 2013): from seeded random phases, alternate the
    projection onto consistent spectrograms ``c = STFT(ISTFT(t))`` with the projection onto the given magnitude,
    extrapolating ``t = c + momentum (c - c_prev)`` in between (``momentum=0`` is the original Griffin-Lim).
    """
    win_length = win_length or n_fft
    win = window(window_name, win_length, magnitude.dtype, magnitude.device)
    generator = torch.Generator(device=magnitude.device).manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype, device=magnitude.device)
    spec = magnitude * torch.polar(torch.ones_like(phase), 2 * math.pi * phase)
    previous = torch.zeros_like(spec)

    def inverse(s: torch.Tensor) -> torch.Tensor:
        return torch.istft(s, n_fft, hop_length, win_length, win, center=True)

    for _ in range(n_iter):
        consistent = torch.stft(inverse(spec), n_fft, hop_length, win_length, win, center=True, pad_mode="reflect",
                                return_complex=True)
        extrapolated = consistent + momentum * (consistent - previous)
        previous = consistent
        spec = magnitude * extrapolated / extrapolated.abs().clamp(min=1e-16)
    return inverse(spec)
