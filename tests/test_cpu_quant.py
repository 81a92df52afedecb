"""The compiled CPU core's quantized kernels against the reference, for every type and instruction set.

Each kernel reads GGML blocks as stored; the reference is gguf-py's dequantizer (bit-exact) and a
float64 matmul. Blocks are fresh random bytes with finite f16 scales, activations are random, and
every output buffer is poisoned with NaN first so an element the kernel fails to write shows.
Tolerance: relative error (max |err| over max |reference|) <= 1e-5, as f32 accumulation over
K <= 1024 allows. The reference's input is x itself, or, where the build's GEMV rounds x to int8 per 32 values
as llama.cpp does (AVX-512 VNNI: ``activations() == "q8_0"``), ``reference.q8_activations(x)``; a separate
test holds that rounding to its bound against x itself.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from oxide import ops
from oxide.errors import KernelUnavailableError
from oxide.ops import cpu, dispatch, reference
from oxide.ops.cpu import quant as cpu_quant
from oxide.quant import GGMLType, QuantTensor, block_geometry
from oxide.quant.testing import random_raw

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the compiled CPU core (oxide._cpu) is not built")

TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K,
         GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_NL, GGMLType.IQ4_XS]
ROWS = (1, 2, 3, 5, 7, 14, 33, 300)   # every tile height of 1 to 8 rows, and several passes over the weights
N = 37                                   # output features: odd, not a power of two
REL_TOL = 1e-5


def _isas() -> list[str]:
    return cpu.extension().isas() if cpu.available() else []


@pytest.fixture(params=_isas())
def isa(request: pytest.FixtureRequest):
    """Run the test once per instruction set this CPU supports, restoring the best one after."""
    module = cpu.extension()
    before = module.isa()
    module.set_isa(request.param)
    yield request.param
    module.set_isa(before)


@pytest.fixture(params=[1, 2])
def threads(request: pytest.FixtureRequest):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _width(qtype: GGMLType) -> int:
    """A row length that is a multiple of the block but not a power of two: 3 super-blocks or 23 blocks."""
    block = block_geometry(qtype).block_size
    return 3 * block if block == 256 else 23 * block


def _weight(qtype: GGMLType, rng: np.random.Generator) -> tuple[QuantTensor, np.ndarray]:
    K = _width(qtype)
    raw = random_raw(qtype, (N, K), rng)                                        # (N, row_bytes)
    dense = gguf.quants.dequantize(raw, qtype).reshape(N, K).astype(np.float64)  # (N, K)
    return QuantTensor(torch.from_numpy(raw), qtype, (N, K)), dense


def _gemv_input(x: torch.Tensor) -> np.ndarray:
    """x (M, K) as the kernels of the instruction set in use take it, in float64."""
    return cpu_quant.activations_as_computed(x).double().numpy()


def _relative_error(got: torch.Tensor, want: np.ndarray) -> float:
    return float(np.abs(got.double().numpy() - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_gemv_kernel_writes_every_output(qtype: GGMLType, isa: str, threads: int, seed: int) -> None:
    """The raw GEMV kernel, any number of rows (it passes over the weights 8 or 16 rows at a time, dotting up to
    4 or 8 with each unpacked block, by the build)."""
    rng = np.random.default_rng(seed)
    w, dense = _weight(qtype, rng)
    K = w.shape[1]
    for M in ROWS:
        x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32))   # (M, K)
        bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32))
        out = torch.full((M, N), float("nan"))
        plan = cpu.extension().GemvPlan([(int(qtype), w.data.data_ptr(), N, w.data.shape[1], bias.data_ptr())], K)
        plan.run(x.data_ptr(), M, K, out.data_ptr(), N, threads)
        want = _gemv_input(x) @ dense.T + bias.double().numpy()
        assert not out.isnan().any(), f"{qtype.name} M={M}: unwritten outputs"
        assert _relative_error(out, want) <= REL_TOL, f"{qtype.name} M={M} on {isa}"


def _gemv(w: QuantTensor, x: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """The raw GEMV kernel on x (M, K), its output poisoned with NaN first."""
    M, K = x.shape
    out = torch.full((M, w.shape[0]), float("nan"))
    plan = cpu.extension().GemvPlan([(int(w.qtype), w.data.data_ptr(), w.shape[0], w.data.shape[1], 0)], K)
    plan.run(x.data_ptr(), M, K, out.data_ptr(), w.shape[0], threads)
    return out


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_gemv_activations_of_every_scale(qtype: GGMLType, isa: str, seed: int) -> None:
    """Heavy-tailed rows with outliers 1e4 times their neighbours, all-zero 32-blocks and blocks of 1e-30:
    the builds that split x into integer digits per 32 values keep the same tolerance."""
    rng = np.random.default_rng(seed)
    w, dense = _weight(qtype, rng)
    K = w.shape[1]
    x = rng.standard_normal((4, K)) * np.exp(2 * rng.standard_normal((4, K)))
    x[0, rng.integers(0, K, 3)] *= 1e4
    x[1, 32:64] = 0.0
    x[2, :32] *= 1e-30
    x[3] = 0.0
    x = torch.from_numpy(x.astype(np.float32))
    got = _gemv(w, x)
    want = _gemv_input(x) @ dense.T
    for m in range(3):
        assert _relative_error(got[m], want[m]) <= REL_TOL, f"{qtype.name} row {m} on {isa}"
    assert torch.equal(got[3], torch.zeros(N)), "a zero row gives exact zeros"


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_a_row_gives_the_same_outputs_alone_and_in_a_batch(qtype: GGMLType, isa: str, seed: int) -> None:
    """Bit for bit, whatever the other rows and the thread count: batching never changes a sequence's logits."""
    rng = np.random.default_rng(seed)
    w, _ = _weight(qtype, rng)
    x = torch.from_numpy(rng.standard_normal((16, w.shape[1])).astype(np.float32))
    batch = _gemv(w, x, threads=2)
    for m in (0, 5, 15):
        assert torch.equal(_gemv(w, x[m:m + 1], threads=1)[0], batch[m]), f"row {m} of 16"
        assert torch.equal(_gemv(w, x[m:m + 3], threads=2)[0], batch[m]), f"row {m} of 3"


@pytest.mark.parametrize("qtype", [GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K], ids=lambda t: t.name)
def test_a_row_computes_alike_in_a_prefill_and_alone(qtype: GGMLType, isa: str, seed: int) -> None:
    """A row among many (a prefill) and the same row alone: bit for bit where the build rounds activations to
    int8 (the GEMV takes every row count there, so a prefix-cache hit or a chunk boundary changes nothing),
    else to float32 summation (the prefill's banded sgemm against the GEMV)."""
    rng = np.random.default_rng(seed)
    w, _ = _weight(qtype, rng)
    x = torch.from_numpy(rng.standard_normal((cpu_quant.GEMV_MAX_ROWS + 4, w.shape[1])).astype(np.float32))
    prefill = cpu_quant.qmatmul(x, w)
    for m in (0, 7, x.shape[0] - 1):
        alone = cpu_quant.qmatmul(x[m:m + 1], w)[0]
        if cpu.extension().activations() == "q8_0":
            assert torch.equal(alone, prefill[m]), f"row {m}"
        else:
            assert _relative_error(alone, prefill[m].double().numpy()) <= REL_TOL, f"row {m}"


def test_q8_activations_reference(seed: int) -> None:
    """The specification of the int8 activations: multiples of max|x| / 127 per 32 values, each within half a
    step of x, the block maximum kept (to the float32 rounding of 127 steps); zero blocks stay zero."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy((rng.standard_normal((3, 96)) * np.exp(2 * rng.standard_normal((3, 96)))).astype(np.float32))
    x[1, 32:64] = 0.0
    x[2, 70] = float("nan")
    got = reference.q8_activations(x)
    torch.testing.assert_close(got[2, 64:], x[2, 64:], rtol=0, atol=0, equal_nan=True, msg="a block with a NaN stays")
    x[2, 70] = 1.0
    got = reference.q8_activations(x)
    blocks, rounded = x.view(3, 3, 32), got.view(3, 3, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 127
    quants = torch.where(step > 0, rounded / torch.where(step > 0, step, 1), 0)
    assert (quants - quants.round()).abs().max() < 1e-4 and quants.round().abs().max() <= 127
    assert ((rounded - blocks).abs() <= step / 2 * (1 + 1e-6)).all()
    torch.testing.assert_close(rounded.abs().amax(-1), blocks.abs().amax(-1), rtol=2e-7, atol=0)   # 127 steps: max
    assert torch.equal(got[1, 32:64], torch.zeros(32))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_int8_activations_stay_within_their_bound(qtype: GGMLType, seed: int) -> None:
    """Where the GEMV rounds x to int8 (AVX-512 VNNI), each output is within sum |w| * s / 2 of the float
    product, the bound that rounding each value to its block's step s allows."""
    module = cpu.extension()
    if "avx512vnni" not in module.isas():
        pytest.skip("this CPU has no AVX-512 VNNI, the build that rounds activations to int8")
    before = module.isa()
    module.set_isa("avx512vnni")
    try:
        rng = np.random.default_rng(seed)
        w, dense = _weight(qtype, rng)
        K = w.shape[1]
        x = torch.from_numpy((rng.standard_normal((5, K)) * np.exp(rng.standard_normal((5, K)))).astype(np.float32))
        got = _gemv(w, x).double().numpy()
        exact = x.double().numpy() @ dense.T
        steps = np.repeat(np.abs(x.double().numpy()).reshape(5, K // 32, 32).max(-1) / 127, 32, axis=1)   # (5, K)
        bound = (steps / 2) @ np.abs(dense).T + 1e-5 * np.abs(exact).max()
        assert (np.abs(got - exact) <= bound).all()
        assert np.abs(got - exact).max() > 1e-4 * np.abs(exact).max(), "the rounding shows: this is not the float path"
    finally:
        module.set_isa(before)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K], ids=lambda t: t.name)
def test_gemv_propagates_nan_and_inf(qtype: GGMLType, isa: str, seed: int) -> None:
    """A NaN or an infinity in x makes every output of its row non-finite, as float arithmetic does (an
    infinity times a zero weight is NaN); the other rows stay finite."""
    rng = np.random.default_rng(seed)
    w, _ = _weight(qtype, rng)
    K = w.shape[1]
    x = torch.from_numpy(rng.standard_normal((3, K)).astype(np.float32))
    x[0, 5] = float("nan")
    x[1, K - 1] = float("inf")
    got = _gemv(w, x)
    assert got[0].isnan().all()
    assert not got[1].isfinite().any()
    assert got[2].isfinite().all()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_rows_is_bit_exact(qtype: GGMLType, isa: str, threads: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, dense = _weight(qtype, rng)
    K = w.shape[1]
    out = torch.full((N, K + 5), float("nan"))                                   # a padded row stride
    cpu.extension().dequantize_rows(int(qtype), w.data.data_ptr(), 0, N, K, w.data.shape[1], out.data_ptr(), K + 5,
                                    threads)
    assert torch.equal(out[:, :K], torch.from_numpy(dense.astype(np.float32)))
    assert out[:, K:].isnan().all(), "wrote past the row"
    index = torch.tensor([5, 0, 36, 5], dtype=torch.int64)
    rows = torch.full((4, K), float("nan"))
    cpu.extension().dequantize_rows(int(qtype), w.data.data_ptr(), index.data_ptr(), 4, K, w.data.shape[1],
                                    rows.data_ptr(), K, threads)
    assert torch.equal(rows, torch.from_numpy(dense[index.numpy()].astype(np.float32)))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_qmatmul_op_matches_the_reference(qtype: GGMLType, threads: int, seed: int) -> None:
    """The registered op (GEMV up to GEMV_MAX_ROWS rows, banded dequantization and sgemm above)."""
    rng = np.random.default_rng(seed)
    w, dense = _weight(qtype, rng)
    K = w.shape[1]
    for M in ROWS:
        x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32))
        got = cpu_quant.qmatmul(x.view(1, M, K), w)                               # (1, M, N)
        assert got.shape == (1, M, N)
        assert _relative_error(got[0], _gemv_input(x) @ dense.T) <= REL_TOL, f"{qtype.name} M={M}"
        ref = reference.qmatmul(torch.from_numpy(_gemv_input(x)).float(), QuantTensor(w.data, qtype, w.shape))
        torch.testing.assert_close(got[0], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_a_group_of_matrices_in_one_call(threads: int, seed: int) -> None:
    """q, k and v (or gate and up) of different types and heights, one GEMV call, outputs poisoned first."""
    rng = np.random.default_rng(seed)
    K = 512
    types = (GGMLType.Q5_0, GGMLType.Q6_K, GGMLType.Q8_0)
    heights = (37, 5, 64)
    weights, dense = [], []
    for qtype, rows in zip(types, heights):
        raw = random_raw(qtype, (rows, K), rng)
        weights.append(QuantTensor(torch.from_numpy(raw), qtype, (rows, K)))
        dense.append(gguf.quants.dequantize(raw, qtype).reshape(rows, K).astype(np.float64))
    biases = (torch.from_numpy(rng.standard_normal(37).astype(np.float32)), None, None)
    for M in ROWS:
        x = torch.from_numpy(rng.standard_normal((M, K)).astype(np.float32))
        outs = cpu_quant.qmatmul_group(x, weights, biases)
        for out, d, b in zip(outs, dense, biases):
            want = _gemv_input(x) @ d.T + (0 if b is None else b.double().numpy())
            assert _relative_error(out, want) <= REL_TOL, f"M={M}"
    out = torch.full((2, 42), float("nan"))
    x = torch.from_numpy(rng.standard_normal((2, K)).astype(np.float32))
    specs = [(int(types[0]), weights[0].data.data_ptr(), 37, weights[0].data.shape[1], 0),
             (99, weights[1].data.data_ptr(), 5, weights[1].data.shape[1], 0)]
    with pytest.raises(ValueError, match="no kernel"):
        cpu.extension().GemvPlan(specs, K).run(x.data_ptr(), 2, K, out.data_ptr(), 42, 1)
    assert out.isnan().all(), "a group with an unknown type computes nothing"
    bound = dispatch.bind("qmatmul_group", "cpu", tuple(weights), torch.float32)
    assert isinstance(bound, cpu_quant.GroupKernel)
    for out, d, b in zip(bound(x, bound.weights, biases), dense, biases):   # the prepared plan, twice
        want = _gemv_input(x) @ d.T + (0 if b is None else b.double().numpy())
        assert _relative_error(out, want) <= REL_TOL
    with pytest.raises(ValueError, match="prepared for other weights"):
        bound(x, tuple(reversed(weights)), biases)
    f16 = QuantTensor(torch.from_numpy(random_raw(GGMLType.F16, (8, K), rng)), GGMLType.F16, (8, K))
    assert dispatch.bind("qmatmul_group", "cpu", (weights[0], f16), torch.float32) is reference.qmatmul_group


def test_banded_path_crosses_band_edges(monkeypatch: pytest.MonkeyPatch, isa: str, seed: int) -> None:
    """Bands smaller than the matrix, with a short last band, give the same product. (The builds that round
    activations to int8 take every row count in the GEMV and never band: the check is the GEMV's there.)"""
    rng = np.random.default_rng(seed)
    w, dense = _weight(GGMLType.Q4_K, rng)
    monkeypatch.setattr(cpu_quant, "BAND_ELEMENTS", 5 * w.shape[1])             # 5 rows a band: 7 full + 2
    x = torch.from_numpy(rng.standard_normal((20, w.shape[1])).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32))
    got = cpu_quant.qmatmul(x, w, bias)
    assert _relative_error(got, _gemv_input(x) @ dense.T + bias.double().numpy()) <= REL_TOL


def test_strided_activations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, dense = _weight(GGMLType.Q6_K, rng)
    K = w.shape[1]
    wide = torch.from_numpy(rng.standard_normal((3, 2 * K)).astype(np.float32))
    x = wide[:, ::2]                                                              # not contiguous
    assert _relative_error(cpu_quant.qmatmul(x, w), _gemv_input(x) @ dense.T) <= REL_TOL


def test_embedding_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, dense = _weight(GGMLType.Q8_0, rng)
    ids = torch.tensor([[3, 0], [36, 3]])
    got = cpu_quant.embedding(ids, w, torch.float32)                              # (2, 2, K)
    assert torch.equal(got, torch.from_numpy(dense[ids.numpy()].astype(np.float32)))
    with pytest.raises(IndexError, match="ids must lie in"):
        cpu_quant.embedding(torch.tensor([N]), w, torch.float32)


def test_declines_what_it_does_not_serve(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, _ = _weight(GGMLType.Q4_0, rng)
    f16 = QuantTensor(torch.from_numpy(random_raw(GGMLType.F16, (N, 64), rng)), GGMLType.F16, (N, 64))
    assert cpu_quant.serves(w, torch.float32)
    assert not cpu_quant.serves(w, torch.bfloat16)          # activations other than f32
    assert not cpu_quant.serves(f16, torch.float32)         # float weights: torch's own linear is better
    assert not cpu_quant.serves(torch.zeros(N, 64), torch.float32)
    assert dispatch.bind("qmatmul", "cpu", f16, torch.float32) is reference.qmatmul
    assert dispatch.bind("qmatmul", "cpu", w, torch.bfloat16) is reference.qmatmul


def test_chosen_automatically_and_torch_on_request(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, _ = _weight(GGMLType.Q5_K, rng)
    monkeypatch.delenv("OXIDE_IMPL", raising=False)
    assert isinstance(ops.Linear(w, None, torch.device("cpu"), torch.float32).impl, cpu_quant.LinearKernel)
    assert dispatch.chosen_name("qmatmul", "cpu", w, torch.float32) == "cpp"
    monkeypatch.setenv("OXIDE_IMPL", "torch")
    assert ops.Linear(w, None, torch.device("cpu"), torch.float32).impl is reference.qmatmul


def test_missing_extension(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Without the module the reference runs; asking for it explicitly is a clear error."""
    rng = np.random.default_rng(seed)
    w, dense = _weight(GGMLType.Q4_K, rng)
    monkeypatch.setattr(cpu, "_load", lambda: (None, "the compiled CPU core is not built (test)"))
    dispatch._RESOLVED.clear()
    try:
        monkeypatch.delenv("OXIDE_IMPL", raising=False)
        linear = ops.Linear(w, None, torch.device("cpu"), torch.float32)
        assert linear.impl is reference.qmatmul
        x = torch.from_numpy(rng.standard_normal((2, w.shape[1])).astype(np.float32))
        assert _relative_error(linear(x), x.double().numpy() @ dense.T) <= REL_TOL
        assert cpu.status().startswith("PyTorch reference (the compiled CPU core is not built")
        monkeypatch.setenv("OXIDE_IMPL", "cpp")
        with pytest.raises(KernelUnavailableError, match="OXIDE_IMPL='cpp'.*not available"):
            ops.Linear(w, None, torch.device("cpu"), torch.float32)
    finally:
        dispatch._RESOLVED.clear()


def test_unsupported_isa_request_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from oxide.errors import InvalidOptionError

    monkeypatch.setenv("OXIDE_CPU_ISA", "sse9")
    cpu._load.cache_clear()
    try:
        with pytest.raises(InvalidOptionError, match="OXIDE_CPU_ISA='sse9'"):
            cpu.available()
    finally:
        monkeypatch.delenv("OXIDE_CPU_ISA")
        cpu._load.cache_clear()
        cpu.available()
