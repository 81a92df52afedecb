"""Component loggers and formatting helpers.

Each component logs under ``oxide.<component>`` (``oxide.load``, ``oxide.infer``,
``oxide.template``, ...). Nothing is printed: applications configure the ``oxide``
logger as they wish; ``OXIDE_LOG_LEVEL`` sets its level for quick debugging.
"""

from __future__ import annotations

import logging
import os

_ROOT = "oxide"
_configured = False


def get_logger(component: str) -> logging.Logger:
    """Return the logger ``oxide.<component>``."""
    _configure_from_env()
    return logging.getLogger(f"{_ROOT}.{component}")


def _configure_from_env() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    level = os.environ.get("OXIDE_LOG_LEVEL")
    if level:
        root = logging.getLogger(_ROOT)
        root.setLevel(level.upper())
        if not root.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            root.addHandler(handler)


def format_bytes(n: float) -> str:
    """Human-readable byte count (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")
