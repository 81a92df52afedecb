"""oxide: run local LLMs (GGUF and Hugging Face safetensors) with one set of shared parts.

``import oxide`` stays light: heavy modules load on first use of the names below.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# GNU OpenMP (torch's, which the compiled core shares) lets idle threads spin before they sleep. Left
# unset, it may fall back to ~100 spins, so between two kernels of a decode step its threads fall
# asleep and each kernel waits tens of microseconds to wake them: 2 threads then run a layer's
# matmuls barely faster than 1. Setting the documented default explicitly restores it. It takes
# effect only when oxide is imported before torch (as the CLI does) and the user has not set it.
os.environ.setdefault("GOMP_SPINCOUNT", "300000")

from .errors import (
    ContextOverflowError,
    InvalidOptionError,
    KernelUnavailableError,
    MediaError,
    ModelBusyError,
    ModelFormatError,
    ModelNotFoundError,
    NumericalError,
    OxideError,
    QueueFullError,
    TemplateError,
    TokenizerError,
    UnsupportedArchitecture,
    UnsupportedQuantType,
)

__version__ = "0.1.0"

_LAZY = {
    "load": "oxide.api",
    "Model": "oxide.api",
    "Completion": "oxide.generate",
    "GenerationStats": "oxide.generate",
    "SamplingOptions": "oxide.sampling",
    "Tokenizer": "oxide.tokenizer",
    "ChatTemplate": "oxide.chat",
    "ModelConfig": "oxide.config",
    "select_device": "oxide.device",
    "ops": "oxide.ops",
    "quant": "oxide.quant",
    "multimodal": "oxide.multimodal",
}

__all__ = [
    "ContextOverflowError", "InvalidOptionError", "KernelUnavailableError", "MediaError", "ModelBusyError",
    "ModelFormatError", "ModelNotFoundError", "NumericalError", "OxideError", "QueueFullError", "TemplateError",
    "TokenizerError", "UnsupportedArchitecture",
    "UnsupportedQuantType", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oxide' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module == f"oxide.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from . import multimodal, ops, quant
    from .api import Model, load
    from .chat import ChatTemplate
    from .config import ModelConfig
    from .device import select_device
    from .generate import Completion, GenerationStats
    from .sampling import SamplingOptions
    from .tokenizer import Tokenizer
