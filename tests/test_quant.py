"""oxide.quant: block geometry, QuantTensor, and dequantization bit-exact with gguf-py.

The oracle is ``gguf.quants.dequantize`` on the same raw bytes; results are compared with
``torch.equal`` (same float32 values bit for bit, NaN would fail). Raw blocks are random
bytes with every f16 scale field replaced by a finite random f16 (``random_raw``).
"""

from __future__ import annotations

import math
import zlib

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oxide.errors import ModelFormatError, UnsupportedQuantType
from oxide.quant import (
    SUPPORTED_TYPES,
    GGMLType,
    QuantTensor,
    bits_per_weight,
    block_geometry,
    dequantize,
    qtype_name,
)
from oxide.quant import dequant as dequant_module
from oxide.quant.testing import random_raw
from oxide.quant.types import F16_FIELDS

TYPES = sorted(SUPPORTED_TYPES, key=int)
QUANTIZABLE = [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.F16, GGMLType.BF16]
UNSUPPORTED = [GGMLType.IQ2_XXS, GGMLType.IQ3_S, GGMLType.TQ1_0, GGMLType.Q8_K, GGMLType.MXFP4]


def _ids(types: list[GGMLType]) -> list[str]:
    return [t.name for t in types]


def reference(raw: np.ndarray, qtype: GGMLType) -> torch.Tensor:
    """gguf-py's dequantization as a fresh float32 torch tensor."""
    return torch.from_numpy(np.array(gguf.quants.dequantize(raw, qtype), dtype=np.float32))


def assert_bit_exact(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32
    assert tuple(ours.shape) == tuple(ref.shape)
    assert not torch.isnan(ours).any()
    if not torch.equal(ours, ref):
        bad = (ours != ref).nonzero()
        first = tuple(bad[0].tolist())
        raise AssertionError(
            f"{len(bad)} of {ref.numel()} values differ; first at {first}: ours {ours[first].item()!r} "
            f"vs gguf-py {ref[first].item()!r}"
        )


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test id, so each case gets different but reproducible bytes."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# --- geometry -----------------------------------------------------------------------------


def test_supported_types_match_the_dequantizer_table() -> None:
    assert SUPPORTED_TYPES == frozenset(dequant_module._DEQUANTIZERS)
    assert frozenset(F16_FIELDS) == SUPPORTED_TYPES
    assert GGMLType is gguf.GGMLQuantizationType


@pytest.mark.parametrize("qtype", list(gguf.GGMLQuantizationType), ids=lambda t: t.name)
def test_geometry_follows_gguf_py(qtype: GGMLType) -> None:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    geo = block_geometry(qtype)
    assert (geo.block_size, geo.type_size) == (block_size, type_size)
    assert bits_per_weight(qtype) == 8 * type_size / block_size


def test_bits_per_weight_known_values() -> None:
    assert bits_per_weight(GGMLType.F32) == 32.0
    assert bits_per_weight(GGMLType.Q8_0) == 8.5
    assert bits_per_weight(GGMLType.Q4_K) == 4.5
    assert bits_per_weight(GGMLType.Q6_K) == 6.5625
    assert bits_per_weight(GGMLType.Q2_K) == 2.625


def test_qtype_name_accepts_enum_int_and_name() -> None:
    assert qtype_name(GGMLType.Q4_K) == "Q4_K"
    assert qtype_name(12) == "Q4_K"
    assert qtype_name("q5_0") == "Q5_0"
    with pytest.raises(UnsupportedQuantType, match="unknown GGML tensor type 9999"):
        qtype_name(9999)


def test_f16_fields_point_at_the_scales() -> None:
    """Poisoning each listed field with NaN must reach the output; the fields are right."""
    rng = np.random.default_rng(7)
    for qtype in TYPES:
        geo = block_geometry(qtype)
        for off in F16_FIELDS[qtype]:
            raw = random_raw(qtype, (1, geo.block_size), rng)
            raw[0, off : off + 2] = np.array([np.nan], dtype=np.float16).view(np.uint8)
            assert torch.isnan(reference(raw, qtype)).any(), (qtype.name, off)


# --- bit-exactness ------------------------------------------------------------------------


@pytest.mark.parametrize("blocks_shape", [(1, 1), (3, 2), (7, 5, 4)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("qtype", TYPES, ids=_ids(TYPES))
def test_random_blocks_bit_exact(qtype: GGMLType, blocks_shape: tuple[int, ...], rng: np.random.Generator) -> None:
    blk = block_geometry(qtype).block_size
    shape = (*blocks_shape[:-1], blocks_shape[-1] * blk)
    raw = random_raw(qtype, shape, rng)
    ours = dequantize(torch.from_numpy(raw), qtype, shape)
    assert_bit_exact(ours, reference(raw, qtype))


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=_ids(QUANTIZABLE))
def test_gguf_quantized_data_bit_exact(qtype: GGMLType, rng: np.random.Generator) -> None:
    blk = block_geometry(qtype).block_size
    values = rng.standard_normal((6, 8 * max(blk, 32))).astype(np.float32)
    values[1] *= 1e-3  # small-magnitude row
    values[2, ::3] = 0.0  # blocks with exact zeros
    raw = np.asarray(gguf.quants.quantize(values, qtype)).view(np.uint8)
    ours = dequantize(torch.from_numpy(raw), qtype, values.shape)
    assert_bit_exact(ours, reference(raw, qtype))
    # and it is a dequantization of the input, not just equal garbage
    assert torch.allclose(ours, torch.from_numpy(values), rtol=0.2, atol=0.2 * float(np.abs(values).max()))


def test_chunked_path_matches(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> None:
    """Tensors larger than one chunk (incl. a ragged last chunk) are assembled correctly."""
    for qtype in TYPES:
        blk = block_geometry(qtype).block_size
        monkeypatch.setattr(dequant_module, "_CHUNK_WEIGHTS_CPU", 3 * blk)
        shape = (7, 5 * blk)  # 35 blocks: 11 full chunks of 3 and one of 2
        raw = random_raw(qtype, shape, rng)
        assert_bit_exact(dequantize(torch.from_numpy(raw), qtype, shape), reference(raw, qtype))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    qtype=st.sampled_from(TYPES),
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    n_blocks=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_shape_bit_exact(qtype: GGMLType, lead: list[int], n_blocks: int, seed: int) -> None:
    shape = (*lead, n_blocks * block_geometry(qtype).block_size)
    raw = random_raw(qtype, shape, np.random.default_rng(seed))
    ours = dequantize(torch.from_numpy(raw.reshape(-1)), qtype, shape)  # flat bytes are fine too
    assert_bit_exact(ours, reference(raw, qtype))


@pytest.mark.parametrize("qtype", TYPES, ids=_ids(TYPES))
def test_output_does_not_use_uninitialised_memory(
    qtype: GGMLType, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    """Every fresh allocation is pre-filled with NaN/0xAB: any element left unwritten shows."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):  # noqa: ANN002, ANN003
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(0xAB)

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    monkeypatch.setattr(dequant_module, "_CHUNK_WEIGHTS_CPU", 4 * block_geometry(qtype).block_size)
    shape = (3, 6 * block_geometry(qtype).block_size)
    raw = random_raw(qtype, shape, rng)
    assert_bit_exact(dequantize(torch.from_numpy(raw), qtype, shape), reference(raw, qtype))


@pytest.mark.parametrize("qtype", TYPES, ids=_ids(TYPES))
def test_unaligned_and_strided_input(qtype: GGMLType, rng: np.random.Generator) -> None:
    """Bytes at an odd offset of a bigger buffer, or in a non-contiguous view, decode the same."""
    shape = (4, 2 * block_geometry(qtype).block_size)
    raw = random_raw(qtype, shape, rng)
    ref = reference(raw, qtype)
    flat = torch.from_numpy(raw.reshape(-1))
    buffer = torch.zeros(flat.numel() + 3, dtype=torch.uint8)
    buffer[1 : 1 + flat.numel()] = flat
    assert_bit_exact(dequantize(buffer[1 : 1 + flat.numel()], qtype, shape), ref)
    wide = torch.zeros((raw.shape[0], 2 * raw.shape[1]), dtype=torch.uint8)
    wide[:, ::2] = torch.from_numpy(raw)
    assert_bit_exact(dequantize(wide[:, ::2], qtype, shape), ref)


def test_result_is_a_fresh_tensor(rng: np.random.Generator) -> None:
    for qtype in (GGMLType.F32, GGMLType.Q8_0):
        raw = torch.from_numpy(random_raw(qtype, (2, 64), rng))
        before = raw.clone()
        out = dequantize(raw, qtype, (2, 64))
        out.fill_(123.0)
        assert torch.equal(raw, before)


def test_empty_tensor() -> None:
    out = dequantize(torch.empty(0, dtype=torch.uint8), GGMLType.Q4_K, (0, 256))
    assert out.shape == (0, 256) and out.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bit_exact(rng: np.random.Generator) -> None:
    for qtype in TYPES:
        shape = (5, 3 * block_geometry(qtype).block_size)
        raw = random_raw(qtype, shape, rng)
        ours = dequantize(torch.from_numpy(raw).cuda(), qtype, shape)
        assert ours.device.type == "cuda"
        assert_bit_exact(ours.cpu(), reference(raw, qtype))


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", UNSUPPORTED, ids=_ids(UNSUPPORTED))
def test_unsupported_type_names_it_and_lists_supported(qtype: GGMLType) -> None:
    geo = block_geometry(qtype)
    data = torch.zeros(geo.type_size, dtype=torch.uint8)
    with pytest.raises(UnsupportedQuantType) as err:
        dequantize(data, qtype, (geo.block_size,))
    message = str(err.value)
    assert qtype.name in message
    assert all(t.name in message for t in TYPES)
    with pytest.raises(UnsupportedQuantType):
        QuantTensor(data, qtype, (geo.block_size,))


def test_unknown_type_id() -> None:
    with pytest.raises(UnsupportedQuantType, match="999"):
        dequantize(torch.zeros(18, dtype=torch.uint8), 999, (32,))


def test_size_mismatch_gives_expected_and_actual(rng: np.random.Generator) -> None:
    raw = torch.from_numpy(random_raw(GGMLType.Q4_K, (3, 512), rng)).reshape(-1)  # 3*2*144 = 864
    with pytest.raises(ModelFormatError, match=r"needs 864 bytes .* but 863 bytes"):
        dequantize(raw[:-1], GGMLType.Q4_K, (3, 512))
    with pytest.raises(ModelFormatError, match=r"needs 1152 bytes .* but 864 bytes"):
        dequantize(raw, GGMLType.Q4_K, (4, 512))
    with pytest.raises(ModelFormatError, match=r"tensor 'blk\.0\.ffn_up\.weight'.*needs 1152 bytes.*but 864"):
        QuantTensor(raw, GGMLType.Q4_K, (2, 1024), name="blk.0.ffn_up.weight")


def test_last_dim_not_multiple_of_block() -> None:
    with pytest.raises(ModelFormatError, match=r"last dimension 100 .* block size 32"):
        dequantize(torch.zeros(4 * 18, dtype=torch.uint8), GGMLType.Q4_0, (4, 100))
    with pytest.raises(ModelFormatError, match=r"block size 256"):
        QuantTensor(torch.zeros(144, dtype=torch.uint8), GGMLType.Q4_K, (1, 128))


def test_bad_dtype_and_shape() -> None:
    with pytest.raises(ModelFormatError, match="torch.uint8"):
        dequantize(torch.zeros(8, dtype=torch.float32), GGMLType.F32, (8,))
    with pytest.raises(ModelFormatError, match="at least one dimension"):
        dequantize(torch.zeros(4, dtype=torch.uint8), GGMLType.F32, ())
    with pytest.raises(ModelFormatError, match="non-negative"):
        dequantize(torch.zeros(4, dtype=torch.uint8), GGMLType.F32, (-1, 1))


# --- QuantTensor --------------------------------------------------------------------------


def test_quant_tensor_properties_and_repr(rng: np.random.Generator) -> None:
    raw = random_raw(GGMLType.Q4_K, (640, 2048), rng)
    qt = QuantTensor(torch.from_numpy(raw).reshape(-1), GGMLType.Q4_K, (640, 2048))
    assert qt.shape == (640, 2048)
    assert qt.qtype is GGMLType.Q4_K
    assert qt.nbytes == 640 * 8 * 144 == 737280
    assert qt.numel == 640 * 2048
    assert qt.device == torch.device("cpu")
    assert qt.data.shape == (640, 8 * 144) and qt.data.dtype == torch.uint8
    assert repr(qt) == "QuantTensor(Q4_K, shape=(640, 2048), 720.0 KiB)"
    small = QuantTensor(torch.from_numpy(random_raw(GGMLType.Q8_0, (1, 32), rng)), 8, [1, 32])
    assert repr(small) == "QuantTensor(Q8_0, shape=(1, 32), 34 B)"
    assert small.qtype is GGMLType.Q8_0


def test_quant_tensor_dense_is_cached(rng: np.random.Generator) -> None:
    raw = random_raw(GGMLType.Q6_K, (3, 7, 256), rng)
    qt = QuantTensor(torch.from_numpy(raw), "Q6_K", (3, 7, 256))
    ref = reference(raw, GGMLType.Q6_K)
    first = qt.dense()
    assert first is qt.dense()
    assert_bit_exact(first, ref)
    assert_bit_exact(qt.dequantize(), ref)
    assert qt.dequantize() is not first
    half = qt.dense(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half is qt.dense(torch.bfloat16)
    assert torch.equal(half, ref.to(torch.bfloat16))
    qt.drop_cache()
    again = qt.dense()
    assert again is not first
    assert_bit_exact(again, ref)


def test_quant_tensor_to_keeps_blocks(rng: np.random.Generator) -> None:
    raw = random_raw(GGMLType.Q5_0, (2, 64), rng)
    qt = QuantTensor(torch.from_numpy(raw), GGMLType.Q5_0, (2, 64))
    assert qt.to("cpu") is qt
    assert qt.to(torch.device("cpu")) is qt
    if torch.cuda.is_available():
        moved = qt.to("cuda")
        assert moved.device.type == "cuda" and moved.shape == qt.shape
        assert_bit_exact(moved.dequantize().cpu(), reference(raw, GGMLType.Q5_0))


def test_quant_tensor_sizes_are_consistent_for_every_type(rng: np.random.Generator) -> None:
    for qtype in TYPES:
        shape = (2, 3, 2 * block_geometry(qtype).block_size)
        qt = QuantTensor(torch.from_numpy(random_raw(qtype, shape, rng)), qtype, shape)
        assert qt.nbytes * 8 == qt.numel * bits_per_weight(qtype)
        assert qt.numel == math.prod(shape)


def test_quant_tensor_rows_and_has_dense(rng: np.random.Generator) -> None:
    raw = random_raw(GGMLType.Q4_0, (9, 4, 64), rng)
    qt = QuantTensor(torch.from_numpy(raw), GGMLType.Q4_0, (9, 4, 64), name="token_embd.weight")
    ref = reference(raw, GGMLType.Q4_0)
    ids = torch.tensor([8, 0, 3, 3])
    picked = qt.rows(ids)
    assert picked.shape == (4, 4, 64) and picked.name == "token_embd.weight"
    assert_bit_exact(picked.dequantize(), ref[ids])
    assert not qt.has_dense()
    qt.dense()
    assert qt.has_dense() and not qt.has_dense(torch.float16)
    flat = QuantTensor(torch.from_numpy(random_raw(GGMLType.Q8_0, (64,), rng)), GGMLType.Q8_0, (64,))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        flat.rows(ids)


@pytest.mark.parametrize("qtype", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_float_types_in_their_own_dtype(qtype: GGMLType, rng: np.random.Generator) -> None:
    native = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}[qtype]
    raw = random_raw(qtype, (3, 10), rng)
    data = torch.from_numpy(raw)
    qt = QuantTensor(data, qtype, (3, 10))
    out = qt.dequantize(native)
    assert out.dtype == native and out.shape == (3, 10)
    assert torch.equal(out.float(), reference(raw, qtype))
    out.fill_(1.0)  # a copy, not a view of the raw bytes
    assert torch.equal(data, torch.from_numpy(raw))


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.F16])
def test_dense_cache_is_column_major_and_exact_across_bands(qtype: GGMLType, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dense`` builds the matrix band by band into a column-major buffer; values equal ``dequantize``."""
    import oxide.quant.tensor as tensor_module

    monkeypatch.setattr(tensor_module, "_DENSE_BAND_ELEMENTS", 3 * 256)   # several bands, a partial last one
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):   # an element the bands never write stays NaN
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    shape = (37, 256)
    qt = QuantTensor(torch.from_numpy(random_raw(qtype, shape, np.random.default_rng(11))), qtype, shape)
    dense = qt.dense(torch.float32)
    assert dense.shape == shape and dense.T.is_contiguous()
    assert torch.equal(dense, qt.dequantize(torch.float32))
    assert qt.dense(torch.float32) is dense
    half = qt.dense(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, qt.dequantize(torch.bfloat16))
