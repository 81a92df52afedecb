"""The three OpenAI-compatible servers that ``benchmarks/serve_load.py`` drives, on one GGUF file, and a context
manager that starts one, waits until it answers, and always stops it.

Every server gets the same thread count (``OMP_NUM_THREADS`` for oxide's torch, ``--threads`` for llama.cpp,
``--n_threads`` for llama-cpp-python) and the same context per sequence. Each also says which request keys make
a completion run to exactly ``max_tokens`` (oxide and llama-server: ``ignore_eos``; llama-cpp-python has no such
key, so its end-of-generation tokens get a -100 logit bias).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240.0        # load and warm-up of the slowest server, with room for a busy machine
STOP_TIMEOUT_S = 15.0          # after SIGTERM, before SIGKILL


@dataclass(frozen=True)
class ServerSpec:
    """How to start one engine's server (``{port}`` in ``argv`` is filled at start) and what its requests add.

    ``parallel``: the sequences it decodes at once; ``fixed_length``: request keys that stop it ending a
    completion before ``max_tokens``; ``oxide_metrics``: whether ``/metrics`` is oxide's (read per level).
    """

    name: str
    argv: list[str]
    parallel: int
    fixed_length: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    oxide_metrics: bool = False


def thread_env(threads: int) -> dict[str, str]:
    """The variables that cap the BLAS and OpenMP pools a server may start."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def oxide_spec(model: Path, *, threads: int, n_ctx: int, parallel: int) -> ServerSpec:
    """``oxide serve`` from this checkout (not whichever oxide the interpreter has installed)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "oxide", "serve", str(model), "--port", "{port}", "-np", str(parallel),
            "--n-ctx", str(n_ctx), "--queue", "256"]
    return ServerSpec("oxide", argv, parallel, {"ignore_eos": True}, {**thread_env(threads), "PYTHONPATH": path},
                      oxide_metrics=True)


def llama_server_spec(binary: Path, model: Path, *, threads: int, n_ctx: int, parallel: int) -> ServerSpec:
    """llama.cpp's ``llama-server``: ``parallel`` slots sharing a context of ``parallel * n_ctx`` positions."""
    argv = [str(binary), "-m", str(model), "--port", "{port}", "--host", "127.0.0.1", "--parallel", str(parallel),
            "-c", str(parallel * n_ctx), "--threads", str(threads), "--threads-batch", str(threads), "--no-webui"]
    return ServerSpec("llama-server", argv, parallel, {"ignore_eos": True}, thread_env(threads))


def llama_cpp_python_spec(model: Path, *, threads: int, n_ctx: int, end_tokens: list[int]) -> ServerSpec:
    """llama-cpp-python's server: one context, one request at a time."""
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", "{port}", "--host",
            "127.0.0.1", "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads)]
    bias = {"logit_bias": {str(token): -100.0 for token in end_tokens}}
    return ServerSpec("llama-cpp-python", argv, 1, bias, thread_env(threads))


def end_of_generation_tokens(model: Path) -> list[int]:
    """The ids llama.cpp ends a generation on for ``model`` (its vocabulary's end-of-generation set)."""
    import llama_cpp

    vocab_model = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(vocab_model._model.model)
    return [token for token in range(llama_cpp.llama_vocab_n_tokens(vocab))
            if llama_cpp.llama_vocab_is_eog(vocab, token)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int


@contextlib.contextmanager
def running_server(spec: ServerSpec, log_path: Path) -> Iterator[RunningServer]:
    """Start ``spec``'s server (output to ``log_path``), yield its URL and process id once it is ready, and stop it
    on the way out, whatever happened. Raises ``RuntimeError`` naming the log when it exits or never answers."""
    port = free_port()
    argv = [arg.replace("{port}", str(port)) for arg in spec.argv]
    with open(log_path, "w") as log:
        log.write(" ".join(argv) + "\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **spec.env}, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(process, url, spec.name, log_path)
        yield RunningServer(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


def _wait_ready(process: subprocess.Popen, url: str, name: str, log_path: Path) -> None:
    """Poll ``/v1/models``, which all three serve (llama-cpp-python has no ``/health``; llama-server answers 503
    until its model is loaded)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} while starting; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v1/models", timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not answer {url}/v1/models within {START_TIMEOUT_S:.0f} s; see {log_path}")
