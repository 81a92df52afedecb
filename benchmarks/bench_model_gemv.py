"""How fast the decode GEMV computes on a model's own matrices, with the weights in cache.

Each distinct (type, shape) of the model's layer matrices, plus a 2048-row slice of its output head, is
multiplied by one activation row on one thread, over and over so that the blocks stay in the L2/L3
caches; the best of 7 rounds of 100 calls, in thread CPU time (a thread that loses its core is not
charged for the wait). Against the machine's memory bandwidth this says whether a decode step's GEMVs
can be memory-bound at all: with 2 threads they cannot stream a type faster than twice its GB/s here.

    python -m benchmarks.bench_model_gemv [MODEL.gguf]
"""

from __future__ import annotations

import argparse
import time

import oxide   # before torch, so that oxide's OpenMP setting (GOMP_SPINCOUNT) applies
import torch
from oxide.ops.cpu.quant import LinearKernel
from oxide.quant import QuantTensor

HEAD_ROWS = 2048


def best_seconds(kernel: LinearKernel, weight: QuantTensor, rounds: int = 7, calls: int = 100) -> float:
    x = torch.randn(1, weight.shape[1])
    for _ in range(30):
        kernel(x, weight)
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            kernel(x, weight)
        best = min(best, (time.thread_time() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="a GGUF file (default: Gemma 3 270M Q4_K_M)")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    weights = oxide.load(ns.model, device="cpu").lm.weights
    matrices: dict[tuple[str, tuple[int, ...]], QuantTensor] = {}
    for layer in weights.layers:
        for name in ("q", "k", "v", "o", "gate", "up", "down"):
            m = getattr(layer, name)
            matrices.setdefault((m.qtype.name, tuple(m.shape)), m)
    head = weights.output
    rows = min(HEAD_ROWS, head.shape[0])
    matrices[(f"{head.qtype.name} (head rows)", (rows, head.shape[1]))] = QuantTensor(
        head.data[:rows].reshape(-1), head.qtype, (rows, head.shape[1]))
    print("| type | N x K | µs per call | G weights/s | GB/s of blocks |")
    print("|---|---|---:|---:|---:|")
    for (qtype, shape), m in sorted(matrices.items()):
        seconds = best_seconds(LinearKernel(m), m)
        print(f"| {qtype} | {shape[0]} x {shape[1]} | {seconds * 1e6:.1f} | {shape[0] * shape[1] / seconds / 1e9:.1f} | "
              f"{m.data.numel() / seconds / 1e9:.1f} |")


if __name__ == "__main__":
    main()
