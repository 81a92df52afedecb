"""Typed errors raised by oxide.

Every message says what is wrong, where (file, key or value) and what to do about it.
Errors that are about a bad argument value also derive from ``ValueError`` so that
callers using the standard idiom keep working.
"""

from __future__ import annotations

from collections.abc import Iterable


class OxideError(Exception):
    """Base class of every error oxide raises on purpose."""


class ModelFormatError(OxideError):
    """A model file or directory is missing, truncated or internally inconsistent."""


class ModelNotFoundError(ModelFormatError, FileNotFoundError):
    """The model path does not exist."""


class UnsupportedArchitecture(OxideError):
    """The model's architecture is not in the registry."""

    def __init__(self, name: str, supported: Iterable[str], source: str = "") -> None:
        self.name = name
        self.supported = sorted(set(supported))
        where = f" in {source}" if source else ""
        super().__init__(
            f"architecture {name!r}{where} is not supported; supported architectures: "
            f"{', '.join(self.supported)}. Use a model of one of these architectures, or add a "
            f"registry entry and adapter (docs/adding_an_architecture.md)."
        )


class UnsupportedQuantType(OxideError):
    """A tensor uses a GGML quantization type oxide cannot dequantize."""


class TokenizerError(OxideError):
    """The tokenizer metadata is missing or inconsistent, or a token id is invalid."""


class TemplateError(OxideError):
    """A chat template failed to parse or render."""


class ContextOverflowError(OxideError, ValueError):
    """The prompt plus requested tokens do not fit the model's context window."""


class InvalidOptionError(OxideError, ValueError):
    """An option (sampling, device, dtype, environment variable) has an invalid value."""


class KernelUnavailableError(OxideError):
    """An explicitly requested op implementation cannot be used on this machine."""


class ModelBusyError(OxideError, RuntimeError):
    """A thread asked a model for work while it still holds that model itself (a stream it has begun and not
    finished or closed): waiting for its own lock would never end."""


class NumericalError(OxideError):
    """The model computed logits no token can be chosen from (NaN, +inf, or no finite value): its weights or
    metadata are likely corrupt."""


class MediaError(OxideError, ValueError):
    """An image or audio input cannot be used: a corrupt or unsupported file, an empty waveform, a sampling
    rate or a size the model does not take."""


class QueueFullError(OxideError):
    """Every KV slot is taken and the queue of waiting requests is full: retry later (a server answers 503)."""
