"""The GPU kernels against the device's ceilings, the PyTorch reference and cuBLAS on the dequantized weight.

    python -m benchmarks.kernels [--out benchmarks/results/kernels.json]      # on a CUDA device
    python -m benchmarks.kernels --small                                      # anywhere: the same cases, tiny

The ceilings are measured first, in the same run: the copy bandwidth (a 2 GiB device-to-device copy: bytes
read plus bytes written per second) and the bf16 matmul rate (cuBLAS, 8192^3). Every kernel is then timed
beside its peers, each one's result checked against the reference first so that a fast but wrong kernel
cannot pass unnoticed:

- ``qmatmul`` GEMV (M = 1) for every GGML type at Llama-8B shapes: Triton, CUDA C++ (its types), and cuBLAS
  bf16 on the dequantized weight (the reference with a cached dense copy). GB/s counts the quantized
  weight's bytes, the traffic a GEMV cannot avoid; "of ceiling" is against the copy bandwidth.
- ``qmatmul`` GEMM (M = 512), ``qmatmul_gated`` and ``qmatmul_experts``: TFLOP/s against the bf16 ceiling.
- ``attention``: decode over a 32k-slot cache (GB/s of K and V read) and causal prefill (TFLOP/s).
- ``rope`` (GB/s in and out) and ``sample`` over a 262,144-token vocabulary (µs).

Times are medians of CUDA-event timings (``triton.testing.do_bench``). ``--small`` runs every case at toy
shapes on the CPU under Triton's interpreter (set before Triton is imported): a check that the script and
the kernels run, whose times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

if "--small" in sys.argv and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"      # chosen when a kernel is defined: before oxide.kernels loads

import numpy as np
import torch

from oxide import SamplingOptions
from oxide.errors import KernelUnavailableError
from oxide.ops import dispatch, reference
from oxide.quant import GGMLType, QuantTensor, block_geometry
from oxide.quant.testing import random_raw

TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K,
         GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_NL, GGMLType.IQ4_XS]
PEERS = ("triton", "cuda", "torch")


@dataclass(frozen=True)
class Shapes:
    gemv: tuple[tuple[int, int], ...]      # (N, K) of the GEMV matrices
    gemm_rows: int
    experts: tuple[int, int, int, int]     # E, N, K, tokens routed (top-2 of half as many tokens)
    heads: tuple[int, int, int]            # H, Hkv, hd
    cache: int                             # decode attention's keys
    prefill: int                           # prefill attention's tokens
    vocab: int
    copy_bytes: int
    matmul: int


FULL = Shapes(gemv=((4096, 4096), (14336, 4096)), gemm_rows=512, experts=(8, 14336, 4096, 64), heads=(32, 8, 128),
              cache=32768, prefill=4096, vocab=262_144, copy_bytes=2 << 30, matmul=8192)
SMALL = Shapes(gemv=((48, 512),), gemm_rows=17, experts=(3, 32, 256, 6), heads=(4, 2, 64), cache=40, prefill=24,
               vocab=1000, copy_bytes=1 << 20, matmul=64)


@dataclass
class Row:
    case: str
    impl: str
    ms: float
    rate: float            # GB/s or TFLOP/s
    unit: str
    of_ceiling: float      # the rate over the device's measured ceiling of that unit


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of a call: CUDA events on a GPU, the wall clock otherwise."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: float(do_bench(fn, warmup=25, rep=200))

    def wall(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))

    return wall


def ceilings(shapes: Shapes, device: torch.device, ms: Callable) -> dict[str, float]:
    """Copy GB/s (read + write) and bf16 matmul TFLOP/s, measured here."""
    src = torch.empty(shapes.copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy = 2 * shapes.copy_bytes / ms(lambda: dst.copy_(src)) / 1e6
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(shapes.matmul, shapes.matmul, device=device, dtype=dtype)
    flops = 2 * shapes.matmul ** 3 / ms(lambda: a @ a) / 1e9
    return {"GB/s": copy, "TFLOP/s": flops}


def quantized(qtype: GGMLType, shape: tuple[int, ...], device: torch.device, seed: int) -> QuantTensor:
    raw = random_raw(qtype, shape, np.random.default_rng(seed))
    return QuantTensor(torch.from_numpy(raw).to(device), qtype, shape, name=f"{qtype.name}{shape}")


def check(got: torch.Tensor, want: torch.Tensor, what: str, tolerance: float) -> None:
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-30)).item()
    if not err <= tolerance:
        raise AssertionError(f"{what}: relative error {err:.3g} > {tolerance}: the kernel is wrong, not timed")


class Bench:
    def __init__(self, shapes: Shapes, device: torch.device) -> None:
        self.shapes, self.device = shapes, device
        self.ms = timer(device)
        self.act = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.tolerance = 2e-2 if self.act == torch.bfloat16 else 1e-4
        self.ceiling = ceilings(shapes, device, self.ms)
        self.rows: list[Row] = []

    def peers(self, case: str, op: str, probe: tuple, call: Callable[[Callable], object], amount: float, unit: str,
              scale: float) -> None:
        """Time ``call(impl)`` for each peer implementation of ``op`` that serves ``probe``; ``amount`` bytes
        or flops per call, shown as ``unit`` (``scale`` per second)."""
        want = call(dispatch.named(op, "torch", self.device.type, *probe))
        for name in PEERS:
            try:
                impl = dispatch.named(op, name, self.device.type, *probe)
            except KernelUnavailableError:
                continue
            got = call(impl)
            if isinstance(got, torch.Tensor) and got.is_floating_point():
                check(got, want, f"{case} {name}", self.tolerance)
            ms = self.ms(lambda impl=impl: call(impl))
            rate = amount / (ms / 1e3) / scale
            label = "cuBLAS (dequantized)" if name == "torch" and op.startswith("qmatmul") else name
            self.rows.append(Row(case, label, ms, rate, unit, rate / self.ceiling.get(unit, float("nan"))))

    def gemv(self) -> None:
        for qtype in TYPES:
            for n, k in self.shapes.gemv:
                w = quantized(qtype, (n, k), self.device, seed=n + k)
                x = torch.randn(1, k, device=self.device, dtype=self.act)
                self.peers(f"GEMV {qtype.name} {n}x{k}", "qmatmul", (w, self.act), lambda f: f(x, w, None),
                           w.nbytes, "GB/s", 1e9)

    def gemm(self) -> None:
        n, k = self.shapes.gemv[-1]
        m = self.shapes.gemm_rows
        for qtype in (GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0):
            w = quantized(qtype, (n, k), self.device, seed=1)
            x = torch.randn(m, k, device=self.device, dtype=self.act)
            self.peers(f"GEMM {qtype.name} {m}x{n}x{k}", "qmatmul", (w, self.act), lambda f: f(x, w, None),
                       2 * m * n * k, "TFLOP/s", 1e12)
        gate, up = (quantized(GGMLType.Q4_K, (n, k), self.device, seed=s) for s in (2, 3))
        for rows in (1, m):
            x = torch.randn(rows, k, device=self.device, dtype=self.act)
            self.peers(f"gated Q4_K M={rows} {n}x{k}", "qmatmul_gated", ((gate, up), self.act),
                       lambda f: f(x, gate, up, "silu"), 4 * rows * n * k, "TFLOP/s", 1e12)

    def experts(self) -> None:
        e, n, k, rows = self.shapes.experts
        w = quantized(GGMLType.Q4_K, (e, n, k), self.device, seed=4)
        per = torch.full((e,), rows // e, device=self.device)
        per[0] += rows - int(per.sum())
        offsets = torch.cat((per.new_zeros(1), per.cumsum(0)))
        x = torch.randn(rows, k, device=self.device, dtype=self.act)
        self.peers(f"experts Q4_K E={e} rows={rows}", "qmatmul_experts", (w, self.act), lambda f: f(x, w, offsets),
                   2 * rows * n * k, "TFLOP/s", 1e12)

    def attention(self) -> None:
        H, Hkv, hd = self.shapes.heads
        S, T = self.shapes.cache, self.shapes.prefill
        kv = [torch.randn(1, Hkv, S, hd, device=self.device, dtype=self.act) for _ in range(2)]
        q = torch.randn(1, H, 1, hd, device=self.device, dtype=self.act)
        positions = torch.arange(S, device=self.device)
        probe = (self.act, self.act, self.act)
        self.peers(f"decode attention S={S}", "attention", probe,
                   lambda f: f(q, *kv, positions[-1:], positions, scale=hd ** -0.5), 2 * kv[0].nbytes, "GB/s", 1e9)
        qkv = [torch.randn(1, h, T, hd, device=self.device, dtype=self.act) for h in (H, Hkv, Hkv)]
        pos = torch.arange(T, device=self.device)
        self.peers(f"prefill attention T={T}", "attention", probe,
                   lambda f: f(*qkv, pos, pos, scale=hd ** -0.5), 2 * H * T * T * hd, "TFLOP/s", 1e12)

    def rope(self) -> None:
        H, _, hd = self.shapes.heads
        T = self.shapes.prefill
        x = torch.randn(1, H, T, hd, device=self.device, dtype=self.act)
        cos, sin = reference.rope_cos_sin(torch.arange(T, device=self.device),
                                          torch.rand(hd // 2, device=self.device))
        self.peers(f"rope T={T}", "rope", (self.act,), lambda f: f(x, cos, sin), 2 * x.nbytes, "GB/s", 1e9)

    def sample(self) -> None:
        V = self.shapes.vocab
        logits = torch.randn(V, device=self.device) * 3
        u = torch.rand((), device=self.device)
        options = SamplingOptions(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
        self.peers(f"sample V={V}", "sample", (torch.float32,), lambda f: f(logits, None, u, options),
                   logits.nbytes, "GB/s", 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="toy shapes, on the CPU under Triton's interpreter")
    parser.add_argument("--out", type=Path, help="write the rows and ceilings as JSON here")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.small
    if not on_gpu and not args.small:
        parser.error("no CUDA device: run with --small for the interpreter's smoke run")
    device = torch.device("cuda" if on_gpu else "cpu")
    bench = Bench(SMALL if args.small else FULL, device)
    for part in (bench.gemv, bench.gemm, bench.experts, bench.attention, bench.rope, bench.sample):
        part()
    card = torch.cuda.get_device_name() if on_gpu else "CPU, Triton interpreter (times mean nothing)"
    print(f"{card}: copy {bench.ceiling['GB/s']:.0f} GB/s, bf16 matmul {bench.ceiling['TFLOP/s']:.1f} TFLOP/s")
    print(f"{'case':34} {'implementation':22} {'ms':>9} {'rate':>10} {'of ceiling':>10}")
    for row in bench.rows:
        print(f"{row.case:34} {row.impl:22} {row.ms:9.4f} {row.rate:7.1f} {row.unit:<7} {row.of_ceiling:8.0%}")
    if args.out:
        args.out.write_text(json.dumps({"device": card, "ceilings": bench.ceiling,
                                        "rows": [asdict(r) for r in bench.rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
