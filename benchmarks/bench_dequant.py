"""Dequantization throughput: oxide's PyTorch dequantizers vs gguf-py's numpy ones.

For each type, random blocks (finite f16 scales) of about ``--mb`` MB are dequantized by
both implementations in the same run; MB/s counts bytes of blocks consumed. The results
are also checked to be bit-identical, so a fast but wrong kernel cannot pass unnoticed.
With ``--gguf FILE`` every tensor of a real model is dequantized as well (load-time cost).

    python benchmarks/bench_dequant.py [--mb 32] [--threads 2] [--types Q4_K,Q8_0] [--gguf F]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch

from oxide.quant import SUPPORTED_TYPES, GGMLType, block_geometry, dequantize, qtype_name
from oxide.quant.testing import random_raw


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_type(qtype: GGMLType, megabytes: float, repeats: int, rng: np.random.Generator) -> None:
    geo = block_geometry(qtype)
    row_blocks = max(1, 4096 // geo.block_size)  # rows of 4096 weights
    rows = max(1, int(megabytes * 1e6) // (row_blocks * geo.type_size))
    shape = (rows, row_blocks * geo.block_size)
    raw = random_raw(qtype, shape, rng)  # (rows, row_bytes)
    data = torch.from_numpy(raw)

    ours = dequantize(data, qtype, shape)
    ref = gguf.quants.dequantize(raw, qtype)
    exact = torch.equal(ours, torch.from_numpy(np.ascontiguousarray(ref)))

    t_ours = best_time(lambda: dequantize(data, qtype, shape), repeats)
    t_ref = best_time(lambda: gguf.quants.dequantize(raw, qtype), repeats)
    mb = raw.nbytes / 1e6
    print(
        f"{qtype_name(qtype):7s} {mb:7.1f} MB  oxide {mb / t_ours:8.0f} MB/s  "
        f"gguf-py {mb / t_ref:8.0f} MB/s  ratio {t_ref / t_ours:6.2f}x  "
        f"{'bit-exact' if exact else 'MISMATCH'}"
    )


def bench_file(path: Path) -> None:
    reader = gguf.GGUFReader(path)
    total_bytes = 0
    t0 = time.perf_counter()
    for tensor in reader.tensors:
        raw = torch.from_numpy(np.asarray(tensor.data).view(np.uint8))
        shape = tuple(int(d) for d in reversed(tensor.shape))
        dequantize(raw, tensor.tensor_type, shape)
        total_bytes += raw.numel()
    dt = time.perf_counter() - t0
    print(f"{path.name}: {len(reader.tensors)} tensors, {total_bytes / 1e6:.1f} MB in {dt:.2f} s "
          f"({total_bytes / 1e6 / dt:.0f} MB/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=32.0, help="MB of blocks per type")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--types", default="", help="comma-separated type names (default: all)")
    parser.add_argument("--gguf", type=Path, default=None, help="also dequantize every tensor of this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    types = [GGMLType[n.strip().upper()] for n in args.types.split(",") if n.strip()]
    types = types or sorted(SUPPORTED_TYPES, key=int)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; gguf-py is single-threaded numpy")
    rng = np.random.default_rng(0)
    for qtype in types:
        bench_type(qtype, args.mb, args.repeats, rng)
    if args.gguf is not None:
        bench_file(args.gguf)


if __name__ == "__main__":
    main()
