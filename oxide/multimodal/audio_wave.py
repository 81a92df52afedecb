"""Time-domain steps on (channels, samples) waveforms: mono mixdown, pre-emphasis, silence trim, pad/trim."""

from __future__ import annotations

import torch

from oxide.multimodal.audio_loudness import biquad


def mixdown(wave: torch.Tensor) -> torch.Tensor:
    """Mono (1, samples): the mean of the channels of ``wave`` (channels, samples)."""
    return wave.mean(dim=0, keepdim=True)


def pre_emphasis(wave: torch.Tensor, coefficient: float) -> torch.Tensor:
    """``y[n] = x[n] - coefficient * x[n-1]`` along the last axis, with ``y[0] = x[0]``."""
    if coefficient == 0.0:
        return wave
    return torch.cat([wave[..., :1], wave[..., 1:] - coefficient * wave[..., :-1]], dim=-1)


def de_emphasis(wave: torch.Tensor, coefficient: float) -> torch.Tensor:
    """The inverse of :func:`pre_emphasis`: ``y[n] = x[n] + coefficient * y[n-1]``."""
    if coefficient == 0.0:
        return wave
    return biquad(wave, (1.0, 0.0, 0.0), (1.0, -coefficient, 0.0))


def trim_silence(wave: torch.Tensor, sampling_rate: int, top_db: float, frame_s: float = 0.025) -> torch.Tensor:
    """``wave`` without its leading and trailing silence.

    Silence: the non-overlapping frames of ``frame_s`` seconds (25 ms) whose RMS over all channels is more than
    ``top_db`` dB below the loudest frame's. The cut falls on frame boundaries; an all-silent waveform (all
    zeros) is returned whole.
    """
    frame = max(1, round(frame_s * sampling_rate))
    n_frames = -(-wave.shape[-1] // frame)
    padded = torch.nn.functional.pad(wave, (0, n_frames * frame - wave.shape[-1]))
    rms = padded.reshape(wave.shape[0], n_frames, frame).square().mean(dim=(0, 2)).sqrt()  # (frames,)
    loud = (rms > rms.max() * 10.0 ** (-top_db / 20.0)).nonzero()
    if loud.numel() == 0:
        return wave
    return wave[..., int(loud[0]) * frame:(int(loud[-1]) + 1) * frame]


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """``wave`` cut to its first ``length`` samples, or padded with zeros at the end up to ``length``."""
    missing = length - wave.shape[-1]
    if missing <= 0:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, missing))
