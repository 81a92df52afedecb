"""The CUDA kernels (oxide._cuda) from Python: their registration everywhere, their input checks wherever they
run before a launch, and, on a CUDA device, their results against the reference.

GPU tests (skipped without a device the kernels run on): the GEMV for every type it serves against gguf-py's
dequantization and a float64 matmul, through the raw binding into NaN-poisoned output rows wider than N (so an
unwritten element or a write past N shows) and through ``oxide.ops.qmatmul``; tolerances: relative error
(max |err| / max |ref|) <= 1e-4 for float32 activations, 1e-2 for float16 and 2e-2 for bfloat16 (the inputs and
the output are rounded to those types). Sampling against oxide.sampling's processors and draw for many u,
with ties at the cuts and penalties; a u too close to a boundary of the reference's CDF (where float rounding
may decide) is skipped.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from oxide import SamplingOptions
from oxide.errors import InvalidOptionError, KernelUnavailableError
from oxide.ops import cuda_kernels, dispatch
from oxide.quant import GGMLType, QuantTensor, block_geometry
from oxide.quant.testing import random_raw
from oxide.sampling import MinP, Penalties, Temperature, TopK, TopP

needs_gpu = pytest.mark.skipif(not cuda_kernels.available(), reason=f"CUDA kernels: {cuda_kernels.status()}")

TYPES = [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
N = 37   # output features: odd, not a multiple of the 8 rows a thread block takes


# --- everywhere ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["qmatmul", "sample"])
def test_cuda_implementations_are_registered(op: str) -> None:
    assert "cuda" in dispatch.implementations(op)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_unavailable_without_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not cuda_kernels.available()
    assert cuda_kernels.status().startswith("unavailable")
    monkeypatch.setenv("OXIDE_IMPL", "cuda")
    w = QuantTensor(torch.from_numpy(random_raw(GGMLType.Q4_K, (4, 256), np.random.default_rng(0))),
                    GGMLType.Q4_K, (4, 256))
    for device_type in ("cuda", "cpu"):   # cuda: present but unavailable; cpu: cuda implements nothing there
        with pytest.raises(KernelUnavailableError, match="cuda"):
            dispatch.bind("qmatmul", device_type, w, torch.float32)


def test_qmatmul_rejects_tensors_off_the_device() -> None:
    w = QuantTensor(torch.from_numpy(random_raw(GGMLType.Q4_K, (4, 256), np.random.default_rng(0))),
                    GGMLType.Q4_K, (4, 256))
    with pytest.raises(InvalidOptionError, match="x is on cpu"):
        cuda_kernels.qmatmul(torch.randn(1, 256), w)
    with pytest.raises(InvalidOptionError, match="2-D QuantTensor"):
        cuda_kernels.qmatmul(torch.randn(1, 256), torch.randn(4, 256))
    assert not cuda_kernels.serves_qmatmul(w, torch.float32)   # a CPU weight


def test_sample_rejects_tensors_off_the_device() -> None:
    with pytest.raises(InvalidOptionError, match="logits is on cpu"):
        cuda_kernels.sample(torch.randn(10), None, torch.rand(()), SamplingOptions())


# --- on a CUDA device ---------------------------------------------------------------------------------------------

def _width(qtype: GGMLType) -> int:
    """A row length not a power of two: 3 super-blocks or 23 blocks."""
    block = block_geometry(qtype).block_size
    return 3 * block if block == 256 else 23 * block


def _relative_error(got: torch.Tensor, want: np.ndarray) -> float:
    return float(np.abs(got.double().cpu().numpy() - want).max() / max(np.abs(want).max(), 1e-30))


@needs_gpu
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_gemv_matches_the_reference(qtype: GGMLType, dtype: torch.dtype, seed: int) -> None:
    rng = np.random.default_rng(seed)
    K = _width(qtype)
    raw = random_raw(qtype, (N, K), rng)                                              # (N, row_bytes)
    dense = gguf.quants.dequantize(raw, qtype).reshape(N, K).astype(np.float64)     # (N, K)
    w = QuantTensor(torch.from_numpy(raw).cuda(), qtype, (N, K))
    assert cuda_kernels.serves_qmatmul(w, dtype)
    module, stream = cuda_kernels.extension(), torch.cuda.current_stream().cuda_stream
    for M in (1, 2, 3, 5, 8):
        x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32)).to("cuda", dtype)   # (M, K)
        bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to("cuda", dtype)     # (N,)
        want = x.double().cpu().numpy() @ dense.T + bias.double().cpu().numpy()                   # (M, N)
        out = torch.full((M, N + 3), float("nan"), dtype=dtype, device="cuda")                    # poisoned, wider
        module.quant_gemv(int(qtype), w.data.data_ptr(), N, K, w.data.shape[-1], x.data_ptr(), M, K,
                          cuda_kernels._DTYPE_CODES[dtype], bias.data_ptr(), out.data_ptr(), N + 3, stream)
        torch.cuda.synchronize()
        assert torch.isnan(out[:, N:]).all(), f"{qtype.name} M={M}: wrote past N"
        assert not torch.isnan(out[:, :N]).any(), f"{qtype.name} M={M}: an output was not written"
        assert _relative_error(out[:, :N], want) <= TOLERANCE[dtype], f"{qtype.name} {dtype} M={M}"
        from oxide import ops   # the functional API picks the CUDA kernel, no bias this time
        assert dispatch.chosen_name("qmatmul", "cuda", w, dtype) == "cuda"
        got = ops.qmatmul(x.view(1, M, K), w)                                                      # (1, M, N)
        assert got.shape == (1, M, N) and got.dtype == dtype
        assert _relative_error(got[0], x.double().cpu().numpy() @ dense.T) <= TOLERANCE[dtype]


def _reference_sample(logits: torch.Tensor, counts: torch.Tensor | None, u: float, o: SamplingOptions
                      ) -> tuple[int, float]:
    """The id oxide.sampling's chain and draw choose for uniform u (on the CPU), and u's distance to the nearest
    boundary of the CDF, relative to its total (float rounding may decide a u closer than ~1e-6)."""
    history = torch.repeat_interleave(torch.arange(logits.numel()), counts.long()) if counts is not None else None
    chain = [Penalties(o.repeat_penalty, -1, o.frequency_penalty, o.presence_penalty)] if history is not None else []
    if o.temperature > 0:
        chain += [TopK(o.top_k), TopP(o.top_p), MinP(o.min_p)]
    chain.append(Temperature(o.temperature))
    processed = logits.float()
    for stage in chain:
        processed = stage(processed, history)
    alive = torch.nonzero(processed > float("-inf")).squeeze(1)                      # (m,) ascending ids
    if o.temperature == 0:
        return int(alive[0]), 1.0
    cdf = torch.cumsum(torch.softmax(processed[alive].double(), 0), 0)                # (m,)
    target = u * float(cdf[-1])
    pick = min(int(torch.searchsorted(cdf, torch.tensor(target, dtype=torch.float64), right=True)), alive.numel() - 1)
    return int(alive[pick]), float((cdf - target).abs().min() / cdf[-1])


OPTIONS = [
    SamplingOptions(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0),
    SamplingOptions(temperature=0.0, repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.5),
    SamplingOptions(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    SamplingOptions(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    SamplingOptions(temperature=0.7, top_k=0, top_p=0.9, min_p=0.0),
    SamplingOptions(temperature=1.3, top_k=5, top_p=1.0, min_p=0.0),
    SamplingOptions(temperature=0.5, top_k=0, top_p=1.0, min_p=0.2),
    SamplingOptions(temperature=1.0, top_k=1000, top_p=0.5, min_p=0.01, repeat_penalty=1.1, presence_penalty=0.3),
]


@needs_gpu
@pytest.mark.parametrize("V", [1001, 262_144])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"T{o.temperature}-k{o.top_k}-p{o.top_p}-m{o.min_p}")
def test_sample_matches_the_reference(options: SamplingOptions, ties: bool, V: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(V).astype(np.float32) * 3
    if ties:   # coarse values: runs of equal logits at every cut
        logits = np.round(logits * 2) / 2
    logits_cpu = torch.from_numpy(logits)
    counts_cpu = torch.from_numpy((rng.random(V) < 0.05) * rng.integers(1, 4, V)).to(torch.int32)
    penalised = options.repeat_penalty != 1 or options.frequency_penalty != 0 or options.presence_penalty != 0
    counts = counts_cpu.cuda() if penalised else None
    checked = 0
    for u in rng.random(40 if V < 10_000 else 8).astype(np.float32):
        want, margin = _reference_sample(logits_cpu, counts_cpu if penalised else None, float(u), options)
        if margin < 1e-6:
            continue
        got = cuda_kernels.sample(logits_cpu.cuda(), counts, torch.tensor(u, device="cuda"), options)
        assert got.dtype == torch.int64 and got.dim() == 0 and got.device.type == "cuda"
        assert int(got) == want, f"u={u}"
        checked += 1
    assert checked > 0


@needs_gpu
def test_sample_returns_the_references_codes_when_no_draw_is_possible() -> None:
    """NaN logits, or no finite one, with temperature > 0: the codes the Sampler raises its errors on."""
    from oxide.ops import reference

    options = SamplingOptions(temperature=0.8)
    for logits, code in ((torch.tensor([0.0, float("nan"), 1.0]), reference.SAMPLE_NAN),
                         (torch.full((5,), float("-inf")), reference.SAMPLE_NO_FINITE)):
        u = torch.tensor(0.5)
        assert int(reference.sample(logits, None, u, options)) == code
        assert int(cuda_kernels.sample(logits.cuda(), None, u.cuda(), options)) == code
