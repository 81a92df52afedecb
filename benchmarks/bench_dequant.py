"""Dequantization throughput: oxide's PyTorch dequantizers vs gguf-py's numpy ones.

For each type, random blocks (finite f16 scales) of about ``--mb`` MB are dequantized by
both implementations in the same run; MB/s counts bytes of blocks consumed, and the ratio
is gguf-py's time over ours (above 1: we are faster). The results are also checked to be
bit-identical, so a fast but wrong kernel cannot pass unnoticed. With ``--gguf FILE`` every
tensor of a real model is dequantized by both, as at load time.

Fresh output memory is page-faulted on first touch, which bounds the fastest types; set
``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's transparent-huge-page hint) to see that cost shrink.

    python -m benchmarks.bench_dequant [--mb 32] [--threads 2] [--types Q4_K,Q8_0] [--gguf F]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch

from oxide.quant import SUPPORTED_TYPES, GGMLType, block_geometry, dequantize, qtype_name
from oxide.quant.testing import random_raw


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool, constant tables
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_type(qtype: GGMLType, megabytes: float, repeats: int, rng: np.random.Generator) -> None:
    geo = block_geometry(qtype)
    row_bytes = 4096 // geo.block_size * geo.type_size  # rows of 4096 weights
    shape = (max(1, int(megabytes * 1e6) // row_bytes), 4096)
    raw = random_raw(qtype, shape, rng)  # (rows, row_bytes)
    data = torch.from_numpy(raw)

    ours = dequantize(data, qtype, shape)
    ref = gguf.quants.dequantize(raw, qtype)
    exact = torch.equal(ours, torch.from_numpy(np.ascontiguousarray(ref)))

    t_ours = best_time(lambda: dequantize(data, qtype, shape), repeats)
    t_ref = best_time(lambda: gguf.quants.dequantize(raw, qtype), repeats)
    mb = raw.nbytes / 1e6
    note = "  (gguf-py returns a view: no work)" if qtype == GGMLType.F32 else ""
    print(
        f"{qtype_name(qtype):7s} {mb:6.1f} MB  oxide {mb / t_ours:7.0f} MB/s  "
        f"gguf-py {mb / t_ref:7.0f} MB/s  ratio {t_ref / t_ours:5.2f}x  "
        f"{'bit-exact' if exact else 'MISMATCH'}{note}"
    )


def bench_file(path: Path) -> None:
    reader = gguf.GGUFReader(path)
    with warnings.catch_warnings():  # the memory map is read-only; we never write to it
        warnings.simplefilter("ignore", UserWarning)
        tensors = [
            (torch.from_numpy(np.asarray(t.data).view(np.uint8)), t.tensor_type, tuple(int(d) for d in reversed(t.shape)))
            for t in reader.tensors
        ]
    total = sum(raw.numel() for raw, _, _ in tensors) / 1e6

    def ours() -> None:
        for raw, qtype, shape in tensors:
            dequantize(raw, qtype, shape)

    def theirs() -> None:
        for raw, qtype, _ in tensors:
            gguf.quants.dequantize(raw.numpy(), qtype)

    t_ours, t_ref = best_time(ours, 1), best_time(theirs, 1)
    print(
        f"{path.name}: {len(tensors)} tensors, {total:.1f} MB  oxide {t_ours:.2f} s "
        f"({total / t_ours:.0f} MB/s)  gguf-py {t_ref:.2f} s  ratio {t_ref / t_ours:.2f}x"
    )


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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; gguf-py: numpy, one thread")
    rng = np.random.default_rng(0)
    for qtype in types:
        bench_type(qtype, args.mb, args.repeats, rng)
    if args.gguf is not None:
        bench_file(args.gguf)


if __name__ == "__main__":
    main()
