"""Where one decode step's time goes (or, with ``--prefill``, one prompt's): weights, attention, norms,
other ops, sampling and the rest.

By default the step is the one ``generate`` runs, :class:`oxide.models.step.DecodeStep`: the compiled
program replays the step's C++ calls, each timed in C++ (``StepProgram.run_timed``), plus one greedy
sample; "python around the step" is the step's wall time minus the calls and the sample (writing the
token and position, the cache's bookkeeping, the sampler's Python).

``--python`` profiles the model's Python forward instead, ``DecoderLM.forward`` per token: every matmul
(:class:`oxide.ops.Linear`, :class:`oxide.ops.LinearGroup`), every bound layer op
(:class:`oxide.ops.bound.LayerOps`), the KV-cache writes and the sampler are wrapped in a timer;
"python and launch overhead" is the step's wall time minus every timed part: the Python of the blocks,
tensor views and op entry costs. The timers add about a microsecond per call, charged to the parts they wrap.

    python -m benchmarks.profile_decode [MODEL.gguf] [--threads 2] [--steps 64] [--context 512]
        [--python | --prefill | --batch B]

``--prefill`` times the forward pass over a ``--context``-token prompt on a fresh cache instead (the
best of three passes after one warm-up; the output head runs for the last position only).

``--batch B`` (B > 1) profiles what ``oxide serve`` runs when B sequences decode together:
``DecoderLM.decode_batch`` over B caches of ``--context`` tokens each, timed by part as ``--python`` does,
then the rows sampled together as the engine samples them (:func:`oxide.sampling.sample_rows`), each with the
server's default sampling (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable

import oxide   # before torch, so that oxide's OpenMP setting (GOMP_SPINCOUNT) applies
import torch
from oxide.cache import LayerRows
from oxide.models.step import DecodeStep
from oxide.ops.bound import LayerOps
from oxide.sampling import Sampler, SamplingOptions, sample_rows

CATEGORY = {"rms_norm": "norms", "add_rms_norm": "norms", "rope_cos_sin": "rope", "rope": "rope",
            "kv_store": "attention: KV cache write", "kv_store_rows": "attention: KV cache write",
            "attention": "attention", "attention_rows": "attention",
            "gated_activation": "activation",
            "add": "other ops", "scale": "other ops", "softcap": "other ops",
            "gemv": "weights: layers", "dequantize_rows": "embedding"}   # the last two: compiled-step calls


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, category: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[category] += time.perf_counter() - start
        return timed


def instrument(model: oxide.Model, timers: Timers) -> None:
    """Wrap the model's bound ops, matmuls and cache writes in timers (in place)."""
    lm = model.lm
    bound = LayerOps(**{f.name: timers.wrap(CATEGORY[f.name], getattr(lm.ops, f.name))
                        for f in dataclasses.fields(LayerOps)})
    lm.ops = bound
    lm.head.impl = timers.wrap("weights: output head", lm.head.impl)
    lm.embed = timers.wrap("embedding", lm.embed)
    for block in lm.blocks:
        block.ops = block.attention.ops = block.mlp.ops = bound
        for linear in (block.attention.qkv_proj, block.attention.o_proj, block.mlp.gate_up, block.mlp.down):
            linear.impl = timers.wrap("weights: layers", linear.impl)


def profile(model: oxide.Model, steps: int, context: int) -> tuple[dict[str, float], float]:
    """Milliseconds per step by category, and the step's wall time, after ``context`` prompt tokens."""
    lm = model.lm
    cache = lm.new_cache(context + steps + 8)
    prompt = torch.arange(1, context + 1).remainder(1000).add(100).view(1, -1)
    lm.forward(prompt, cache, last_only=True)
    timers = Timers()
    instrument(model, timers)
    for layer in cache.layers:
        layer.update = timers.wrap("attention: KV cache write", layer.update)
    sampler = Sampler(SamplingOptions.greedy())
    sample = timers.wrap("sampling", sampler.sample)
    token, history = 100, prompt[0].tolist()
    for warm in (True, False):
        timers.seconds.clear()
        start = time.perf_counter()
        for _ in range(4 if warm else steps):
            logits = lm.forward(torch.tensor([[token]]), cache, last_only=True)[0, -1]
            token = sample(logits, history)
            history.append(token)
        wall = time.perf_counter() - start
    per_step = {name: s / steps * 1e3 for name, s in timers.seconds.items()}
    per_step["python and launch overhead"] = wall / steps * 1e3 - sum(per_step.values())
    return per_step, wall / steps * 1e3


def profile_batch(model: oxide.Model, steps: int, context: int, batch: int) -> tuple[dict[str, float], float]:
    """Milliseconds per batched decode step of ``batch`` rows by category (sampling all rows included), and the
    step's wall time, each row after its own ``context``-token prompt."""
    lm = model.lm
    caches = [lm.new_cache(context + steps + 8) for _ in range(batch)]
    histories = []
    for row, cache in enumerate(caches):
        prompt = torch.arange(1, context + 1).add(row).remainder(1000).add(100).view(1, -1)
        lm.forward(prompt, cache, last_only=True)
        histories.append(prompt[0].tolist())
    timers = Timers()
    instrument(model, timers)
    rows_init = LayerRows.__init__

    def timed_rows(rows: LayerRows, layers: list) -> None:   # the batched step's one store per layer
        rows_init(rows, layers)
        rows._store_rows = timers.wrap("attention: KV cache write", rows._store_rows)

    LayerRows.__init__ = timed_rows
    samplers = [Sampler(SamplingOptions(seed=row)) for row in range(batch)]
    sample = timers.wrap("sampling", sample_rows)
    tokens = [100] * batch
    for warm in (True, False):
        timers.seconds.clear()
        start = time.perf_counter()
        for _ in range(4 if warm else steps):
            logits = lm.decode_batch(torch.tensor(tokens), caches)                        # (B, V)
            tokens = sample(samplers, logits, histories)
            for history, token in zip(histories, tokens):
                history.append(token)
        wall = time.perf_counter() - start
    per_step = {name: s / steps * 1e3 for name, s in timers.seconds.items()}
    per_step["python and launch overhead"] = wall / steps * 1e3 - sum(per_step.values())
    return per_step, wall / steps * 1e3


class TimedProgram:
    """Stands in for a DecodeStep's program: replays it with each call timed, adding up seconds by part
    (the step's last GEMV is the output head)."""

    def __init__(self, program) -> None:
        self.program = program
        self.seconds: dict[str, float] = defaultdict(float)

    def run(self) -> None:
        times = self.program.run_timed()
        head = max(i for i, (name, _) in enumerate(times) if name == "gemv")
        for i, (name, seconds) in enumerate(times):
            self.seconds["weights: output head" if i == head else CATEGORY[name]] += seconds


def profile_compiled(model: oxide.Model, steps: int, context: int) -> tuple[dict[str, float], float]:
    """Milliseconds per compiled decode step by part, and the step's wall time, after ``context`` prompt tokens."""
    lm = model.lm
    cache = lm.new_cache(context + steps + 8)
    prompt = torch.arange(1, context + 1).remainder(1000).add(100).view(1, -1)
    lm.forward(prompt, cache, last_only=True)
    step = DecodeStep(lm, cache)
    sampler = Sampler(SamplingOptions.greedy())
    token, history = 100, prompt[0].tolist()
    for _ in range(4):   # the first records the program
        token = sampler.sample(step(token), history)
        history.append(token)
    if not step.compiled:
        raise SystemExit("this model's decode step is not compiled (see the log); profile it with --python")
    timed = step._program = TimedProgram(step._program)
    sampling = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        logits = step(token)
        sample_start = time.perf_counter()
        token = sampler.sample(logits, history)
        sampling += time.perf_counter() - sample_start
        history.append(token)
    wall = time.perf_counter() - start
    per_step = {name: s / steps * 1e3 for name, s in timed.seconds.items()}
    per_step["sampling"] = sampling / steps * 1e3
    per_step["python around the step"] = wall / steps * 1e3 - sum(per_step.values())
    return per_step, wall / steps * 1e3


def profile_prefill(model: oxide.Model, context: int) -> tuple[dict[str, float], float]:
    """Milliseconds by category of the best of three forward passes over a ``context``-token prompt."""
    lm = model.lm
    prompt = torch.arange(1, context + 1).remainder(1000).add(100).view(1, -1)
    timers = Timers()
    instrument(model, timers)
    best: tuple[dict[str, float], float] | None = None
    for attempt in range(4):   # the first is a warm-up
        cache = lm.new_cache(context + 8)
        for layer in cache.layers:
            layer.update = timers.wrap("attention: KV cache write", layer.update)
        timers.seconds.clear()
        start = time.perf_counter()
        lm.forward(prompt, cache, last_only=True)
        wall = (time.perf_counter() - start) * 1e3
        parts = {name: s * 1e3 for name, s in timers.seconds.items()}
        parts["python and launch overhead"] = wall - sum(parts.values())
        if attempt and (best is None or wall < best[1]):
            best = parts, wall
    assert best is not None
    return best


def markdown(parts: dict[str, float], total_ms: float, tokens: int = 1, rows: int = 1) -> str:
    """The table of parts; ``tokens`` > 1: the parts of one pass over that many prompt tokens; ``rows`` > 1: of
    one decode step of that many sequences."""
    unit = "ms per token" if tokens == 1 else f"ms per {tokens}-token prompt"
    unit = unit if rows == 1 else f"ms per step of {rows} rows"
    lines = [f"| part | {unit} | share |", "|---|---|---|"]
    for name, ms in sorted(parts.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {ms:.2f} | {ms / total_ms:.0%} |")
    label = "step" if tokens == 1 else "prompt"
    lines.append(f"| **{label}** | **{total_ms:.2f}** ({1e3 * tokens * rows / total_ms:.1f} tok/s) | 100% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="a GGUF file or HF folder (default: Gemma 3 270M Q4_K_M)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--context", type=int, default=512, help="tokens already in the cache (the prompt's, with --prefill)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--python", action="store_true", help="profile the Python forward per token instead")
    mode.add_argument("--prefill", action="store_true", help="profile the prompt's forward pass instead")
    mode.add_argument("--batch", type=int, default=1, help="profile a batched decode step of this many sequences")
    ns = parser.parse_args()
    torch.set_num_threads(ns.threads)
    model = oxide.load(ns.model, device="cpu", n_ctx=ns.context + ns.steps + 8)
    if ns.batch > 1:
        print(markdown(*profile_batch(model, ns.steps, ns.context, ns.batch), rows=ns.batch))
    elif ns.prefill:
        print(markdown(*profile_prefill(model, ns.context), tokens=ns.context))
    elif ns.python:
        print(markdown(*profile(model, ns.steps, ns.context)))
    else:
        print(markdown(*profile_compiled(model, ns.steps, ns.context)))


if __name__ == "__main__":
    main()
