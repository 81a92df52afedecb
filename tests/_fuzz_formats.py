"""Structure-aware mutators for GGUF files and safetensors model folders (the fuzz campaign's input side).

GGUF (v2/v3, little-endian): ``magic, u32 version, u64 tensor count, u64 key count``, the key/value pairs
(``string key, u32 type, value``; an array is ``u32 item type, u64 count, items``), the tensor infos
(``string name, u32 n_dims, u64 dims[n_dims], u32 type, u64 offset``), padding to ``general.alignment``,
then the data. :func:`parse_gguf` reads a file into a :class:`GGUFDoc` written here, independently of
oxide's reader (the fuzzer must not trust the code under test); unmutated pairs keep their bytes.

A mutation is a small named edit of that structure (a value of another type, a number at a boundary, an
array for a scalar, a shape, a type code or an offset moved, the file cut short...). Each mutant is the
result of one to three of them, drawn from a ``numpy`` generator seeded by (campaign seed, mutant index), so
that a mutant is rebuilt exactly from those two numbers; :class:`Mutant` carries the description printed on
failure.
"""

from __future__ import annotations

import copy
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# GGUF value types (gguf-py's GGUFValueType)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FORMATS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B", U64: "<Q",
            I64: "<q", F64: "<d"}
_INT_TYPES = (U8, I8, U16, I16, U32, I32, U64, I64)
_FLOAT_TYPES = (F32, F64)


@dataclass
class KV:
    """One metadata pair; ``value`` is a Python scalar, ``bytes`` for a string, or (item type, list) for an
    array. ``raw``: the pair's bytes as parsed (None once mutated)."""

    key: bytes
    vtype: int
    value: Any
    raw: bytes | None = None


@dataclass
class TensorInfo:
    name: bytes
    dims: list[int]
    qtype: int
    offset: int


@dataclass
class GGUFDoc:
    version: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    data: bytes
    alignment: int = 32
    counts: tuple[int | None, int | None] = (None, None)   # tensor / key counts to write instead of the true ones

    def find(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key.encode()), None)

    def arch(self) -> str:
        kv = self.find("general.architecture")
        return kv.value.decode(errors="replace") if kv is not None and isinstance(kv.value, bytes) else "llama"


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> bytes:
        n = self.unpack("<Q")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            return item, [self.value(item) for _ in range(count)]
        value = self.unpack(_FORMATS[vtype])
        return bool(value) if vtype == BOOL else value


def parse_gguf(buf: bytes) -> GGUFDoc:
    r = _Reader(buf)
    assert buf[:4] == b"GGUF", "not a GGUF seed"
    r.pos = 4
    version, n_tensors, n_kv = r.unpack("<I"), r.unpack("<Q"), r.unpack("<Q")
    kvs = []
    for _ in range(n_kv):
        start = r.pos
        key = r.string()
        vtype = r.unpack("<I")
        kvs.append(KV(key, vtype, r.value(vtype), buf[start:r.pos]))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
        tensors.append(TensorInfo(name, dims, r.unpack("<I"), r.unpack("<Q")))
    align_kv = next((kv for kv in kvs if kv.key == b"general.alignment"), None)
    alignment = align_kv.value if align_kv is not None else 32
    start = -(-r.pos // alignment) * alignment
    return GGUFDoc(version, kvs, tensors, buf[start:], alignment)


def _pack_scalar(vtype: int, value: Any) -> bytes:
    if vtype in _FLOAT_TYPES:
        with np.errstate(over="ignore"):
            return (np.float32 if vtype == F32 else np.float64)(value).tobytes()
    if vtype == BOOL:
        return struct.pack("<B", int(value) & 0xFF)
    size = struct.calcsize(_FORMATS[vtype])
    return (int(value) & ((1 << 8 * size) - 1)).to_bytes(size, "little")   # the value's low bits, as a file holds them


def _pack_string(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def _pack_value(vtype: int, value: Any) -> bytes:
    if vtype == STRING:
        return _pack_string(value)
    if vtype == ARRAY:
        item, items = value
        return struct.pack("<IQ", item, len(items)) + b"".join(_pack_value(item, v) for v in items)
    return _pack_scalar(vtype, value)


def write_gguf(doc: GGUFDoc) -> bytes:
    n_tensors, n_kv = doc.counts
    out = [b"GGUF", struct.pack("<IQQ", doc.version, len(doc.tensors) if n_tensors is None else n_tensors,
                                len(doc.kvs) if n_kv is None else n_kv)]
    for kv in doc.kvs:
        out.append(kv.raw if kv.raw is not None else
                   _pack_string(kv.key) + struct.pack("<I", kv.vtype) + _pack_value(kv.vtype, kv.value))
    for t in doc.tensors:
        out.append(_pack_string(t.name) + struct.pack("<I", len(t.dims)) + b"".join(struct.pack("<Q", d & (2**64 - 1))
                                                                                  for d in t.dims)
                   + struct.pack("<IQ", t.qtype & 0xFFFFFFFF, t.offset & (2**64 - 1)))
    header = b"".join(out)
    pad = -len(header) % doc.alignment if doc.alignment > 0 and doc.alignment & (doc.alignment - 1) == 0 else 0
    return header + bytes(pad) + doc.data


# --- hostile values ----------------------------------------------------------------------------------------

_BOUNDARY_INTS = (0, 1, -1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1,
                  10**6, 10**9, -(2**31))
_BOUNDARY_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 1e300, float("nan"), float("inf"), float("-inf"),
                    1.4e-45, 3.4e38)
_WORDS = (b"", b"llama", b"gemma3", b"qwen3", b"deepseek2", b"none", b"linear", b"yarn", b"longrope", b"su",
          b"llama3", b"gpt2", b"bert", b"t5", b"gemma4", b"default", b"qwen2", b"\xff\xfe", b"a\x00b", b"x" * 5000,
          b"{{ messages[0]['content'] }}", b"{% for m in messages %}{{ m.content }}{% endfor %}", b"{{ raise(",
          b"<s>", b"\xe2\x96\x81", b"1024", b"abc", b"nan", b"1e30")


def hostile_int(rng: np.random.Generator, old: Any = None) -> int:
    choices = list(_BOUNDARY_INTS)
    if isinstance(old, int) and not isinstance(old, bool):
        choices += [old + 1, old - 1, old * 2, old // 2, old * 1000, -old]
    return int(choices[rng.integers(len(choices))])


def hostile_float(rng: np.random.Generator, old: Any = None) -> float:
    choices = list(_BOUNDARY_FLOATS)
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        choices += [old * 2.0, old / 2.0, -float(old), float(old) + 0.5]
    return float(choices[rng.integers(len(choices))])


def hostile_value(rng: np.random.Generator, vtype: int, value: Any) -> tuple[int, Any, str]:
    """A replacement (type, value, description) for a GGUF value: its own type at a boundary, or another type."""
    kind = rng.integers(6)
    if kind == 0 and vtype in _INT_TYPES:
        new_type = int(rng.choice(_INT_TYPES)) if rng.random() < 0.3 else vtype
        v = hostile_int(rng, value)
        return new_type, v, f"int {v} as type {new_type}"
    if kind == 0 and vtype in _FLOAT_TYPES:
        v = hostile_float(rng, value)
        return vtype, v, f"float {v!r}"
    if kind == 1:   # another scalar type altogether
        new_type = int(rng.choice((U32, I32, I64, U64, F32, F64, BOOL, STRING)))
        if new_type == STRING:
            v = _WORDS[rng.integers(len(_WORDS))] if rng.random() < 0.7 else repr(value).encode()[:100]
            return STRING, v, f"string {v[:40]!r}"
        if new_type == BOOL:
            return BOOL, bool(rng.integers(2)), "bool"
        v = hostile_float(rng, value if isinstance(value, (int, float)) else None) if new_type in _FLOAT_TYPES \
            else hostile_int(rng, value if isinstance(value, int) else None)
        return new_type, v, f"type {new_type} value {v!r}"
    if kind == 2 and vtype == ARRAY:   # the array as a scalar (its first item) or an edit of its items
        item, items = value
        edit = rng.integers(5)
        if edit == 0 and items and item != ARRAY:
            return item, items[0], "array -> its first item"
        if edit == 1:
            return ARRAY, (item, []), "empty array"
        if edit == 2:
            return ARRAY, (item, items[:int(rng.integers(len(items) + 1))]), "truncated array"
        if edit == 3 and items:
            return ARRAY, (item, items + items[:int(rng.integers(1, len(items) + 1))]), "array extended"
        new_item = int(rng.choice((U32, I32, F32, STRING, BOOL, I64)))
        n = min(len(items), 4096)
        fill = [b"t%d" % i for i in range(n)] if new_item == STRING else \
            [hostile_float(rng) if new_item == F32 else hostile_int(rng) for _ in range(n)]
        if new_item == BOOL:
            fill = [bool(v) for v in fill]
        return ARRAY, (new_item, fill), f"array of item type {new_item} ({n} items)"
    if kind == 2:   # a scalar as an array
        n = int(rng.choice((0, 1, 2, 26)))
        return ARRAY, (vtype, [value] * n), f"scalar -> array of {n}"
    if kind == 3 and vtype == ARRAY and value[1]:   # one item of the array set to a hostile value
        item, items = value
        items = list(items)
        i = int(rng.integers(len(items)))
        if item == STRING:
            items[i] = _WORDS[rng.integers(len(_WORDS))] if rng.random() < 0.5 else items[int(rng.integers(len(items)))]
        elif item in _FLOAT_TYPES:
            items[i] = hostile_float(rng, items[i])
        elif item in _INT_TYPES:
            items[i] = hostile_int(rng, items[i])
        return ARRAY, (item, items), f"item {i} -> {items[i]!r:.40}"
    if kind == 4 and vtype == STRING:
        v = _WORDS[rng.integers(len(_WORDS))]
        return STRING, v, f"string {v[:40]!r}"
    if vtype in _FLOAT_TYPES:
        v = hostile_float(rng, value)
        return vtype, v, f"float {v!r}"
    if vtype in _INT_TYPES:
        v = hostile_int(rng, value)
        return vtype, v, f"int {v}"
    v = hostile_int(rng)
    return U32, v, f"u32 {v}"


# Keys oxide reads that a seed may lack: "{arch}" is the file's architecture.
EXTRA_KEYS = (
    "{arch}.rope.scaling.type", "{arch}.rope.scaling.factor", "{arch}.rope.scaling.original_context_length",
    "{arch}.rope.scaling.attn_factor", "{arch}.rope.scaling.yarn_log_multiplier", "{arch}.rope.dimension_count",
    "{arch}.expert_count", "{arch}.expert_used_count", "{arch}.expert_feed_forward_length",
    "{arch}.attention.sliding_window", "{arch}.attention.key_length", "{arch}.attention.head_count_kv",
    "{arch}.vocab_size", "{arch}.rope.freq_base", "{arch}.rope.freq_base_swa", "{arch}.final_logit_softcapping",
    "{arch}.attn_logit_softcapping", "{arch}.context_length", "{arch}.attention.layer_norm_rms_epsilon",
    "{arch}.leading_dense_block_count", "{arch}.attention.kv_lora_rank", "general.alignment",
    "general.architecture", "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.ggml.model",
    "tokenizer.chat_template", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.token_type", "tokenizer.ggml.scores", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.precompiled_charsmap", "general.name",
)
# Tensors a seed may lack, by the names oxide looks for.
EXTRA_TENSORS = (b"rope_freqs.weight", b"rope_factors_long.weight", b"rope_factors_short.weight", b"output.weight",
                 b"blk.1.attn_q.weight", b"blk.0.attn_q.bias", b"blk.0.ffn_gate_inp.weight",
                 b"blk.0.ffn_up_exps.weight", b"blk.0.attn_q_norm.weight", b"blk.2147483647.attn_q.weight")


@dataclass
class Mutant:
    """What the fuzz campaign runs: the seed, its kind, the mutations applied, and the files to write."""

    seed_name: str
    kind: str                      # "model" (load and generate) or "vocab" (tokenizer only)
    mutations: list[str]
    files: dict[str, bytes]        # file name -> contents; a folder when there are several

    def describe(self) -> str:
        return f"{self.seed_name}: " + "; ".join(self.mutations)


# --- GGUF mutations ---------------------------------------------------------------------------------------

def _mutate_kv(doc: GGUFDoc, rng: np.random.Generator) -> str:
    i = int(rng.integers(len(doc.kvs)))
    kv = doc.kvs[i]
    vtype, value, what = hostile_value(rng, kv.vtype, kv.value)
    doc.kvs[i] = KV(kv.key, vtype, value)
    return f"{kv.key.decode(errors='replace')}: {what}"


def _add_kv(doc: GGUFDoc, rng: np.random.Generator) -> str:
    key = EXTRA_KEYS[rng.integers(len(EXTRA_KEYS))].format(arch=doc.arch())
    template = {STRING: b"linear", U32: 4, F32: 2.0, ARRAY: (F32, [1.0] * 8)}
    start = int(rng.choice(list(template)))
    vtype, value, what = hostile_value(rng, start, template[start])
    if rng.random() < 0.3:
        vtype, value, what = start, template[start], f"{template[start]!r:.30}"
    doc.kvs = [kv for kv in doc.kvs if kv.key != key.encode()] + [KV(key.encode(), vtype, value)]
    return f"add {key}: {what}"


def _delete_kv(doc: GGUFDoc, rng: np.random.Generator) -> str:
    kv = doc.kvs.pop(int(rng.integers(len(doc.kvs))))
    return f"delete {kv.key.decode(errors='replace')}"


def _duplicate_kv(doc: GGUFDoc, rng: np.random.Generator) -> str:
    kv = doc.kvs[int(rng.integers(len(doc.kvs)))]
    vtype, value, what = hostile_value(rng, kv.vtype, kv.value)
    doc.kvs.append(KV(kv.key, vtype, value))
    return f"duplicate {kv.key.decode(errors='replace')}: {what}"


def _mutate_tensor(doc: GGUFDoc, rng: np.random.Generator) -> str:
    if not doc.tensors:
        return "no tensors"
    i = int(rng.integers(len(doc.tensors)))
    t = doc.tensors[i]
    name = t.name.decode(errors="replace")
    edit = rng.integers(9)
    if edit == 0 and t.dims:
        d = int(rng.integers(len(t.dims)))
        t.dims[d] = int(rng.choice([0, 1, t.dims[d] + 1, max(t.dims[d] - 1, 0), t.dims[d] * 2, 2**31, 2**40,
                                    2**63, 256, 32]))
        return f"tensor {name} dim {d} -> {t.dims[d]}"
    if edit == 1:
        t.dims = t.dims[::-1] if len(t.dims) > 1 else t.dims + [1]
        return f"tensor {name} dims -> {t.dims}"
    if edit == 2:
        t.dims = t.dims + [int(rng.choice([1, 2, 0]))] * int(rng.choice([1, 4]))
        return f"tensor {name} dims -> {t.dims}"
    if edit == 3:
        t.qtype = int(rng.choice([0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 28, 30, 34, 39, 99, 2**31]))
        return f"tensor {name} type -> {t.qtype}"
    if edit == 4:
        delta = int(rng.choice([1, -1, 32, -32, 4096, 2**40, -(t.offset + 1)]))
        t.offset += delta
        return f"tensor {name} offset {delta:+d}"
    if edit == 5:
        other = doc.tensors[int(rng.integers(len(doc.tensors)))]
        t.offset = other.offset
        return f"tensor {name} offset = that of {other.name.decode(errors='replace')}"
    if edit == 6:
        doc.tensors.pop(i)
        return f"delete tensor {name}"
    if edit == 7:
        new = EXTRA_TENSORS[rng.integers(len(EXTRA_TENSORS))] if rng.random() < 0.7 else \
            doc.tensors[int(rng.integers(len(doc.tensors)))].name
        doc.tensors.append(TensorInfo(new, list(t.dims), t.qtype, t.offset))
        return f"add tensor {new.decode()} like {name}"
    new = re.sub(rb"\d+", lambda m: str(int(m.group()) + int(rng.choice([1, 100, 2**31]))).encode(), t.name, count=1)
    t.name = new if new != t.name else b"x." + t.name
    return f"rename tensor {name} -> {t.name.decode(errors='replace')}"


def _mutate_counts(doc: GGUFDoc, rng: np.random.Generator) -> str:
    which = int(rng.integers(2))
    true = (len(doc.tensors), len(doc.kvs))[which]
    new = int(rng.choice([true + 1, max(true - 1, 0), 2**32, 2**63, 0]))
    doc.counts = (new, None) if which == 0 else (None, new)
    return f"{('tensor', 'key')[which]} count -> {new}"


def _mutate_version(doc: GGUFDoc, rng: np.random.Generator) -> str:
    doc.version = int(rng.choice([1, 2, 4, 2**31]))
    return f"version -> {doc.version}"


_GGUF_MUTATIONS: tuple[tuple[Callable[[GGUFDoc, np.random.Generator], str], float], ...] = (
    (_mutate_kv, 0.45), (_add_kv, 0.15), (_delete_kv, 0.07), (_duplicate_kv, 0.03), (_mutate_tensor, 0.25),
    (_mutate_counts, 0.03), (_mutate_version, 0.02),
)


def mutate_gguf(doc: GGUFDoc, rng: np.random.Generator, seed_name: str, kind: str) -> Mutant:
    doc = copy.copy(doc)
    doc.kvs = list(doc.kvs)
    doc.tensors = [TensorInfo(t.name, list(t.dims), t.qtype, t.offset) for t in doc.tensors]
    funcs, weights = zip(*_GGUF_MUTATIONS)
    p = np.array(weights) / sum(weights)
    mutations = [funcs[rng.choice(len(funcs), p=p)](doc, rng) for _ in range(int(rng.choice([1, 1, 2, 3])))]
    data = write_gguf(doc)
    cut = rng.random()
    if cut < 0.04:   # cut short: in the header or in the data
        at = int(rng.integers(1, len(data)))
        data = data[:at]
        mutations.append(f"truncated at byte {at}")
    elif cut < 0.07:   # a few bytes flipped anywhere in the header
        header_end = len(data) - len(doc.data)
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(header_end))
            buf[at] ^= int(rng.integers(1, 256))
            mutations.append(f"byte {at} flipped")
        data = bytes(buf)
    return Mutant(seed_name, kind, mutations, {"model.gguf": data})


# --- safetensors folders --------------------------------------------------------------------------------

@dataclass
class FolderSeed:
    """config.json (parsed) and one model.safetensors (header parsed, data kept)."""

    config: dict[str, Any]
    header: dict[str, Any]
    data: bytes
    extra: dict[str, bytes] = field(default_factory=dict)   # other files, copied as they are


def parse_folder(directory: Path) -> FolderSeed:
    raw = (directory / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    extra = {p.name: p.read_bytes() for p in directory.iterdir()
             if p.name not in ("config.json", "model.safetensors") and p.is_file()}
    return FolderSeed(json.loads((directory / "config.json").read_text()), json.loads(raw[8:8 + n]), raw[8 + n:], extra)


# config.json keys oxide reads that a seed may lack
CONFIG_KEYS = ("rope_scaling", "rope_parameters", "head_dim", "num_key_value_heads", "sliding_window", "layer_types",
               "num_experts", "num_local_experts", "num_experts_per_tok", "mlp_only_layers", "hidden_activation",
               "text_config", "partial_rotary_factor", "query_pre_attn_scalar", "final_logit_softcapping",
               "rope_local_base_freq", "use_sliding_window", "decoder_sparse_step", "num_nextn_predict_layers",
               "tie_word_embeddings", "architectures", "model_type", "max_position_embeddings", "rope_theta")
_ROPE_SCALINGS = ({"type": "linear"}, {"rope_type": "linear", "factor": "abc"}, {"rope_type": "llama3", "factor": 8.0},
                  {"rope_type": "yarn", "factor": 4.0}, {"rope_type": "longrope", "short_factor": [1.0],
                                                          "long_factor": [1.0], "original_max_position_embeddings": 0},
                  {"rope_type": ["linear"]}, {"rope_type": "dynamic", "factor": 0}, {"type": "su"},
                  {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2**40},
                  {"rope_theta": 0.0}, {"rope_theta": float("nan")}, {"full_attention": 1}, [1, 2], "linear")


def hostile_json(rng: np.random.Generator, old: Any = None) -> tuple[Any, str]:
    kind = rng.integers(9)
    if kind == 0 or (kind == 1 and isinstance(old, int) and not isinstance(old, bool)):
        v = hostile_int(rng, old if isinstance(old, int) and not isinstance(old, bool) else None)
        return v, f"int {v}"
    if kind == 1:
        v = hostile_float(rng, old if isinstance(old, (int, float)) and not isinstance(old, bool) else None)
        return v, f"float {v!r}"
    if kind == 2:
        v = [b.decode(errors="replace") for b in _WORDS][rng.integers(len(_WORDS))]
        return v, f"string {v[:40]!r}"
    if kind == 3:
        v = [None, True, False, [], {}, [old], [old, old], {"x": old}][rng.integers(8)]
        return v, f"{v!r:.40}"
    if kind == 4:
        v = copy.deepcopy(_ROPE_SCALINGS[rng.integers(len(_ROPE_SCALINGS))])
        return v, f"{v!r:.80}"
    if kind == 5 and isinstance(old, list) and old:
        edit = rng.integers(3)
        v = old[:int(rng.integers(len(old)))] if edit == 0 else old * 2 if edit == 1 else [hostile_json(rng, old[0])[0]]
        return v, f"list edit -> {v!r:.60}"
    if kind == 5 and isinstance(old, dict) and old:
        key = list(old)[rng.integers(len(old))]
        inner, what = hostile_json(rng, old[key])
        return {**old, key: inner}, f"[{key!r}] -> {what}"
    if kind == 6:
        v = float(old) if isinstance(old, int) and not isinstance(old, bool) else str(old)
        return v, f"retyped {v!r:.40}"
    v = hostile_float(rng, old if isinstance(old, (int, float)) and not isinstance(old, bool) else None)
    return v, f"float {v!r}"


def _mutate_config(seed: FolderSeed, config: dict[str, Any], header: dict[str, Any], rng: np.random.Generator) -> str:
    keys = list(config)
    key = keys[rng.integers(len(keys))] if rng.random() < 0.7 else CONFIG_KEYS[rng.integers(len(CONFIG_KEYS))]
    if rng.random() < 0.08 and key in config:
        del config[key]
        return f"config.json: delete {key}"
    value, what = hostile_json(rng, config.get(key))
    config[key] = value
    return f"config.json: {key} -> {what}"


def _mutate_header(seed: FolderSeed, config: dict[str, Any], header: dict[str, Any], rng: np.random.Generator) -> str:
    names = [n for n in header if n != "__metadata__"]
    name = names[rng.integers(len(names))]
    entry = header[name]
    if not (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2):
        header[name], what = hostile_json(rng, entry)   # an entry an earlier mutation broke: replace it whole
        return f"safetensors {name} -> {what}"
    edit = rng.integers(7)
    if edit == 0:
        entry["dtype"] = str(rng.choice(["F64", "F16", "BF16", "I64", "I8", "U8", "BOOL", "F8_E4M3", "X", 3]))
        return f"safetensors {name}: dtype -> {entry['dtype']}"
    if edit == 1 and entry["shape"]:
        d = int(rng.integers(len(entry["shape"])))
        old = entry["shape"][d] if isinstance(entry["shape"][d], int) else 1
        entry["shape"][d] = int(rng.choice([0, 1, old + 1, old * 2, 2**40, -1]))
        return f"safetensors {name}: shape -> {entry['shape']}"
    if edit == 2:
        entry["shape"] = entry["shape"][::-1] if len(entry["shape"]) > 1 else entry["shape"] + [1]
        return f"safetensors {name}: shape -> {entry['shape']}"
    if edit == 3:
        start, end = entry["data_offsets"]
        if not (isinstance(start, int) and isinstance(end, int)):
            start, end = 0, 0
        delta = int(rng.choice([1, -1, 4, 2**40]))
        entry["data_offsets"] = [start + delta, end + delta] if rng.random() < 0.5 else [start, end + delta]
        return f"safetensors {name}: data_offsets -> {entry['data_offsets']}"
    if edit == 4:
        del header[name]
        return f"safetensors: delete {name}"
    if edit == 5:
        new = re.sub(r"\d+", lambda m: str(int(m.group()) + int(rng.choice([1, 7, 10**6]))), name, count=1)
        header[new if new != name else "x." + name] = header.pop(name)
        return f"safetensors: rename {name} -> {new}"
    value, what = hostile_json(rng, entry.get("shape"))
    entry[str(rng.choice(["shape", "dtype", "data_offsets"]))] = value
    return f"safetensors {name}: field -> {what}"


def mutate_folder(seed: FolderSeed, rng: np.random.Generator, seed_name: str) -> Mutant:
    config, header = copy.deepcopy(seed.config), copy.deepcopy(seed.header)
    mutations = []
    for _ in range(int(rng.choice([1, 1, 2, 3]))):
        mutate = _mutate_config if rng.random() < 0.6 else _mutate_header
        mutations.append(mutate(seed, config, header, rng))
    blob = json.dumps(header).encode()
    weights = struct.pack("<Q", len(blob)) + blob + seed.data
    if rng.random() < 0.03:
        at = int(rng.integers(1, len(weights)))
        weights = weights[:at]
        mutations.append(f"model.safetensors truncated at byte {at}")
    config_bytes = json.dumps(config).encode()
    if rng.random() < 0.02:
        config_bytes = config_bytes[:int(rng.integers(len(config_bytes)))]
        mutations.append("config.json truncated")
    return Mutant(seed_name, "model", mutations,
                  {**seed.extra, "config.json": config_bytes, "model.safetensors": weights})
