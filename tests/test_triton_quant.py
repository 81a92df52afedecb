"""The Triton quantized matmuls (``oxide.kernels.quant_*``) against the reference ops, under Triton's
interpreter here and compiled on a CUDA device.

Weights are fresh random GGML blocks (``random_raw``: f16 scales spread over 1e-4 .. 1e2, subnormals
included); activations are random; every output and partial-sum buffer is NaN-filled first, so an element a
kernel fails to write shows. The reference is the reference op evaluated in float64 on the same inputs.
Error: max |out - ref| / max |ref|, at most

- float32 activations: 1e-4 (float32 accumulation over K <= 512, exact float32 products in ``tl.dot``);
- float16 activations: 2e-3 (the output rounded to f16, 2^-11 relative, and the GEMM's W rounded to f16
  as the reference rounds it); weights with scales of at most 2^-8 so no f16 value overflows;
- bfloat16 activations (CUDA only): 1.6e-2 (bf16 keeps 8 bits: 2^-8 relative per rounding).

Every type is run as a GEMV (M = 1 and M = 3, with K whole and split into 2 or 3 parts) and as a GEMM
(M = 17), N = 45 (odd), K = 2 super-blocks or 9 blocks (several K steps, the last one partial for the
32-weight types).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import triton

import oxide
from oxide import ops
from oxide.errors import InvalidOptionError
from oxide.kernels import quant_matmul, quant_ops
from oxide.ops import dispatch, reference
from oxide.quant import GGMLType, QuantTensor, block_geometry
from oxide.quant.testing import random_raw
from oxide.quant.types import F16_FIELDS

TYPES = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K,
         GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_NL, GGMLType.IQ4_XS]
N = 45
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SPLIT = 3
# (rows of x, forced K split or None for the default, with bias)
CASES = {"gemv1": (1, 1, False), "gemv1-split": (1, SPLIT, True), "gemv3": (3, 1, True),
         "gemv3-split": (3, SPLIT, False), "gemm17": (17, None, True)}

# The interpreter's numpy exp overflows to inf in sigmoid(-large) = 1 / (1 + inf) = 0, which is the right value.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _width(qtype: GGMLType) -> int:
    """K: 2 super-blocks (4 GEMV steps of 128), or 9 blocks of 32 (2 full GEMV steps and a partial one)."""
    block = block_geometry(qtype).block_size
    return 2 * block if block == 256 else 9 * block


def _random_weight(qtype: GGMLType, shape: tuple[int, ...], rng: np.random.Generator, *, moderate: bool
                   ) -> QuantTensor:
    """Random blocks; ``moderate``: every f16 scale field redrawn in +-[2^-10, 2^-8], for f16 activations."""
    raw = random_raw(qtype, shape, rng)
    if moderate:
        blocks = raw.reshape(-1, block_geometry(qtype).type_size)
        for offset in F16_FIELDS[qtype]:
            scale = rng.uniform(2.0 ** -10, 2.0 ** -8, blocks.shape[0]) * rng.choice([-1.0, 1.0], blocks.shape[0])
            blocks[:, offset:offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return QuantTensor(torch.from_numpy(raw).to(DEVICE), qtype, shape)


@pytest.fixture(scope="module")
def rng(seed: int) -> np.random.Generator:
    """Blocks from numpy's generator; torch's, which draws the activations, is seeded alike."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def weights(rng: np.random.Generator):
    """``weights(qtype, dtype, shape=None, tag="")``: one random weight per (type, float32 or not, shape, tag),
    made once (moderate scales for 16-bit activations)."""
    made: dict[tuple, QuantTensor] = {}

    def get(qtype: GGMLType, dtype: torch.dtype, shape: tuple[int, ...] | None = None, tag: str = "") -> QuantTensor:
        shape = shape or (N, _width(qtype))
        key = (qtype, dtype == torch.float32, shape, tag)
        if key not in made:
            made[key] = _random_weight(qtype, shape, rng, moderate=dtype != torch.float32)
        return made[key]

    return get


@pytest.fixture(autouse=True)
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs and split-K partial sums start as NaN."""
    monkeypatch.setattr(quant_matmul, "new_buffer",
                        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device))


def _x(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, device=DEVICE).to(dtype)


def _check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all(), "an output element was not written (NaN poison left) or overflowed"
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]:g}"


def _matmul_case(weights, qtype: GGMLType, case: str, dtype: torch.dtype) -> None:
    rows, split, with_bias = CASES[case]
    w = weights(qtype, dtype)
    x = _x((rows, w.shape[1]), dtype)
    bias = _x((N,), dtype) if with_bias else None
    out = quant_matmul.project(x, w, bias=bias, split_k=split)
    _check(out, reference.qmatmul(x.double(), w, bias), dtype)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_qmatmul_f32(weights, qtype: GGMLType, case: str) -> None:
    _matmul_case(weights, qtype, case, torch.float32)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_qmatmul_f16(weights, qtype: GGMLType, case: str) -> None:
    _matmul_case(weights, qtype, case, torch.float16)


def test_qmatmul_keeps_leading_dims_and_groups(weights) -> None:
    """(B, T, K) activations; the group op runs each (weight, bias) pair."""
    w1, w2 = weights(GGMLType.Q4_K, torch.float32), weights(GGMLType.Q8_0, torch.float32, (N, 256))
    x = _x((2, 3, 256), torch.float32)
    bias = _x((N,), torch.float32)
    q, k = quant_ops.qmatmul_group(x, (w2, w2), (bias, None))
    _check(q, reference.qmatmul(x.double(), w2, bias), torch.float32)
    _check(k, reference.qmatmul(x.double(), w2), torch.float32)
    x = _x((2, 1, w1.shape[1]), torch.float32)
    _check(quant_ops.qmatmul(x, w1), reference.qmatmul(x.double(), w1), torch.float32)


FORMS = {"gemv": (2, 1), "gemv-split": (2, SPLIT), "gemm": (19, None)}   # (rows of x, forced K split)
Q4_K_Q6_K, Q8_0 = (GGMLType.Q4_K, GGMLType.Q6_K), (GGMLType.Q8_0, GGMLType.Q8_0)
# Each activation and each form once per type pair.
GATED_CASES = [(Q4_K_Q6_K, "silu", "gemv"), (Q4_K_Q6_K, "gelu", "gemv-split"), (Q4_K_Q6_K, "gelu_pytorch_tanh", "gemm"),
               (Q8_0, "silu", "gemm"), (Q8_0, "gelu", "gemv"), (Q8_0, "gelu_pytorch_tanh", "gemv-split")]


@pytest.mark.parametrize("types, act, form", GATED_CASES,
                         ids=["-".join((*(q.name for q in t), a, f)) for t, a, f in GATED_CASES])
def test_qmatmul_gated(weights, types: tuple[GGMLType, GGMLType], act: str, form: str) -> None:
    """Gate and up read by one program (of different types in the first cases), the activation in registers."""
    rows, split = FORMS[form]
    K = _width(types[0])
    w_gate = weights(types[0], torch.float32, (N, K), "gate")
    w_up = weights(types[1], torch.float32, (N, K), "up")
    x = _x((rows, K), torch.float32)
    out = quant_matmul.project(x, w_gate, w_up=w_up, act=act, split_k=split)
    _check(out, reference.qmatmul_gated(x.double(), w_gate, w_up, act), torch.float32)


def test_qmatmul_gated_f16(weights) -> None:
    K = _width(GGMLType.Q5_K)
    w_gate, w_up = (weights(GGMLType.Q5_K, torch.float16, (N, K), tag) for tag in ("gate", "up"))
    for rows in (3, 17):
        x = _x((rows, K), torch.float16)
        out = quant_ops.qmatmul_gated(x, w_gate, w_up, "silu")
        _check(out, reference.qmatmul_gated(x.double(), w_gate, w_up, "silu"), torch.float16)


EXPERTS = 4
EXPERT_N = 21
# Rows per expert (expert 1 has none): 6 rows in all take the GEMV, 34 the GEMM.
EXPERT_FORMS = {"gemv": ((2, 0, 3, 1), 1), "gemv-split": ((2, 0, 3, 1), 2), "gemm": ((9, 0, 5, 20), None)}


def _expert_width(qtype: GGMLType) -> int:
    """Two GEMV steps: 1 super-block, or 8 blocks of 32."""
    block = block_geometry(qtype).block_size
    return block if block == 256 else 8 * block


@pytest.mark.parametrize("form", EXPERT_FORMS)
@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q5_K], ids=lambda t: t.name)
def test_qmatmul_experts(weights, qtype: GGMLType, form: str) -> None:
    """Stacked experts, the expert a grid dimension; plain and gated; offsets int64 and int32."""
    counts, split = EXPERT_FORMS[form]
    K = _expert_width(qtype)
    offsets = torch.tensor(np.concatenate(([0], np.cumsum(counts))), device=DEVICE)
    x = _x((int(offsets[-1]), K), torch.float32)
    w, w_up = (weights(qtype, torch.float32, (EXPERTS, EXPERT_N, K), tag) for tag in ("gate", "up"))
    out = quant_matmul.project(x, w, offsets=offsets, split_k=split)
    _check(out, reference.qmatmul_experts(x.double(), w, offsets), torch.float32)
    out = quant_matmul.project(x, w, w_up=w_up, act="gelu_pytorch_tanh", offsets=offsets.int(), split_k=split)
    _check(out, reference.qmatmul_experts_gated(x.double(), w, w_up, offsets, "gelu_pytorch_tanh"), torch.float32)


def test_qmatmul_experts_ops(weights) -> None:
    K = _expert_width(GGMLType.Q5_K)
    offsets = torch.tensor([0, 1, 1, 3, 3], device=DEVICE)
    x = _x((3, K), torch.float32)
    w, w_up = (weights(GGMLType.Q5_K, torch.float32, (EXPERTS, EXPERT_N, K), tag) for tag in ("gate", "up"))
    _check(quant_ops.qmatmul_experts(x, w, offsets), reference.qmatmul_experts(x.double(), w, offsets), torch.float32)
    _check(quant_ops.qmatmul_experts_gated(x, w, w_up, offsets, "silu"),
           reference.qmatmul_experts_gated(x.double(), w, w_up, offsets, "silu"), torch.float32)


def test_dispatch_chooses_triton(weights, monkeypatch: pytest.MonkeyPatch) -> None:
    """With OXIDE_IMPL=triton the functional API runs these kernels for quantized weights; dense ones go to
    the reference."""
    monkeypatch.setenv("OXIDE_IMPL", "triton")
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    w = weights(GGMLType.Q6_K, torch.float32)
    x = _x((2, w.shape[1]), torch.float32)
    assert dispatch.chosen_name("qmatmul", DEVICE.type, w, torch.float32) == "triton"
    assert dispatch.chosen_name("qmatmul_gated", DEVICE.type, (w, w), torch.float32) == "triton"
    assert dispatch.chosen_name("qmatmul", DEVICE.type, w.dequantize(), torch.float32) == "torch"
    _check(ops.qmatmul(x, w), reference.qmatmul(x.double(), w), torch.float32)


def test_serves_declines_what_it_does_not_read(weights) -> None:
    w = weights(GGMLType.Q4_0, torch.float32)
    dense = w.dequantize()
    f16 = QuantTensor(dense.half().view(torch.uint8).reshape(N, -1), GGMLType.F16, w.shape)
    stacked = weights(GGMLType.Q4_0, torch.float32, (2, N, w.shape[1]))
    assert quant_ops.serves_qmatmul(w, torch.float32) and quant_ops.serves_qmatmul(w, torch.bfloat16)
    assert not quant_ops.serves_qmatmul(dense, torch.float32)
    assert not quant_ops.serves_qmatmul(f16, torch.float32)
    assert not quant_ops.serves_qmatmul(w, torch.float64)
    assert not quant_ops.serves_qmatmul(stacked, torch.float32)
    assert quant_ops.serves_qmatmul_group((w, w), torch.float16)
    assert not quant_ops.serves_qmatmul_group((w, dense), torch.float32)
    assert quant_ops.serves_qmatmul_gated((w, w), torch.float32)
    assert not quant_ops.serves_qmatmul_gated((w, dense), torch.float32)
    assert quant_ops.serves_qmatmul_experts(stacked, torch.float32)
    assert not quant_ops.serves_qmatmul_experts(w, torch.float32)
    assert quant_ops.serves_qmatmul_experts_gated((stacked, stacked), torch.float32)
    assert not quant_ops.serves_qmatmul_experts_gated((stacked, stacked.dequantize()), torch.float32)


def test_split_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """K is split only when the bands cannot fill the SMs twice, and never below 2 steps a split."""
    monkeypatch.setattr(quant_matmul, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    assert quant_matmul.split_for(264, 32, cuda) == 1
    assert quant_matmul.split_for(63, 32, cuda) == 5            # cdiv(264, 63)
    assert quant_matmul.split_for(8, 4, cuda) == 2              # 33 wanted, 4 steps allow 2
    assert quant_matmul.split_for(8, 32, torch.device("cpu")) == 1


def test_bad_input_is_named(weights) -> None:
    w = weights(GGMLType.Q4_0, torch.float32)
    with pytest.raises(InvalidOptionError, match="features"):
        quant_ops.qmatmul(_x((1, w.shape[1] + 32), torch.float32), w)
    with pytest.raises(InvalidOptionError, match="relu"):
        quant_ops.qmatmul_gated(_x((1, w.shape[1]), torch.float32), w, w, "relu")
    with pytest.raises(InvalidOptionError, match="bias"):
        quant_ops.qmatmul(_x((1, w.shape[1]), torch.float32), w, _x((N + 1,), torch.float32))
    with pytest.raises(InvalidOptionError, match="split_k"):
        quant_matmul.project(_x((1, w.shape[1]), torch.float32), w, split_k=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests compile the kernels for their device")
@pytest.mark.skipif("nvidia" not in triton.backends.backends, reason="Triton's NVIDIA backend is not installed")
def test_kernels_compile_for_sm90() -> None:
    """The interpreter runs any Python; the compiler does not. Without the interpreter (a subprocess), the
    richest variant of each kernel compiles to an sm_90 cubin, no GPU needed (see tests/_sm90_compile.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(oxide.__file__).parent.parent)                      # the oxide under test, not another checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    script = Path(__file__).with_name("_sm90_compile.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@cuda_only
@pytest.mark.parametrize("rows", [1, 8, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_qmatmul_cuda_large(weights, qtype: GGMLType, dtype: torch.dtype, rows: int) -> None:
    """A model-sized matrix in every activation dtype, through the ops: 63 bands of 16 rows do not fill a
    GPU's SMs twice, so the GEMV splits K = 4096 by its own rule."""
    w = weights(qtype, dtype, (1000, 4096))
    x = _x((rows, 4096), dtype)
    bias = _x((1000,), dtype)
    _check(quant_ops.qmatmul(x, w, bias), reference.qmatmul(x.double(), w, bias), dtype)
    x = x / 16                                      # keeps gate * up well inside f16's range
    _check(quant_ops.qmatmul_gated(x, w, w, "gelu"), reference.qmatmul_gated(x.double(), w, w, "gelu"), dtype)
