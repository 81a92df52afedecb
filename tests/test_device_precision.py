"""Device selection and the precision policy (this machine has no GPU: CUDA/MPS requests must fail cleanly)."""

from __future__ import annotations

import pytest
import torch

from oxide.device import device_reason, select_device
from oxide.errors import InvalidOptionError
from oxide.precision import choose_precision, parse_dtype


def test_automatic_selection_follows_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OXIDE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device().type == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    assert "no CUDA or MPS" in device_reason(torch.device("cpu"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda")


def test_environment_and_argument_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OXIDE_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    assert "OXIDE_DEVICE" in device_reason(torch.device("cpu"))
    assert select_device("cpu") == torch.device("cpu")
    assert "explicitly" in device_reason(torch.device("cpu"), "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
@pytest.mark.parametrize("bad, what", [("cuda", "CUDA is not available"), ("tpu", "not a valid"),
                                       ("meta", "not supported")])
def test_unavailable_or_invalid_device(bad: str, what: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InvalidOptionError, match=what):
        select_device(bad)
    monkeypatch.setenv("OXIDE_DEVICE", bad)
    with pytest.raises(InvalidOptionError):
        select_device()


def test_precision_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OXIDE_DTYPE", raising=False)
    cpu = choose_precision(torch.device("cpu"))
    assert cpu.compute_dtype == torch.float32 and "CPU" in cpu.compute_reason
    assert cpu.kv_cache_dtype == torch.float32 and cpu.kv_cache_reason
    mps = choose_precision(torch.device("mps"))
    assert mps.compute_dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_precision(torch.device("cuda")).compute_dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_precision(torch.device("cuda")).compute_dtype == torch.float16
    monkeypatch.setenv("OXIDE_DTYPE", "bf16")
    env = choose_precision(torch.device("cpu"))
    assert env.compute_dtype == torch.bfloat16 and "OXIDE_DTYPE" in env.compute_reason
    explicit = choose_precision(torch.device("cpu"), "f16", kv_cache_dtype="f32")
    assert (explicit.compute_dtype, explicit.kv_cache_dtype) == (torch.float16, torch.float32)


@pytest.mark.parametrize("bad", ["int8", "fp8", torch.int32, 3])
def test_bad_dtype(bad) -> None:
    with pytest.raises(InvalidOptionError, match="dtype"):
        parse_dtype(bad)
