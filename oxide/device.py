"""Device selection: CUDA, then MPS, then CPU, detected at run time.

``OXIDE_DEVICE`` (or the ``prefer`` argument) overrides the choice. A CUDA build of torch on a
machine without a GPU selects the CPU: availability is asked of the runtime, not the build.
"""

from __future__ import annotations

import os

import torch

from .errors import InvalidOptionError
from .log import get_logger

log = get_logger("device")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to run on.

    Order: ``prefer`` if given, else ``$OXIDE_DEVICE`` if set, else the first available of CUDA, MPS,
    CPU. An explicit request for a device that is not available raises :class:`InvalidOptionError`.
    """
    requested = prefer if prefer is not None else os.environ.get("OXIDE_DEVICE") or None
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise InvalidOptionError(
            f"device {requested!r} is not a valid torch device; use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(f"device {requested!r} was requested but CUDA is not available; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidOptionError(
            f"device {requested!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    if device.type == "mps" and not _mps_available():
        raise InvalidOptionError(f"device {requested!r} was requested but MPS is not available; use 'cpu'")
    if device.type not in ("cpu", "cuda", "mps"):
        raise InvalidOptionError(f"device {requested!r} is not supported; use 'cpu', 'cuda' or 'mps'")
    return device


def device_reason(device: torch.device, prefer: str | torch.device | None = None) -> str:
    """Why ``device`` was chosen, for ``oxide info``."""
    if prefer is not None:
        return f"{device} requested explicitly"
    if os.environ.get("OXIDE_DEVICE"):
        return f"{device} from OXIDE_DEVICE"
    if device.type == "cuda":
        return f"CUDA available ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "no CUDA; MPS available"
    return "no CUDA or MPS device available at run time"
