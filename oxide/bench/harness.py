"""The comparison run: every engine on every model, each measurement in a fresh worker process.

For each model the harness

1. tokenizes the benchmark text once with oxide's tokenizer (all engines then read the same ids);
2. runs ``repeats`` rounds of speed workers, alternating the engines within each round
   (oxide, llama.cpp, transformers, oxide, ...), so that a slow spell of a shared machine does not
   land on one engine only;
3. runs one quality worker per engine (teacher-forced logits over ``quality_tokens`` ids of the text)
   and scores them: perplexity for every engine, KL divergence and top-1 agreement against
   transformers' float32 logits.

An engine that is not installed, or cannot read the model, is recorded as skipped; a worker that
fails is recorded with the last line of its error output, and the run goes on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, ModelNotFoundError
from .engines import BASELINE_ENGINE, ENGINE_NAMES, REFERENCE_ENGINE, REQUIREMENTS, unsupported_reason
from .quality import agreement, perplexity

SPEED_FIGURES = ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_mb")
WORKER_TIMEOUT_S = 3600.0
TEXT_FILE = "declaration_of_independence.txt"


@dataclass(frozen=True)
class CompareSettings:
    """What ``oxide bench --compare`` measures; :meth:`validate` rejects impossible values."""

    models: tuple[Path, ...]
    engines: tuple[str, ...] = ENGINE_NAMES
    threads: int = 2
    repeats: int = 3
    prompt_tokens: int = 512
    gen_tokens: int = 128
    quality_tokens: int = 256

    def validate(self) -> None:
        unknown = [e for e in self.engines if e not in ENGINE_NAMES]
        if unknown or not self.engines:
            raise InvalidOptionError(f"unknown engine(s) {', '.join(unknown) or '(none given)'}; "
                                     f"choose among {', '.join(ENGINE_NAMES)}")
        if len(set(self.engines)) != len(self.engines):
            raise InvalidOptionError(f"engines are listed twice: {', '.join(self.engines)}")
        if self.threads < 1 or self.repeats < 1 or self.prompt_tokens < 1 or self.quality_tokens < 2:
            raise InvalidOptionError("bench --compare needs --threads, --repeats and --prompt-tokens >= 1 "
                                     "and --quality-tokens >= 2")
        if self.gen_tokens < 2:
            raise InvalidOptionError("bench --compare needs --gen-tokens >= 2 (decode speed is measured after "
                                     "the first token)")
        for model in self.models:
            if not model.exists():
                raise ModelNotFoundError(f"model {model} does not exist; give a .gguf file or a Hugging Face folder")


@dataclass
class EngineResult:
    """Everything measured for one engine on one model."""

    status: str = "ok"                       # ok | skipped | failed
    reason: str = ""                         # why skipped or failed
    runs: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """The token ids every engine reads: the speed prompt and the quality text."""

    prompt: list[int]
    text: list[int]


def benchmark_text() -> str:
    """The public-domain English text that prompts and perplexity use (see ``oxide/bench/data/README.md``)."""
    return resources.files("oxide.bench").joinpath("data", TEXT_FILE).read_text(encoding="utf-8")


def build_workload(model: Path, settings: CompareSettings) -> Workload:
    """Tokenize the benchmark text with ``model``'s vocabulary (BOS as the vocabulary asks).

    The prompt repeats the text when it is shorter than ``prompt_tokens``; the quality text must fit.
    """
    from ..tokenizer import Tokenizer

    tokenizer = Tokenizer.from_hf_dir(model) if model.is_dir() else Tokenizer.from_gguf(model)
    ids = tokenizer.encode(benchmark_text(), add_special_tokens=True)
    if settings.quality_tokens > len(ids):
        raise InvalidOptionError(f"--quality-tokens {settings.quality_tokens} exceeds the {len(ids)} tokens the "
                                 f"benchmark text has in the vocabulary of {model}")
    prompt = [ids[i % len(ids)] for i in range(settings.prompt_tokens)]
    return Workload(prompt=prompt, text=ids[:settings.quality_tokens])


def skip_reason(engine: str, model: Path) -> str | None:
    """Why ``engine`` will not run on ``model`` (not installed, or cannot read it); None when it will."""
    module, distribution = REQUIREMENTS[engine]
    if importlib.util.find_spec(module) is None:
        return f"{distribution} is not installed"
    return unsupported_reason(engine, model)


def run_worker(request: dict[str, Any], threads: int, timeout: float = WORKER_TIMEOUT_S) -> dict[str, Any]:
    """Run one worker process; return its JSON result, or ``{"error": "..."}`` saying why it gave none."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run([sys.executable, "-m", "oxide.bench.worker"], input=json.dumps(request),
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    last = errors[-1].strip() if errors else "no error output"
    return {"error": f"worker exited with status {done.returncode}: {last}", "stderr_tail": done.stderr[-4000:]}


def median_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The median of each speed figure over the successful runs."""
    ok = [run for run in runs if "error" not in run]
    return {key: statistics.median(run[key] for run in ok) for key in SPEED_FIGURES} if ok else {}


def measure_speed(model: Path, workload: Workload, settings: CompareSettings,
                  results: dict[str, EngineResult]) -> None:
    """``repeats`` rounds over the runnable engines; an engine that fails is dropped from later rounds."""
    for round_index in range(settings.repeats):
        for engine, result in results.items():
            if result.status != "ok":
                continue
            print(f"  speed   {engine:12} run {round_index + 1}/{settings.repeats}", file=sys.stderr, flush=True)
            run = run_worker({"task": "speed", "engine": engine, "model": str(model), "threads": settings.threads,
                              "ids": workload.prompt, "new_tokens": settings.gen_tokens}, settings.threads)
            result.runs.append(run)
            if "error" in run:
                result.status, result.reason = "failed", run["error"]
    for result in results.values():
        result.summary = median_summary(result.runs)


def measure_quality(model: Path, workload: Workload, settings: CompareSettings,
                    results: dict[str, EngineResult]) -> None:
    """Teacher-forced logits of every runnable engine, scored against the float32 reference when it ran."""
    runnable = [engine for engine, result in results.items() if result.status != "skipped"]
    with tempfile.TemporaryDirectory(prefix="oxide-bench-") as tmp:
        paths = {engine: Path(tmp) / f"{engine}.npy" for engine in runnable}
        for engine in runnable:
            print(f"  quality {engine:12}", file=sys.stderr, flush=True)
            run = run_worker({"task": "quality", "engine": engine, "model": str(model), "threads": settings.threads,
                              "ids": workload.text, "logits_path": str(paths[engine])}, settings.threads)
            results[engine].quality = run if "error" in run else {"positions": run["positions"],
                                                                 "perplexity": perplexity(paths[engine], workload.text)}
        reference = paths.get(REFERENCE_ENGINE)
        if reference is None or "error" in results[REFERENCE_ENGINE].quality:
            return
        for engine in runnable:
            if "error" not in results[engine].quality:
                results[engine].quality.update(agreement(paths[engine], reference))


def compare_model(model: Path, settings: CompareSettings) -> dict[str, Any]:
    """All figures of all engines on one model, as a JSON-ready dict."""
    print(f"oxide bench: {model}", file=sys.stderr, flush=True)
    workload = build_workload(model, settings)
    results = {engine: EngineResult() for engine in settings.engines}
    for engine, result in results.items():
        reason = skip_reason(engine, model)
        if reason:
            result.status, result.reason = "skipped", reason
    measure_speed(model, workload, settings, results)
    measure_quality(model, workload, settings, results)
    return {"model": str(model), "name": model.name, "prompt_tokens": len(workload.prompt),
            "quality_tokens": len(workload.text), "engines": {name: asdict(r) for name, r in results.items()}}


def compare(settings: CompareSettings) -> dict[str, Any]:
    """Run the whole comparison; return the report (see :func:`oxide.bench.report.write_report`)."""
    from .report import machine_info

    settings.validate()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    models = [compare_model(model, settings) for model in settings.models]
    return {"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(settings.threads), "reference_engine": REFERENCE_ENGINE,
            "baseline_engine": BASELINE_ENGINE,
            "settings": {**asdict(settings), "models": [str(m) for m in settings.models]}, "models": models}
