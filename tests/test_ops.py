"""Every CPU implementation of the ops (the PyTorch reference and the compiled core) against independent
formulations, and the dispatch rules over all the registered implementations (reference, compiled CPU core,
Triton, CUDA): which one each device gets, what ``OXIDE_IMPL`` asks for, what a declined call falls back to."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oxide import ops
from oxide.errors import KernelUnavailableError
from oxide.ops import cpu, dispatch, reference, triton_kernels
from oxide.ops.cpu.quant import activations_as_computed
from oxide.quant import GGMLType, QuantTensor

# The implementations that run on CPU tensors without the Triton interpreter: each is checked below.
CPU_IMPLS = [pytest.param("torch", id="reference"),
             pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(not cpu.available(),
                                                                     reason="the compiled CPU core is not built"))]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _impl(op: str, name: str, *probe: object):
    """Implementation ``name`` of ``op`` on the CPU for calls like ``probe`` (skips, saying so, where the
    implementation declines them, as the compiled core declines F16 weights and float16 activations)."""
    impls = {i.name: i for i in dispatch._IMPLS[op] if "cpu" in i.device_types}
    accepts = impls[name].accepts
    if accepts is not None and not accepts(*probe):
        pytest.skip(f"the {name} implementation of {op} does not serve this call (the next one takes it)")
    return dispatch.named(op, name, "cpu", *probe)


def _quantized(rows: int, cols: int, qtype: GGMLType, seed: int) -> tuple[QuantTensor, torch.Tensor]:
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    dense = torch.from_numpy(gguf.quants.dequantize(raw, qtype).reshape(rows, cols))
    return QuantTensor(torch.from_numpy(raw.reshape(-1).view(np.uint8)), qtype, (rows, cols)), dense


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.Q5_1, GGMLType.F16])
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 5)])
def test_qmatmul_is_linear_over_dequantized(impl: str, qtype: GGMLType, lead: tuple[int, ...]) -> None:
    w, dense = _quantized(48, 64, qtype, seed=3)
    qmatmul = _impl("qmatmul", impl, w, torch.float32)
    x = torch.randn(*lead, 64, generator=_gen(1))
    bias = torch.randn(48, generator=_gen(2))
    computed = activations_as_computed(x) if impl == "cpp" else x   # the VNNI GEMV rounds x to int8
    torch.testing.assert_close(qmatmul(x, w, bias), computed @ dense.T + bias, rtol=1e-5, atol=1e-5)
    assert qmatmul(x, w).shape == (*lead, 48)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_embedding_of_quantized_rows_equals_dense_rows(impl: str) -> None:
    w, dense = _quantized(40, 64, GGMLType.Q8_0, seed=4)
    embedding = _impl("embedding", impl, w, torch.float32)
    ids = torch.tensor([[3, 0, 39, 3], [7, 8, 9, 10]])
    assert torch.equal(embedding(ids, w, torch.float32), dense[ids])
    w.dense(torch.float32)                       # the cached path gives the same rows
    assert torch.equal(embedding(ids, w, torch.float32), dense[ids])


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_rms_norm(impl: str) -> None:
    x, w = torch.randn(2, 3, 32, generator=_gen(5)), torch.randn(32, generator=_gen(6))
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(_impl("rms_norm", impl, torch.float32)(x, w, 1e-6), expected)


def test_rms_norm_of_half_activations_in_float32_statistics() -> None:
    """The reference keeps float16 activations float16 (the compiled core declines them: float32 only)."""
    x, w = torch.randn(2, 3, 32, generator=_gen(5)), torch.randn(32, generator=_gen(6))
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    half = reference.rms_norm(x.half(), w, 1e-6)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_rope_is_a_rotation_of_half_split_pairs(impl: str) -> None:
    """Pairs (i, i + hd/2) rotate by angle pos * inv_freq[i]: compare with complex multiplication (float64
    for the reference; float32, at float32's tolerance, for the compiled core, which serves only that)."""
    dtype, tol = (torch.float64, 1e-6) if impl == "torch" else (torch.float32, 2e-5)
    hd, T = 16, 7
    x = torch.randn(1, 2, T, hd, generator=_gen(7), dtype=torch.float64)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    positions = torch.arange(3, 3 + T)
    cos, sin = _impl("rope_cos_sin", impl, inv_freq.to(dtype).dtype)(positions, inv_freq.to(dtype))
    out = _impl("rope", impl, dtype)(x.to(dtype), cos.to(dtype), sin.to(dtype))
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:])
    rotated = z * torch.exp(1j * positions[:, None].double() * inv_freq[None, :])
    torch.testing.assert_close(out.double(), torch.cat((rotated.real, rotated.imag), -1), rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("window, softcap", [(0, 0.0), (4, 0.0), (0, 5.0)])
def test_attention_against_sdpa(impl: str, window: int, softcap: float) -> None:
    B, H, Hkv, T, S, hd = 1, 4, 2, 5, 9, 8
    q = torch.randn(B, H, T, hd, generator=_gen(8))
    k, v = torch.randn(B, Hkv, S, hd, generator=_gen(9)), torch.randn(B, Hkv, S, hd, generator=_gen(10))
    q_pos, k_pos = torch.arange(S - T, S), torch.arange(S)
    scale = 1 / math.sqrt(hd)
    attention = _impl("attention", impl, q.dtype, k.dtype, v.dtype)
    out = attention(q, k, v, q_pos, k_pos, scale=scale, window=window, softcap=softcap)
    # Independent: expand kv heads, build the mask by loops, softmax by hand.
    kx, vx = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    scores = q @ kx.transpose(-1, -2) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    mask = torch.tensor([[kp <= qp and (window == 0 or qp - kp < window) for kp in k_pos.tolist()]
                         for qp in q_pos.tolist()])
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ vx
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if not softcap and not window:
        sdpa = F.scaled_dot_product_attention(q, kx, vx, attn_mask=mask, scale=scale)
        torch.testing.assert_close(out, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("act, fn", [("silu", F.silu), ("gelu", F.gelu),
                                     ("gelu_pytorch_tanh", lambda g: F.gelu(g, approximate="tanh"))])
def test_gated_activation(impl: str, act: str, fn) -> None:
    gate, up = torch.randn(3, 16, generator=_gen(11)), torch.randn(3, 16, generator=_gen(12))
    gated = _impl("gated_activation", impl, gate.dtype, up.dtype)
    torch.testing.assert_close(gated(gate, up, act), fn(gate) * up)


def _probes() -> dict[str, tuple]:
    """A representative float32 call description for every op, as the functional API passes it to dispatch."""
    w, _ = _quantized(32, 64, GGMLType.Q8_0, seed=0)
    experts = QuantTensor(w.data[:16].repeat(3, 1), GGMLType.Q8_0, (3, 16, 64))   # (E, N, K), stacked
    f32 = torch.float32
    return {"qmatmul": (w, f32), "qmatmul_group": ((w, w), f32), "qmatmul_gated": ((w, w), f32),
            "qmatmul_experts": (experts, f32), "qmatmul_experts_gated": ((experts, experts), f32),
            "embedding": (w, f32), "rms_norm": (f32,), "add_rms_norm": (f32, f32), "rope_cos_sin": (f32,),
            "rope": (f32,), "kv_store": (f32, f32), "kv_store_rows": (f32, f32), "attention": (f32, f32, f32), "attention_rows": (f32, f32, f32),
            "gated_activation": (f32, f32),
            "add": (f32, f32), "scale": (f32,), "softcap": (f32,), "argmax": (f32,), "sample": (f32,),
            "sample_filter": (f32,), "activation": (f32,)}


def test_the_probes_cover_every_op() -> None:
    assert set(_probes()) == set(ops._OPS) == set(dispatch._IMPLS) - {"test_fake_op", "test_declining_op"}


def _registered(op: str, name: str, device_type: str) -> dispatch.Implementation:
    (impl,) = [i for i in dispatch._IMPLS[op] if i.name == name and device_type in i.device_types]
    return impl


def test_every_op_has_a_reference_on_every_device_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OXIDE_IMPL", "torch")
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    for op, probe in _probes().items():
        for device_type in ("cpu", "cuda", "mps"):
            assert dispatch.resolve(op, device_type, *probe) is getattr(reference, op)
            assert dispatch.bind(op, device_type, *probe) is getattr(reference, op)
            assert dispatch.chosen_name(op, device_type, *probe) == "torch"


def test_the_cpu_gets_the_compiled_core_where_it_has_the_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OXIDE_IMPL the CPU runs the compiled core for every op it implements (the reference for the
    others, and everywhere when the core is not built); Triton, even under the interpreter, ranks below the
    reference on the CPU, so it runs there only when asked for."""
    monkeypatch.delenv("OXIDE_IMPL", raising=False)
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    for op, probe in _probes().items():
        expected = "cpp" if cpu.available() and "cpp" in dispatch.implementations(op) else "torch"
        assert dispatch.chosen_name(op, "cpu", *probe) == expected, op
        assert dispatch.resolve(op, "cpu", *probe) is _registered(op, expected, "cpu").fn


@pytest.mark.skipif(not triton_kernels.available_on_cpu(), reason="needs triton and TRITON_INTERPRET=1")
def test_triton_on_the_cpu_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``OXIDE_IMPL=triton`` on the CPU (under the interpreter) takes every op Triton implements; the others go
    to the reference, not to the compiled core."""
    monkeypatch.setenv("OXIDE_IMPL", "triton")
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    for op, probe in _probes().items():
        expected = "triton" if op in triton_kernels.KERNELS else "torch"
        assert dispatch.chosen_name(op, "cpu", *probe) == expected, op


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback where no CUDA device exists")
@pytest.mark.parametrize("device_type", ["cuda", "mps"])
def test_gpu_device_types_without_their_kernels_fall_back_to_the_reference(device_type: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On MPS nothing but the reference is registered; on "cuda" without a CUDA device the Triton and CUDA
    kernels are registered but unavailable, so the reference takes every op."""
    monkeypatch.delenv("OXIDE_IMPL", raising=False)
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    for op, probe in _probes().items():
        assert dispatch.bind(op, device_type, *probe) is getattr(reference, op)
    assert {i.name for v in dispatch._IMPLS.values() for i in v if "mps" in i.device_types} == {"torch"}
    assert {"triton", "cuda"} <= {i.name for v in dispatch._IMPLS.values() for i in v if "cuda" in i.device_types}


@pytest.fixture
def fake_op():
    name = "test_fake_op"
    dispatch.register(name, "torch", lambda: "reference")
    dispatch.register(name, "fast", lambda: "fast", priority=10, available=lambda: False)
    yield name
    dispatch._IMPLS.pop(name)
    dispatch._RESOLVED.clear()


def test_unavailable_fast_path_falls_back(fake_op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OXIDE_IMPL", raising=False)
    assert dispatch.resolve(fake_op, "cpu")() == "reference"


def test_explicit_unavailable_impl_raises(fake_op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OXIDE_IMPL", "fast")
    dispatch._RESOLVED.clear()
    with pytest.raises(KernelUnavailableError, match="fast.*test_fake_op"):
        dispatch.resolve(fake_op, "cpu")
    monkeypatch.setenv("OXIDE_IMPL", "cuda")
    with pytest.raises(KernelUnavailableError, match="no cuda implementation"):
        dispatch.resolve(fake_op, "cpu")
    monkeypatch.setenv("OXIDE_IMPL", "torch")
    assert dispatch.resolve(fake_op, "cpu")() == "reference"
    dispatch._RESOLVED.clear()


def test_a_declined_call_goes_to_the_next_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OXIDE_IMPL", raising=False)
    name = "test_declining_op"
    dispatch.register(name, "torch", lambda: "reference")
    dispatch.register(name, "fast", lambda: "fast", priority=10, accepts=lambda kind: kind == "served")
    try:
        assert dispatch.bind(name, "cpu", "served")() == "fast"
        assert dispatch.bind(name, "cpu", "odd")() == "reference"
        assert dispatch.resolve(name, "cpu", "odd")() == "reference"
        assert dispatch.chosen_name(name, "cpu", "served") == "fast"
        monkeypatch.setenv("OXIDE_IMPL", "fast")   # asked for explicitly, a declined call still runs
        assert dispatch.bind(name, "cpu", "odd")() == "reference"
    finally:
        dispatch._IMPLS.pop(name)
        dispatch._RESOLVED.clear()


def test_import_oxide_imports_no_gpu_kernels() -> None:
    """``import oxide`` neither imports Triton nor loads a kernel module: they come when an op is first bound."""
    import subprocess
    import sys

    code = ("import sys, oxide; loaded = [m for m in ('triton', 'oxide.kernels', 'oxide._cuda') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a GPU, the Triton kernels run only under ``TRITON_INTERPRET=1``; asking for them otherwise raises."""
    monkeypatch.setenv("OXIDE_IMPL", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dispatch._RESOLVED.clear()
    try:
        with pytest.raises(KernelUnavailableError, match="triton"):
            dispatch.resolve("rope", "cpu", torch.float32)
    finally:
        dispatch._RESOLVED.clear()
