"""oxide.multimodal.AudioPreprocessor: presets equal to transformers' extractors, and each DSP step to its spec.

Tolerances: the ``whisper`` presets' log-mel and the ``encodec`` waveform within 1e-3 of transformers
(measured: about 3.4e-5 and 0); resampling keeps a tone within 1e-4 of the ideal tone and rejects what lies above
the new Nyquist frequency (or images above the old one) by at least 80 dB, the filter's design attenuation
(measured: 92 dB or more); BS.1770 reference signals within 0.05 LU (EBU Tech 3341's within its own 0.1 LU);
loudness normalisation within 0.5 LU of its target (measured: under 0.01).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import EncodecFeatureExtractor, WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from oxide.errors import InvalidOptionError, MediaError, OxideError
from oxide.multimodal import AudioPreprocessor
from oxide.multimodal.audio_io import read_audio
from oxide.multimodal.audio_loudness import biquad, integrated_loudness, k_weighting, normalize_loudness
from oxide.multimodal.audio_resample import resample
from oxide.multimodal.audio_spectral import hz_to_mel, mel_filterbank, mel_to_hz, spectrogram
from oxide.multimodal.audio_wave import de_emphasis, fit_length, pre_emphasis, trim_silence


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> torch.Tensor:
    """A float64 sine of ``freq`` Hz at ``rate`` Hz."""
    t = torch.arange(round(rate * seconds), dtype=torch.float64) / rate
    return amplitude * torch.sin(2 * math.pi * freq * t)


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    """The frequency of the largest bin of ``wave``'s Hann-windowed spectrum."""
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.shape[-1], periodic=False, dtype=wave.dtype))
    return float(spectrum.abs().argmax()) * rate / wave.shape[-1]


def level_db(wave: torch.Tensor, amplitude: float) -> float:
    """RMS of ``wave`` in dB relative to a sine of ``amplitude``."""
    return 20 * math.log10(float(wave.square().mean().sqrt()) / (amplitude / math.sqrt(2)))


def signals(seed: int, rate: int) -> dict[str, np.ndarray]:
    """Random audio and tones, under 30 s (padded by Whisper), exactly 30 s, and over (cut), float32."""
    rng = np.random.default_rng(seed)
    return {
        "noise 0.7 s": rng.uniform(-1, 1, round(0.7 * rate)),
        "noise 31 s": 0.1 * rng.standard_normal(31 * rate),
        "tone 440 Hz 5.3 s": tone(440, rate, 5.3).numpy(),
        "tones 30 s": (tone(1000, rate, 30, 0.3) + tone(3210.5, rate, 30, 0.1)).numpy(),
        "tone 97 Hz 33.3 s": tone(97, rate, 33.3, 0.8).numpy(),
    }


# ----- presets against transformers -----

@pytest.mark.parametrize("name, n_mels", [("whisper", 80), ("whisper-128", 128)])
def test_whisper_equals_transformers(seed: int, name: str, n_mels: int) -> None:
    reference = WhisperFeatureExtractor(feature_size=n_mels)
    preprocessor = AudioPreprocessor.preset(name)
    for label, audio in signals(seed, 16000).items():
        audio = audio.astype(np.float32)
        want = reference(audio, sampling_rate=16000, return_tensors="np")["input_features"][0]
        got = preprocessor(audio, sampling_rate=16000)
        assert got.dtype == torch.float32 and tuple(got.shape) == (n_mels, 3000), label
        assert np.abs(got.numpy() - want).max() <= 1e-3, label


def test_encodec_equals_transformers(seed: int) -> None:
    reference = EncodecFeatureExtractor()
    preprocessor = AudioPreprocessor.preset("encodec")
    for label, audio in signals(seed, 24000).items():
        audio = audio.astype(np.float32)
        want = reference(audio, sampling_rate=24000, return_tensors="np")["input_values"][0]  # (1, samples)
        got = preprocessor(audio, sampling_rate=24000)
        assert got.dtype == torch.float32 and got.shape == want.shape, label
        assert np.abs(got.numpy() - want).max() <= 1e-3, label


def test_stereo_is_mixed_down_and_other_rates_resampled() -> None:
    left, right = tone(300, 24000, 1.0), tone(2000, 24000, 1.0, 0.2)
    got = AudioPreprocessor.preset("encodec")(torch.stack([left, right]), sampling_rate=24000)
    assert torch.allclose(got[0].double(), (left + right) / 2, atol=1e-6)
    # The same tone given at 44.1 kHz and at 16 kHz: equal features away from the edges (where the resampler
    # sees zeros beyond the signal).
    whisper = AudioPreprocessor.preset("whisper", length=3 * 16000)
    at_44k = whisper(tone(440, 44100, 3.0), sampling_rate=44100)
    at_16k = whisper(tone(440, 16000, 3.0), sampling_rate=16000)
    assert (at_44k - at_16k)[:, 5:-5].abs().max() <= 1e-3


def test_speech_preset_shape_and_settings() -> None:
    speech = AudioPreprocessor.preset("speech")
    features = speech(tone(500, 16000, 1.234), sampling_rate=16000)
    assert features.dtype == torch.float32 and tuple(features.shape) == (80, round(16000 * 1.234) // 160 + 1)
    assert speech.mel.window == "hamming" and speech.mel.win_length == 400 and speech.mel.scale == "htk"
    assert speech.pre_emphasis == 0.97


def test_preset_names_and_overrides() -> None:
    assert AudioPreprocessor.preset("whisper", resample=False).resample is False
    with pytest.raises(InvalidOptionError, match="whisper-128"):
        AudioPreprocessor.preset("whisper-64")
    with pytest.raises(InvalidOptionError, match="fields"):
        AudioPreprocessor.preset("whisper", n_mels=64)
    with pytest.raises(InvalidOptionError, match="no mel features"):
        AudioPreprocessor.preset("encodec").to_audio(torch.zeros(80, 10))


# ----- mel filterbanks and spectrograms -----

@pytest.mark.parametrize("scale, norm", [("slaney", "slaney"), ("slaney", None), ("htk", "slaney"), ("htk", None)])
def test_mel_filterbank_equals_transformers(scale: str, norm: str | None) -> None:
    want = mel_filter_bank(257, 40, 20.0, 7600.0, 16000, norm=norm, mel_scale=scale)  # (n_freqs, n_mels)
    got = mel_filterbank(257, 40, 16000, 20.0, 7600.0, scale=scale, norm=norm)
    np.testing.assert_allclose(got.T.numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("window, power", [("hann", 2.0), ("hamming", 1.0)])
def test_spectrogram_peaks_at_the_tone(window: str, power: float) -> None:
    spec = spectrogram(tone(1500, 16000, 0.5), n_fft=512, hop_length=128, window_name=window, power=power)
    assert spec.shape == (257, 8000 // 128 + 1)
    assert int(spec[:, 10].argmax()) == round(1500 * 512 / 16000)


# ----- resampling -----

@pytest.mark.parametrize("orig, new", [(44100, 16000), (48000, 16000), (16000, 48000), (22050, 24000),
                                       (48000, 44100), (8000, 16000)])
def test_resampling_keeps_a_tone(orig: int, new: int) -> None:
    got = resample(tone(1000, orig, 1.0), orig, new)
    assert got.shape == (new,)
    inner = slice(new // 8, -new // 8)  # away from the edges, where the signal stops
    assert (got[inner] - tone(1000, new, 1.0)[inner]).abs().max() <= 1e-4
    assert abs(peak_hz(got[inner], new) - 1000) <= new / got[inner].shape[0]


@pytest.mark.parametrize("orig, new", [(44100, 16000), (48000, 16000), (44100, 24000), (48000, 44100)])
def test_resampling_rejects_content_above_the_new_nyquist(orig: int, new: int) -> None:
    for ratio in (1.02, 1.3, 1.9):  # a tone at ratio x the new Nyquist frequency would alias
        freq = ratio * new / 2
        if freq < orig / 2:
            got = resample(tone(freq, orig, 1.0), orig, new)[new // 8:-new // 8]
            assert level_db(got, 0.5) <= -80, freq


@pytest.mark.parametrize("orig, new", [(16000, 48000), (22050, 44100)])
def test_upsampling_adds_no_images(orig: int, new: int) -> None:
    got = resample(tone(0.8 * orig / 2, orig, 1.0), orig, new)
    spectrum = torch.fft.rfft(got * torch.hann_window(got.shape[0], periodic=False, dtype=got.dtype)).abs()
    above = spectrum[torch.fft.rfftfreq(got.shape[0], 1 / new) > orig / 2]
    assert 20 * math.log10(float(above.max() / spectrum.max())) <= -80


def test_resampling_keeps_channels_and_rejects_bad_settings() -> None:
    stereo = torch.stack([tone(500, 48000, 0.2), tone(700, 48000, 0.2)])
    got = resample(stereo, 48000, 16000)
    assert torch.allclose(got[1], resample(stereo[1], 48000, 16000))
    with pytest.raises(InvalidOptionError, match="rolloff"):
        resample(stereo, 48000, 16000, rolloff=1.0)
    with pytest.raises(MediaError, match="ratio"):
        resample(stereo, 48000, 16001)


# ----- loudness (ITU-R BS.1770-4) -----

def test_k_weighting_matches_the_published_48k_coefficients() -> None:
    (shelf_b, shelf_a), (hp_b, hp_a) = k_weighting(48000)  # BS.1770-4, tables 1 and 2
    np.testing.assert_allclose(shelf_b, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-8)
    np.testing.assert_allclose(shelf_a, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-8)
    np.testing.assert_allclose(hp_b, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(hp_a, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-8)


def test_biquad_equals_the_recurrence(seed: int) -> None:
    x = torch.randn(3, 1500, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    b, a = (0.3, -0.2, 0.1), (1.0, -1.6, 0.7)
    want = torch.zeros_like(x)
    for n in range(x.shape[1]):
        for k in range(3):
            if n - k >= 0:
                want[:, n] += b[k] * x[:, n - k] - (a[k] * want[:, n - k] if k else 0.0)
    assert torch.allclose(biquad(x, b, a, block=64), want, atol=1e-10)


@pytest.mark.parametrize("rate", [48000, 44100])
def test_loudness_of_reference_sines(rate: int) -> None:
    # BS.1770: a 0 dBFS 1 kHz sine in one channel reads -3.01 LKFS; so a 997 Hz sine at -20 dBFS reads -23.01.
    assert integrated_loudness(tone(1000, rate, 3.0, 1.0)[None], rate) == pytest.approx(-3.01, abs=0.05)
    assert integrated_loudness(tone(997, rate, 3.0, 0.1)[None], rate) == pytest.approx(-23.01, abs=0.05)


def dbfs(level: float) -> float:
    return 10.0 ** (level / 20.0)


@pytest.mark.parametrize("segments", [
    [(10, -36), (60, -23), (10, -36)],  # EBU Tech 3341 case 3: the relative gate drops the quiet parts
    [(10, -72), (10, -36), (60, -23), (10, -36), (10, -72)],  # case 4: the absolute gate too
    [(20, -26), (20.1, -20), (20, -26)],  # case 5
])
def test_loudness_of_ebu_3341_signals(segments: list[tuple[float, float]]) -> None:
    rate = 8000  # the cases are given at 48 kHz; the gating is the same at any rate, and 8 kHz is quicker
    sine = torch.cat([tone(1000, rate, seconds, dbfs(level)) for seconds, level in segments])
    assert integrated_loudness(torch.stack([sine, sine]), rate) == pytest.approx(-23.0, abs=0.1)


@pytest.mark.parametrize("target", [-23.0, -16.0])
def test_loudness_normalisation_reaches_its_target(seed: int, target: float) -> None:
    rng = torch.Generator().manual_seed(seed)
    white = 0.05 * torch.randn(1, 16000 * 3, dtype=torch.float64, generator=rng)
    brown = torch.cumsum(torch.randn(2, 16000 * 3, dtype=torch.float64, generator=rng), -1)
    for wave in (tone(220, 16000, 2.0, 0.01)[None], white, brown / brown.abs().max()):
        normalised = normalize_loudness(wave, 16000, target)
        assert integrated_loudness(normalised, 16000) == pytest.approx(target, abs=0.5)
    normalised = AudioPreprocessor(16000, loudness=target)(tone(220, 16000, 2.0, 0.01), sampling_rate=16000)
    assert integrated_loudness(normalised.double(), 16000) == pytest.approx(target, abs=0.5)


def test_loudness_of_silence_and_too_short_audio() -> None:
    silence = torch.zeros(1, 16000, dtype=torch.float64)
    assert integrated_loudness(silence, 16000) == -math.inf
    assert torch.equal(normalize_loudness(silence, 16000, -23.0), silence)
    with pytest.raises(MediaError, match="400 ms"):
        integrated_loudness(tone(440, 16000, 0.3)[None], 16000)


# ----- time-domain steps -----

def test_pre_emphasis_pad_trim_and_silence() -> None:
    wave = tone(440, 16000, 0.5)[None]
    emphasised = pre_emphasis(wave, 0.97)
    assert torch.allclose(emphasised[:, 1:], wave[:, 1:] - 0.97 * wave[:, :-1]) and emphasised[0, 0] == wave[0, 0]
    assert torch.allclose(de_emphasis(emphasised, 0.97), wave, atol=1e-12)
    assert fit_length(wave, 100).shape == (1, 100)
    padded = fit_length(wave, 9000)
    assert padded.shape == (1, 9000) and torch.equal(padded[:, :8000], wave) and not padded[:, 8000:].any()
    quiet = torch.zeros(1, 4000, dtype=torch.float64)  # 250 ms: ten 25 ms frames
    trimmed = trim_silence(torch.cat([quiet, wave, quiet], -1), 16000, top_db=60)
    assert torch.equal(trimmed, wave)


# ----- Griffin-Lim -----

@pytest.mark.parametrize("name, freq", [("whisper", 1000.0), ("speech", 2500.0)])
def test_griffin_lim_recovers_a_tone(name: str, freq: float) -> None:
    preprocessor = AudioPreprocessor.preset(name, length=16000)
    audio = preprocessor.to_audio(preprocessor(tone(freq, 16000, 1.0), sampling_rate=16000))
    assert audio.dtype == torch.float32 and audio.ndim == 1
    # the tone comes back within the spacing of the mel bands around it (38 Hz for Whisper's, 99 Hz for speech's)
    mel = preprocessor.mel
    limits = hz_to_mel(torch.tensor([mel.f_min, mel.f_max or 8000.0, freq], dtype=torch.float64), mel.scale)
    spacing = float(mel_to_hz(limits[2] + (limits[1] - limits[0]) / (mel.n_mels + 1), mel.scale)) - freq
    assert abs(peak_hz(audio.double(), 16000) - freq) <= spacing


# ----- files -----

@pytest.mark.parametrize("fmt, subtype, atol", [("WAV", "PCM_16", 2 ** -15), ("WAV", "FLOAT", 1e-7),
                                                ("FLAC", "PCM_24", 2 ** -23), ("OGG", "VORBIS", None)])
def test_loading_files(tmp_path: Path, fmt: str, subtype: str, atol: float | None) -> None:
    stereo = torch.stack([tone(440, 22050, 1.0, 0.4), tone(1200, 22050, 1.0, 0.2)])
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, stereo.T.numpy(), 22050, format=fmt, subtype=subtype)
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        wave, rate = read_audio(source)
        assert rate == 22050 and wave.shape == (2, 22050) and wave.dtype == torch.float64
        if atol is None:  # lossy: the tones come back
            assert peak_hz(wave[0], rate) == pytest.approx(440, abs=2) and peak_hz(wave[1], rate) == pytest.approx(
                1200, abs=2)
        else:
            assert (wave - stereo).abs().max() <= atol
    encodec = AudioPreprocessor.preset("encodec")(path)  # mixed down and resampled from 22.05 kHz
    assert encodec.shape == (1, 24000)


# ----- bad input -----

def test_bad_files_raise_media_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1000), 16000, format="WAV")
    wav = buffer.getvalue()
    corrupt = wav[:20] + b"\xff\xff" + wav[22:]  # a malformed 'fmt ' chunk
    cases = {
        "corrupt.wav": corrupt,
        "truncated.wav": wav[:30],
        "image.png": b"\x89PNG\r\n\x1a\n" + bytes(200),  # not an audio format
        "notes.ogg": b"these are words, not sound" * 20,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MediaError, match="cannot decode"):
            AudioPreprocessor.preset("whisper")(tmp_path / name)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), 16000)
    with pytest.raises(MediaError, match="empty"):
        AudioPreprocessor.preset("whisper")(empty)
    with pytest.raises(MediaError, match="does not exist"):
        AudioPreprocessor.preset("whisper")(tmp_path / "missing.wav")
    with pytest.raises(MediaError, match="44100 Hz but sampling_rate=16000"):
        sf.write(tmp_path / "a.wav", np.zeros(500), 44100)
        AudioPreprocessor.preset("whisper")(tmp_path / "a.wav", sampling_rate=16000)


def test_bad_waveforms_raise_media_error() -> None:
    whisper = AudioPreprocessor.preset("whisper")
    nan = np.zeros(1000, dtype=np.float32)
    nan[700] = np.nan
    cases = [
        ("empty", np.zeros(0, dtype=np.float32), 16000),
        ("1 NaN or infinite samples, the first at channel 0, sample 700", nan, 16000),
        ("first at channel 0, sample 1", torch.tensor([0.0, math.inf, 0.0]), 16000),
        ("shape", np.zeros((2, 3, 100)), 16000),
        ("channels", np.zeros((1000, 2)), 16000),
        ("dtype", np.zeros(100, dtype=np.complex64), 16000),
        ("sampling_rate", np.zeros(100), None),
        ("positive whole", np.zeros(100), -16000),
        ("cannot read audio from a", 12345, 16000),
    ]
    for match, audio, rate in cases:
        with pytest.raises(MediaError, match=match):
            whisper(audio, sampling_rate=rate)
    strict = AudioPreprocessor.preset("whisper", resample=False)
    with pytest.raises(MediaError, match="sampled at 44100 Hz but this preprocessor takes 16000 Hz"):
        strict(np.zeros(44100, dtype=np.float32), sampling_rate=44100)
    assert issubclass(MediaError, OxideError)


def test_integer_pcm_is_scaled() -> None:
    pcm = (tone(440, 24000, 0.1) * 32767).round().to(torch.int16)
    got = AudioPreprocessor.preset("encodec")(pcm.numpy(), sampling_rate=24000)
    assert torch.allclose(got[0].double(), pcm.double() / 32768)
