"""A real ``oxide serve`` in a subprocess for the server tests: started on a free loopback port, waited for on
``/health`` (bounded), stopped (terminate, then kill) when the test module ends; its log is printed if it
fails to start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class RunningServer:
    url: str                 # http://127.0.0.1:PORT
    process: subprocess.Popen
    log: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def oxide_server(model: str | os.PathLike[str] | None, *args: str) -> Iterator[RunningServer]:
    """``oxide serve MODEL ARGS`` on 127.0.0.1 until the block ends."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="oxide-serve-", suffix=".log")[1])
    command = [sys.executable, "-m", "oxide", "serve", *([str(model)] if model else []), "--port", str(port), *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _wait_until_healthy(server: RunningServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"oxide serve exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"oxide serve did not answer /health within {START_TIMEOUT_SECONDS} s:\n"
                       f"{server.log.read_text()}")


def metric(server: RunningServer, name: str) -> float:
    """One unlabelled sample of ``/metrics``."""
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise KeyError(f"/metrics has no sample {name}")
