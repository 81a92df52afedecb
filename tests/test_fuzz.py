"""The fuzz campaign (``tests/_fuzz.py``): mutated model files either load and run or fail with a typed
:class:`oxide.OxideError` naming the file; never an untyped exception, a crash, a hang or a memory blow-up.

CI runs 300 mutants of seed 0; a long run: ``pytest tests/test_fuzz.py --fuzz-mutants 20000 --fuzz-seed 7``.
A failure prints each failing mutant's seed, index and mutations; ``python tests/_fuzz.py SEED INDEX`` replays
one in-process with its traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from _fuzz import FAILURES, build_seeds, make_mutant, run_campaign, summarise
from _sdist import llama_cpp_models_dir
from conftest import oxide_test_cache


@pytest.fixture(scope="module")
def seeds(gemma_path: Path):
    return build_seeds(oxide_test_cache(), gemma_path, llama_cpp_models_dir())


def test_seeds_cover_every_kind(seeds) -> None:
    """The campaign mutates a tiny GGUF model, the one-layer Gemma 3, vocabulary GGUFs and safetensors folders."""
    names = {s.name for s in seeds}
    assert {"tiny-llama-q8_0.gguf", "gemma3-1layer.gguf", "vocab-llama-spm.gguf", "vocab-gpt-2.gguf",
            "vocab-bert-bge.gguf", "tiny-llama-hf"} <= names


def test_a_mutant_is_rebuilt_from_its_seed_and_index(seeds) -> None:
    docs = {s.name: s.load() for s in seeds}
    for index in range(20):
        first, again = make_mutant(seeds, docs, 11, index), make_mutant(seeds, docs, 11, index)
        assert first.files == again.files and first.mutations == again.mutations
    assert make_mutant(seeds, docs, 11, 0).files != make_mutant(seeds, docs, 12, 0).files


@pytest.mark.slow
def test_fuzz_campaign(seeds, request: pytest.FixtureRequest) -> None:
    n_mutants = request.config.getoption("--fuzz-mutants")
    campaign_seed = request.config.getoption("--fuzz-seed")
    start = time.perf_counter()
    results = list(run_campaign(seeds, campaign_seed, n_mutants))
    counts = summarise(results)
    print(f"fuzz campaign seed {campaign_seed}: {n_mutants} mutants in {time.perf_counter() - start:.1f} s: "
          f"{dict(counts)}")
    failures = [r for r in results if r.outcome in FAILURES]
    assert not failures, f"{len(failures)} of {n_mutants} mutants escaped:\n" + \
        "\n".join(r.report(campaign_seed) for r in failures[:25])
    assert len(results) == n_mutants
    # A campaign where nothing loads, or nothing is refused, would test nothing.
    assert counts["ok"] > n_mutants // 20 and counts["typed"] > n_mutants // 5, dict(counts)
