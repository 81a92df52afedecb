"""Preprocessing for models that see and hear: images and audio to the tensors a model takes.

``ImagePreprocessor`` (``image.py``) and ``AudioPreprocessor`` (``audio.py``) are imported on first use,
so ``import oxide`` loads neither PIL nor soundfile.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"ImagePreprocessor": "oxide.multimodal.image", "AudioPreprocessor": "oxide.multimodal.audio"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'oxide.multimodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .audio import AudioPreprocessor
    from .image import ImagePreprocessor
