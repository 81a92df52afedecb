"""The compiled quantized matmul against its reference and against f32 sgemm, for every GGML type.

Decode (M = 1, several rows for a batch of sequences): the GEMV reads each weight byte once, in its
quantized form, so its figure of merit is bytes read per second; it is given as GB/s and as a fraction
of this machine's memory bandwidth, measured in the same run as torch's sum over a 1 GiB tensor with
the same thread count. The weights cycle through enough matrices (about 128 MB of blocks) that they
come from memory, not from the caches, as in a real decode step. Peers, on the same matrices:

- the reference op (``oxide.ops.reference.qmatmul``), which multiplies a cached f32 copy: that copy
  is what the compiled path exists to avoid, and it reads 4 bytes per weight;
- f32 sgemm (``torch.nn.functional.linear``) on the dequantized weight: the same f32 copy,
  timed without the reference's dispatch.

Prefill (M = 512): the banded path (dequantize a band that stays in cache, then sgemm) in GFLOP/s,
against sgemm on a ready f32 weight (the ceiling: the band adds only its dequantization).

    python -m benchmarks.bench_qmatmul [--threads 2] [--rows 1,4] [--prefill 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import oxide   # before torch, so that oxide's OpenMP setting (GOMP_SPINCOUNT) applies
import numpy as np
import torch
import torch.nn.functional as F
from oxide.ops import cpu, reference
from oxide.ops.cpu import quant as cpu_quant
from oxide.quant import GGMLType, QuantTensor
from oxide.quant.testing import random_raw

from .bench_dequant import best_time

TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K,
         GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_NL, GGMLType.IQ4_XS]
SHAPE = (2048, 2048)                   # (N, K) of each matrix: an MLP projection of a ~1B model
WORKING_SET = 128 << 20                # bytes of quantized blocks cycled through (well past the L3 cache)


def memory_bandwidth(threads: int) -> float:
    """Bytes per second of torch's sum over a 1 GiB float32 tensor (best of 5)."""
    torch.set_num_threads(threads)
    big = torch.ones(1 << 28)
    big.sum()
    return big.numel() * 4 / best_time(lambda: big.sum(), 5)


def _matrices(qtype: GGMLType, rng: np.random.Generator) -> list[QuantTensor]:
    one = random_raw(qtype, SHAPE, rng)
    count = max(2, WORKING_SET // one.nbytes)
    return [QuantTensor(torch.from_numpy(random_raw(qtype, SHAPE, rng)), qtype, SHAPE) for _ in range(count)]


def _cycle(fn: Callable[[QuantTensor], object], mats: list[QuantTensor]) -> float:
    """Seconds per matrix for one pass of ``fn`` over all ``mats`` (best of 3 passes)."""
    return best_time(lambda: [fn(w) for w in mats], 3) / len(mats)


def decode_row(qtype: GGMLType, rows: int, rng: np.random.Generator, bandwidth: float) -> dict:
    mats = _matrices(qtype, rng)
    x = torch.randn(rows, SHAPE[1])
    fast = _cycle(lambda w: cpu_quant.qmatmul(x, w), mats)
    nbytes = mats[0].nbytes
    few = mats[:2]                                   # the f32 peers: two matrices' copies, 32 MiB each
    dense = [w.dense(torch.float32) for w in few]
    ref = _cycle(lambda w: reference.qmatmul(x, w), few)
    sgemm = best_time(lambda: [F.linear(x, d) for d in dense], 3) / len(dense)
    for w in few:
        w.drop_cache()
    return {"type": qtype.name, "rows": rows, "us": fast * 1e6, "GB/s": nbytes / fast / 1e9,
            "of_bandwidth": nbytes / fast / bandwidth, "reference_us": ref * 1e6, "sgemm_f32_us": sgemm * 1e6,
            "x_vs_reference": ref / fast}


def prefill_row(qtype: GGMLType, rows: int, rng: np.random.Generator) -> dict:
    w = QuantTensor(torch.from_numpy(random_raw(qtype, SHAPE, rng)), qtype, SHAPE)
    x = torch.randn(rows, SHAPE[1])
    flops = 2 * rows * SHAPE[0] * SHAPE[1]
    fast = best_time(lambda: cpu_quant.qmatmul(x, w), 5)
    dense = w.dequantize(torch.float32)
    sgemm = best_time(lambda: F.linear(x, dense), 5)
    return {"type": qtype.name, "rows": rows, "GFLOP/s": flops / fast / 1e9, "sgemm_f32_GFLOP/s": flops / sgemm / 1e9,
            "of_sgemm": sgemm / fast}


def markdown(decode: list[dict], prefill: list[dict], bandwidth: float, threads: int, isa: str) -> str:
    lines = [f"Memory bandwidth (torch sum over 1 GiB, {threads} threads): {bandwidth / 1e9:.1f} GB/s; "
             f"kernels: {isa}; matrices {SHAPE[0]} x {SHAPE[1]}, ~{WORKING_SET >> 20} MB of blocks cycled.", "",
             "| type | rows | oxide µs | GB/s | of bandwidth | reference µs | f32 sgemm µs | vs reference |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['type']} | {r['rows']} | {r['us']:.0f} | {r['GB/s']:.1f} | {r['of_bandwidth']:.0%} | "
              f"{r['reference_us']:.0f} | {r['sgemm_f32_us']:.0f} | {r['x_vs_reference']:.1f}x |" for r in decode]
    if prefill:
        lines += ["", "| type | rows | oxide GFLOP/s | f32 sgemm GFLOP/s | of sgemm |", "|---|---|---|---|---|"]
        lines += [f"| {r['type']} | {r['rows']} | {r['GFLOP/s']:.0f} | {r['sgemm_f32_GFLOP/s']:.0f} | "
                  f"{r['of_sgemm']:.0%} |" for r in prefill]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,4", help="activation rows of the decode GEMV, comma-separated")
    parser.add_argument("--prefill", type=int, default=512, help="rows of the prefill product (0: skip)")
    parser.add_argument("--types", default=",".join(t.name for t in TYPES))
    parser.add_argument("--json", help="also write the figures to this file")
    ns = parser.parse_args()
    if not cpu.available():
        raise SystemExit(f"oxide bench_qmatmul: {cpu.status()}")
    bandwidth = memory_bandwidth(ns.threads)
    torch.set_num_threads(ns.threads)
    rng = np.random.default_rng(0)
    types = [GGMLType[name] for name in ns.types.split(",")]
    decode = [decode_row(t, int(rows), rng, bandwidth) for t in types for rows in ns.rows.split(",")]
    prefill = [prefill_row(t, ns.prefill, rng) for t in types] if ns.prefill else []
    isa = cpu.extension().isa()
    print(markdown(decode, prefill, bandwidth, ns.threads, isa))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"bandwidth": bandwidth, "threads": ns.threads, "isa": isa, "decode": decode,
                       "prefill": prefill}, f, indent=1)


if __name__ == "__main__":
    main()
