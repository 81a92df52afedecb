"""The fused projection ops (``qmatmul_gated``, ``qmatmul_experts``, ``qmatmul_experts_gated``): the
references against their definitions in float64, and the compiled CPU core's compositions against the
references.

Weights are fresh random GGML blocks; activations random. The experts' offsets leave one expert without
rows and give another a single row. Tolerance: relative error (max |err| over max |reference|) <= 1e-5,
against the activations as the implementation computes with them (the compiled core's VNNI GEMV rounds them
to int8: ``activations_as_computed``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oxide import ops
from oxide.ops import cpu, dispatch, reference
from oxide.ops.cpu.quant import activations_as_computed
from oxide.quant import GGMLType, QuantTensor
from oxide.quant.testing import random_raw

REL_TOL = 1e-5
E, N, K = 4, 37, 96
OFFSETS = torch.tensor([0, 3, 3, 4, 9])           # expert 1 has no rows, expert 2 one


def _stacked(seed: int, shape: tuple[int, ...] = (E, N, K), qtype: GGMLType = GGMLType.Q8_0) -> QuantTensor:
    raw = random_raw(qtype, shape, np.random.default_rng(seed))
    return QuantTensor(torch.from_numpy(raw), qtype, shape, name=f"w{seed}")


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    err = (actual.double() - expected).abs().max() / expected.abs().max()
    assert err <= REL_TOL, f"relative error {err:.3g} > {REL_TOL}"


def _computed(x: torch.Tensor, impl: str) -> torch.Tensor:
    """x as the implementation under test computes with it, in float64."""
    return (activations_as_computed(x) if impl == "cpp" else x).double()


def _expected_experts(x: torch.Tensor, w: QuantTensor) -> torch.Tensor:
    """x (float64) through each expert's rows."""
    dense = w.dequantize().double()
    bounds = OFFSETS.tolist()
    return torch.cat([x[bounds[e]:bounds[e + 1]] @ dense[e].T for e in range(E)])


def _silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@pytest.fixture(params=["torch", "cpp"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cpp" and not cpu.available():
        pytest.skip("the compiled CPU core is not built")
    monkeypatch.setenv("OXIDE_IMPL", request.param)
    dispatch._RESOLVED.clear()
    yield request.param
    dispatch._RESOLVED.clear()


def test_qmatmul_gated(impl: str) -> None:
    gate, up = _stacked(1, (N, K)), _stacked(2, (N, K))
    x = torch.randn(3, K)
    assert dispatch.chosen_name("qmatmul_gated", "cpu", (gate, up), torch.float32) == impl
    xin = _computed(x, impl)
    expected = _silu_gate(xin @ gate.dequantize().double().T, xin @ up.dequantize().double().T)
    _close(ops.GatedLinear(gate, up, "silu", torch.device("cpu"), torch.float32)(x), expected)
    _close(ops.qmatmul_gated(x, gate, up, "silu"), expected)


def test_qmatmul_experts(impl: str) -> None:
    w = _stacked(3)
    x = torch.randn(int(OFFSETS[-1]), K)
    assert dispatch.chosen_name("qmatmul_experts", "cpu", w, torch.float32) == impl
    expected = _expected_experts(_computed(x, impl), w)
    _close(ops.ExpertsLinear(w, torch.device("cpu"), torch.float32)(x, OFFSETS), expected)
    _close(ops.qmatmul_experts(x, w, OFFSETS), expected)


def test_qmatmul_experts_gated(impl: str) -> None:
    gate, up = _stacked(4), _stacked(5)
    x = torch.randn(int(OFFSETS[-1]), K)
    xin = _computed(x, impl)
    expected = _silu_gate(_expected_experts(xin, gate), _expected_experts(xin, up))
    bound = ops.GatedExpertsLinear(gate, up, "silu", torch.device("cpu"), torch.float32)
    _close(bound(x, OFFSETS), expected)
    _close(ops.qmatmul_experts_gated(x, gate, up, OFFSETS, "silu"), expected)


def test_dense_stacked_experts_take_the_reference() -> None:
    w = torch.randn(E, N, K)
    x = torch.randn(int(OFFSETS[-1]), K)
    assert dispatch.chosen_name("qmatmul_experts", "cpu", w, torch.float32) == "torch"
    bounds = OFFSETS.tolist()
    expected = torch.cat([x[bounds[e]:bounds[e + 1]].double() @ w[e].double().T for e in range(E)])
    _close(reference.qmatmul_experts(x, w, OFFSETS), expected)
