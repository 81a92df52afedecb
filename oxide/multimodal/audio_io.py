"""Audio in: files through ``soundfile`` (libsndfile: WAV, FLAC, OGG, ...), arrays and tensors, validated.

Every source becomes a float64 tensor of shape (channels, samples) and its sampling rate. Integer PCM arrays
are scaled to [-1, 1) (``int16 / 2**15``, ``int32 / 2**31``), as soundfile scales integer files.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import BinaryIO, Union

import numpy as np
import torch

from oxide.errors import MediaError

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray, torch.Tensor,
                    Sequence[float]]

MAX_CHANNELS = 64  # beyond this a 2-D array is (samples, channels) by mistake, not (channels, samples)


def read_audio(audio: AudioSource, sampling_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Return ``(waveform, rate)``: a float64 tensor (channels, samples) and its sampling rate in Hz.

    ``audio`` is a path, the bytes of a file, a binary file object, or an array/tensor of samples: 1-D (mono)
    or 2-D (channels, samples), which needs ``sampling_rate``. For a file, ``sampling_rate`` may be omitted;
    given, it must equal the file's rate. Raises :class:`MediaError` for an unreadable, empty or non-finite
    input.
    """
    if isinstance(audio, (np.ndarray, torch.Tensor, list, tuple)):
        if sampling_rate is None:
            raise MediaError("an array of samples needs its rate: pass sampling_rate= (in Hz)")
        return check_waveform(_array_to_tensor(audio), "the waveform"), check_rate(sampling_rate)
    wave, rate, name = _decode(audio)
    if sampling_rate is not None and check_rate(sampling_rate) != rate:
        raise MediaError(f"{name} is sampled at {rate} Hz but sampling_rate={sampling_rate} was passed; "
                         "omit sampling_rate for files (their header gives it)")
    return check_waveform(wave, name), rate


def check_rate(sampling_rate: int) -> int:
    """``sampling_rate`` as a positive ``int``, or :class:`MediaError`."""
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise MediaError(f"sampling_rate={sampling_rate!r} is not a positive whole number of Hz")
    return int(sampling_rate)


def check_waveform(wave: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``wave`` (channels, samples) if it has samples and all are finite, else :class:`MediaError`."""
    if wave.shape[-1] == 0 or wave.shape[0] == 0:
        raise MediaError(f"{name} is empty (shape {tuple(wave.shape)}); pass at least one sample")
    bad = ~torch.isfinite(wave)
    if bad.any():
        channel, sample = (int(i) for i in bad.nonzero()[0])
        raise MediaError(f"{name} has {int(bad.sum())} NaN or infinite samples, the first at channel {channel}, "
                         f"sample {sample}; clean the audio (e.g. torch.nan_to_num) before preprocessing")
    return wave


def _array_to_tensor(audio: np.ndarray | torch.Tensor | Sequence[float]) -> torch.Tensor:
    """(channels, samples) float64 from a 1-D or 2-D array; integer PCM scaled to [-1, 1)."""
    array = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if array.dtype.kind == "i":
        array = array / float(2 ** (8 * array.dtype.itemsize - 1))
    elif array.dtype.kind != "f":
        raise MediaError(f"the waveform has dtype {array.dtype}; pass float samples in [-1, 1] or signed "
                         "integer PCM")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise MediaError(f"the waveform has shape {array.shape}; pass (samples,) or (channels, samples)")
    if array.shape[0] > MAX_CHANNELS:
        raise MediaError(f"the waveform has shape {array.shape}, read as {array.shape[0]} channels; pass "
                         "(channels, samples), e.g. the transpose of soundfile's (frames, channels)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


def _decode(audio: AudioSource) -> tuple[torch.Tensor, int, str]:
    """Decode a path, bytes or file object with soundfile: ((channels, samples) float64, rate, a name)."""
    import soundfile as sf

    if isinstance(audio, (str, os.PathLike)):
        name = f"audio file {os.fspath(audio)!r}"
        if not os.path.isfile(audio):
            raise MediaError(f"{name} does not exist or is not a file")
        source: object = audio
    elif isinstance(audio, (bytes, bytearray, memoryview)):
        name, source = f"audio bytes ({len(audio)} bytes)", io.BytesIO(bytes(audio))
    elif hasattr(audio, "read"):
        name, source = f"audio file object {getattr(audio, 'name', type(audio).__name__)!r}", audio
    else:
        raise MediaError(f"cannot read audio from a {type(audio).__name__}; pass a path, bytes, a binary file "
                         "object, or an array with sampling_rate=")
    try:
        frames, rate = sf.read(source, dtype="float64", always_2d=True)  # (samples, channels)
    except (sf.SoundFileError, RuntimeError, TypeError) as err:
        raise MediaError(f"cannot decode {name}: {err}. oxide reads what libsndfile "
                         f"{sf.__libsndfile_version__} reads (WAV, FLAC, OGG, ...); check that the file is "
                         "complete, or convert it (e.g. with ffmpeg)") from err
    return torch.from_numpy(np.ascontiguousarray(frames.T)), int(rate), name
