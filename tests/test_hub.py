"""Hub ids resolve through the Hugging Face cache; offline mode is respected (no network is touched)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_hf_dir import _write_tokenizer

from _tiny_models import TINY_MODELS

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SCRIPT = """
import sys, oxide
try:
    m = oxide.load(sys.argv[1], device="cpu")
    print("loaded", m.config.architecture, len(m.logits([1, 2, 3])))
except oxide.OxideError as e:
    print(type(e).__name__, e)
"""


def _cached_repo(cache: Path, repo: str) -> None:
    """The Hugging Face cache layout: refs/main names a snapshot folder holding the files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    TINY_MODELS["qwen3"].build().save_pretrained(snapshot, safe_serialization=True)
    _write_tokenizer(snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)


def _load_offline(cache: Path, source: str) -> str:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, source], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_hub_id_from_cache_offline(tmp_path: Path) -> None:
    _cached_repo(tmp_path, "tiny-org/tiny-qwen3")
    assert _load_offline(tmp_path, "tiny-org/tiny-qwen3") == "loaded qwen3 3"


def test_missing_hub_id_offline_is_a_clear_error(tmp_path: Path) -> None:
    out = _load_offline(tmp_path, "tiny-org/absent")
    assert out.startswith("ModelNotFoundError tiny-org/absent: not in the Hugging Face cache")
    out = _load_offline(tmp_path, "tiny-org/absent/model-q4.gguf")
    assert out.startswith("ModelNotFoundError tiny-org/absent/model-q4.gguf: not in the Hugging Face cache")
