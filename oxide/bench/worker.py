"""One measurement in a fresh process: ``python -m oxide.bench.worker`` with a JSON request on stdin.

The request names the engine, the model, the thread count and a task:

* ``speed``: load the engine, produce a first token (the load time ends there, imports included),
  then one timed greedy generation of ``new_tokens`` tokens after ``ids``;
* ``quality``: load the engine and save the float32 logits of every position of ``ids`` to
  ``logits_path`` (a ``.npy`` file).

The result is one JSON line on stdout, with the peak resident memory of the whole process. A
failure is a Python traceback on stderr and a non-zero exit status, which the harness reports.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .engines import open_engine


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux's ``ru_maxrss`` survives ``exec``: a worker started from a large parent would report the
    parent's peak. ``VmHWM`` in ``/proc/self/status`` belongs to this program only, so it is read where
    it exists; elsewhere ``ru_maxrss`` (bytes on macOS, KiB on the other systems).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def speed(request: dict[str, Any]) -> dict[str, Any]:
    """Load time to a first token, then prefill and decode speed of one greedy generation."""
    start = time.perf_counter()
    ids: list[int] = request["ids"]
    new_tokens: int = request["new_tokens"]
    engine = open_engine(request["engine"], Path(request["model"]), request["threads"], len(ids) + new_tokens)
    engine.first_token(ids[:1])
    load_seconds = time.perf_counter() - start
    timing = engine.generate(ids, new_tokens)
    return {"load_s": load_seconds, "prompt_tokens": timing.prompt_tokens,
            "prefill_tok_s": timing.prefill_tokens_per_second, "decode_tok_s": timing.decode_tokens_per_second,
            "generated": timing.tokens, "peak_rss_mb": peak_rss_mb()}


def quality(request: dict[str, Any]) -> dict[str, Any]:
    """Save the teacher-forced logits of ``ids`` for the harness to score."""
    ids: list[int] = request["ids"]
    engine = open_engine(request["engine"], Path(request["model"]), request["threads"], len(ids), all_logits=True)
    logits = engine.logits(ids)
    np.save(request["logits_path"], logits.astype(np.float32, copy=False))
    return {"positions": int(logits.shape[0]), "vocab": int(logits.shape[1]), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    request = json.loads(sys.stdin.read())
    result = {"speed": speed, "quality": quality}[request["task"]](request)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
