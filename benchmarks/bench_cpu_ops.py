"""Per-call time of the compiled CPU layer ops against their PyTorch references, at decode shapes.

Shapes are Gemma 3 270M's batch-1 decode step (D=640, H=4, Hkv=1, hd=256, T=1, F=2048; keys in a
KV-cache buffer of 8192 slots, attended at S=512 and S=2048). Each call is timed on its own, the three
implementations in turn for ``--ms`` milliseconds per op: the best call (what the op costs on an idle machine) and the median
(what it cost here, other processes included). Columns: the reference (``oxide.ops.reference``), the
compiled op called directly (``oxide.ops.cpu.layers``, what a model that binds its ops once pays) and
the functional API ``oxide.ops.<op>`` (which also resolves the implementation per call). Each compiled
result is checked against the reference first, so a fast but wrong kernel cannot pass unnoticed.

On a 2-core machine shared with other busy processes, a 2-thread call can wait a whole scheduler
time slice (milliseconds) for its second thread: the medians show it, the best calls do not.
``--clock cpu`` (with ``--threads 1``) counts this thread's CPU time only.

    python -m benchmarks.bench_cpu_ops [--threads 2] [--ms 200] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import oxide.ops as ops
from oxide.ops import cpu, reference
from oxide.ops.cpu import layers


def call_times_us(fns: list[Callable[[], object]], ms: float, clock: Callable[[], float] = time.perf_counter
                  ) -> list[list[float]]:
    """Times in µs of single calls of each of ``fns``, taken in turn for about ``ms`` milliseconds (after one
    warm-up call each), so that all of them see the same load from other processes."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    deadline = time.perf_counter() + ms / 1e3
    while time.perf_counter() < deadline or len(times[0]) < 5:
        for fn, out in zip(fns, times):
            t0 = clock()
            fn()
            out.append((clock() - t0) * 1e6)
    return times


def cases() -> list[tuple[str, str, tuple, dict]]:
    """(label, op name, args, kwargs) at Gemma 3 270M decode shapes."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    D, H, Hkv, hd, F, size = 640, 4, 1, 256, 2048, 8192
    x, residual, w = randn(1, 1, D), randn(1, 1, D), randn(D)
    q_heads = randn(1, 1, H, hd)                                   # (B, T, H, hd), before the qk-norm
    cos, sin = randn(1, hd // 2), randn(1, hd // 2)
    k_buf, v_buf = randn(1, Hkv, size, hd), randn(1, Hkv, size, hd)
    q = randn(1, 1, H, hd).transpose(1, 2)                        # (B, H, T, hd) view
    out = [
        ("rms_norm (1,1,640)", "rms_norm", (x, w, 1e-6), {}),
        ("rms_norm qk (1,1,4,256)", "rms_norm", (q_heads, randn(hd), 1e-6), {}),
        ("add_rms_norm (1,1,640)", "add_rms_norm", (x, residual, w, 1e-6), {}),
        ("rope (1,4,1,256) view", "rope", (q_heads.transpose(1, 2), cos, sin), {}),
    ]
    for S, window in ((512, 0), (2048, 0), (2048, 512)):
        k, v = k_buf[:, :, :S], v_buf[:, :, :S]                   # (1, Hkv, S, hd) cache views
        q_pos, k_pos = torch.tensor([S - 1]), torch.arange(S)
        label = f"attention S={S}" + (f" window={window}" if window else "")
        out.append((label, "attention", (q, k, v, q_pos, k_pos), dict(scale=hd ** -0.5, window=window)))
    out += [
        ("gated gelu_tanh (1,1,2048)", "gated_activation", (randn(1, 1, F), randn(1, 1, F), "gelu_pytorch_tanh"), {}),
        ("gated silu (1,1,2048)", "gated_activation", (randn(1, 1, F), randn(1, 1, F), "silu"), {}),
        ("softcap (1,262144) cap 30", "softcap", (randn(1, 262144) * 20, 30.0), {}),
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ms", type=float, default=1000.0, help="time per op (all three implementations)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this thread's CPU time, which time slices lost to other processes do not "
                             "inflate (a busy shared machine); only meaningful with --threads 1")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu counts only the calling thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if not cpu.available():
        raise SystemExit(cpu.status())
    torch.set_num_threads(args.threads)
    print(f"{cpu.status()}; layer kernels: {cpu.extension().layer_isa()}; load average {os.getloadavg()[0]:.1f}; "
          f"{args.clock} clock")
    print("| op | reference µs best / median | compiled µs best / median | ops.<op> µs best | speed-up (best) |")
    print("|---|---:|---:|---:|---:|")
    for label, op, call_args, kwargs in cases():
        ref_fn, cpp_fn, api_fn = getattr(reference, op), getattr(layers, op), getattr(ops, op)
        torch.testing.assert_close(cpp_fn(*call_args, **kwargs), ref_fn(*call_args, **kwargs), rtol=1e-5, atol=2e-6)
        t_ref, t_cpp, t_api = call_times_us([lambda: ref_fn(*call_args, **kwargs), lambda: cpp_fn(*call_args, **kwargs),
                                             lambda: api_fn(*call_args, **kwargs)], args.ms, clock)
        print(f"| {label} | {min(t_ref):.1f} / {statistics.median(t_ref):.1f} | {min(t_cpp):.1f} / "
              f"{statistics.median(t_cpp):.1f} | {min(t_api):.1f} | {min(t_ref) / min(t_cpp):.1f}x |", flush=True)

if __name__ == "__main__":
    main()
