"""``AudioPreprocessor``: audio to the features an audio model takes, with presets equal to transformers'.

Steps, in order, each optional but the first two: read and validate (:mod:`.audio_io`), mix down to mono,
resample to the model's rate (:mod:`.audio_resample`), normalise loudness (:mod:`.audio_loudness`), trim
silence, pre-emphasis, pad or cut to a length (:mod:`.audio_wave`), then log-mel features
(:mod:`.audio_spectral`) or the waveform itself. Work runs on the CPU in float64; the result is float32.

Presets (``AudioPreprocessor.preset(name, **overrides)``):

- ``whisper`` / ``whisper-128``: transformers' ``WhisperFeatureExtractor`` with 80 / 128 bins: 16 kHz, padded
  or cut to 30 s, Hann n_fft 400, hop 160, Slaney mels 0-8 kHz, ``log10``, clamped to max - 8, ``(x + 4) / 4``,
  the last frame dropped: (n_mels, 3000).
- ``encodec``: ``EncodecFeatureExtractor`` of ``facebook/encodec_24khz``: 24 kHz mono waveform, (1, samples).
- ``speech``: a conventional speech front end: 16 kHz, pre-emphasis 0.97, 25 ms Hamming window (400 samples)
  in a 512-point FFT, 10 ms hop (160), 80 HTK mels 20 Hz-8 kHz without area norm, natural log:
  (80, samples // 160 + 1).

A waveform at another rate than the preset's is resampled; ``resample=False`` makes that a
:class:`~oxide.errors.MediaError` instead, as transformers' extractors do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from oxide.errors import InvalidOptionError, MediaError
from oxide.once import locked_cached_property
from oxide.multimodal.audio_io import AudioSource, read_audio
from oxide.multimodal.audio_loudness import normalize_loudness
from oxide.multimodal.audio_resample import resample
from oxide.multimodal.audio_spectral import (
    LOG_KINDS, MEL_NORMS, MEL_SCALES, WINDOWS, griffin_lim, log_mel, mel_filterbank, mel_to_linear, spectrogram,
    undo_log_mel,
)
from oxide.multimodal.audio_wave import de_emphasis, fit_length, mixdown, pre_emphasis, trim_silence

__all__ = ["AudioPreprocessor", "MelSpec", "PRESETS"]


@dataclass(frozen=True)
class MelSpec:
    """How a waveform becomes log-mel features (n_mels, frames); see :mod:`.audio_spectral`."""

    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    win_length: int | None = None  # None: n_fft
    window: str = "hann"  # "hann" | "hamming"
    power: float = 2.0  # 2: power spectrogram, 1: magnitude
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    scale: str = "slaney"  # "slaney" | "htk"
    norm: str | None = "slaney"  # "slaney" (equal area) | None
    log: str = "whisper"  # "whisper" | "log10" | "ln"
    drop_last_frame: bool = False  # Whisper keeps samples // hop frames, not samples // hop + 1

    def __post_init__(self) -> None:
        choices = {"window": (self.window, tuple(WINDOWS)), "scale": (self.scale, MEL_SCALES),
                   "norm": (self.norm, MEL_NORMS), "log": (self.log, LOG_KINDS)}
        for field, (value, allowed) in choices.items():
            if value not in allowed:
                raise InvalidOptionError(f"MelSpec: {field}={value!r} is not one of {allowed}")
        win_length = self.win_length or self.n_fft
        if min(self.n_mels, self.n_fft, self.hop_length, win_length) <= 0 or win_length > self.n_fft:
            raise InvalidOptionError(f"MelSpec: n_mels={self.n_mels}, n_fft={self.n_fft}, hop_length="
                                     f"{self.hop_length} must be positive and win_length={self.win_length} "
                                     "at most n_fft")
        if self.power <= 0:
            raise InvalidOptionError(f"MelSpec: power={self.power} must be positive (2: power, 1: magnitude)")


@dataclass(frozen=True)
class AudioPreprocessor:
    """Audio (a path, bytes, a file object, or an array with its rate) to float32 model input.

    ``preprocessor(audio, sampling_rate=None)`` returns (n_mels, frames) when ``mel`` is set, else the waveform
    (channels, samples). Fields: the model's ``sampling_rate``; ``mel`` features or None; ``mono`` mixdown (the
    mean of the channels; mel features need it); ``resample`` audio at another rate (False: raise
    :class:`MediaError`); ``loudness``, a target in LUFS (BS.1770-4) or None; ``trim_silence_db``, cut the
    leading and trailing 25 ms frames quieter than this many dB below the loudest frame, or None;
    ``pre_emphasis`` coefficient (0: none); ``length`` in samples, padding with zeros or cutting the end, or None.
    """

    sampling_rate: int
    mel: MelSpec | None = None
    mono: bool = True
    resample: bool = True
    loudness: float | None = None
    trim_silence_db: float | None = None
    pre_emphasis: float = 0.0
    length: int | None = None

    def __post_init__(self) -> None:
        if self.sampling_rate <= 0 or (self.length is not None and self.length <= 0):
            raise InvalidOptionError(f"AudioPreprocessor: sampling_rate={self.sampling_rate} and length="
                                     f"{self.length} must be positive")
        if self.mel is not None and not self.mono:
            raise InvalidOptionError("AudioPreprocessor: mel features are computed from mono audio; set mono=True")
        if not 0.0 <= self.pre_emphasis < 1.0:
            raise InvalidOptionError(f"AudioPreprocessor: pre_emphasis={self.pre_emphasis} must lie in [0, 1)")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> AudioPreprocessor:
        """The preset ``name`` (see :data:`PRESETS`), with fields replaced by ``overrides`` (e.g. ``resample=False``)."""
        if name not in PRESETS:
            raise InvalidOptionError(f"no audio preset {name!r}; presets: {', '.join(PRESETS)}")
        try:
            return dataclasses.replace(PRESETS[name], **overrides)
        except TypeError as err:
            fields = ", ".join(f.name for f in dataclasses.fields(cls))
            raise InvalidOptionError(f"AudioPreprocessor.preset({name!r}): {err}; fields: {fields}") from None

    def __call__(self, audio: AudioSource, sampling_rate: int | None = None) -> torch.Tensor:
        """Float32 features (n_mels, frames), or the waveform (channels, samples) when ``mel`` is None."""
        wave = self.waveform(audio, sampling_rate)
        return (wave if self.mel is None else self.features(wave[0])).to(torch.float32)

    def waveform(self, audio: AudioSource, sampling_rate: int | None = None) -> torch.Tensor:
        """The waveform (channels, samples), float64, after every time-domain step, before the features."""
        wave, rate = read_audio(audio, sampling_rate)
        if self.mono:
            wave = mixdown(wave)
        if rate != self.sampling_rate:
            if not self.resample:
                raise MediaError(f"the audio is sampled at {rate} Hz but this preprocessor takes "
                                 f"{self.sampling_rate} Hz; resample it, or leave resample=True to let oxide do it")
            wave = resample(wave, rate, self.sampling_rate)
        if self.loudness is not None:
            wave = normalize_loudness(wave, self.sampling_rate, self.loudness)
        if self.trim_silence_db is not None:
            wave = trim_silence(wave, self.sampling_rate, self.trim_silence_db)
        wave = pre_emphasis(wave, self.pre_emphasis)
        return wave if self.length is None else fit_length(wave, self.length)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel features (n_mels, frames) of a prepared mono waveform (samples,), in its dtype."""
        mel = self._mel
        power = spectrogram(wave, mel.n_fft, mel.hop_length, mel.win_length, mel.window, mel.power)
        features = log_mel(self.filterbank.to(power.dtype) @ power, mel.log)  # (n_mels, frames)
        return features[:, :-1] if mel.drop_last_frame else features

    @locked_cached_property
    def filterbank(self) -> torch.Tensor:
        """The mel filters (n_mels, n_fft // 2 + 1), float64."""
        mel = self._mel
        return mel_filterbank(mel.n_fft // 2 + 1, mel.n_mels, self.sampling_rate, mel.f_min, mel.f_max, mel.scale,
                              mel.norm)

    def to_audio(self, features: torch.Tensor, n_iter: int = 32, seed: int = 0) -> torch.Tensor:
        """A mono waveform (samples,) at ``sampling_rate``, float32, that sounds like ``features`` (n_mels, frames).

        The log is undone, the mel power is mapped back to linear frequency through the filterbank's
        pseudo-inverse, and fast Griffin-Lim (``n_iter`` iterations, seeded) finds phases; pre-emphasis is undone.
        What the features never held (Whisper's clamp, frequencies between sparse mel bins, phase) stays lost.
        """
        mel = self._mel
        if features.ndim != 2 or features.shape[0] != mel.n_mels:
            raise MediaError(f"features of shape {tuple(features.shape)} are not ({mel.n_mels}, frames)")
        power = mel_to_linear(undo_log_mel(features.to(torch.float64), mel.log), self.filterbank)
        wave = griffin_lim(power ** (1.0 / mel.power), mel.n_fft, mel.hop_length, mel.win_length, mel.window,
                           n_iter=n_iter, seed=seed)
        return de_emphasis(wave, self.pre_emphasis).to(torch.float32)

    @property
    def _mel(self) -> MelSpec:
        if self.mel is None:
            raise InvalidOptionError("this preprocessor returns waveforms (mel=None): it has no mel features")
        return self.mel


_WHISPER_MEL = MelSpec(n_mels=80, f_max=8000.0, drop_last_frame=True)

PRESETS: dict[str, AudioPreprocessor] = {
    "whisper": AudioPreprocessor(16000, _WHISPER_MEL, length=30 * 16000),
    "whisper-128": AudioPreprocessor(16000, dataclasses.replace(_WHISPER_MEL, n_mels=128), length=30 * 16000),
    "encodec": AudioPreprocessor(24000),
    "speech": AudioPreprocessor(16000, MelSpec(n_mels=80, n_fft=512, win_length=400, hop_length=160,
                                               window="hamming", f_min=20.0, scale="htk", norm=None, log="ln"),
                                pre_emphasis=0.97),
}
