"""One validation layer for what oxide reads from model files: GGUF metadata and ``config.json``.

Files come from strangers, so every value is read through :class:`Values`, which checks its type and its
range (against :data:`LIMITS`, the one table of limits) before anything is sized from it;
:func:`check_tensors` then checks the configuration against what the file's own tensors imply (the
embedding gives the vocabulary and hidden sizes, the highest ``blk.N`` / ``layers.N`` the layer count) and
:func:`check_cache` the product that sizes the KV cache. Every error is a typed :class:`~oxide.errors.OxideError`
(a :class:`ModelFormatError`, or the error class the reader names, e.g. :class:`TokenizerError`) that names
the file and the key and says what to do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelFormatError, OxideError

if TYPE_CHECKING:
    from .config import ModelConfig


@dataclass(frozen=True)
class Limit:
    """An inclusive range ``[low, high]`` (``low`` excluded when ``open_low``), and why it is what it is."""

    low: float
    high: float
    reason: str
    open_low: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


# The limits, each well above every released model and well below what would exhaust memory or time.
LIMITS: dict[str, Limit] = {
    "layers": Limit(1, 1024, "the deepest released decoders have under 200 layers; the per-layer tables and "
                             "the name maps are built before any weight is read"),
    "heads": Limit(1, 1024, "released models have at most 128 attention heads"),
    "head_dim": Limit(1, 1024, "released head sizes are 64..576 (DeepSeek's latent key); the attention kernels "
                               "tile a head in one block"),
    "hidden_size": Limit(1, 65536, "the widest released models are ~16k wide (Llama 3 405B: 16,384)"),
    "intermediate_size": Limit(1, 1 << 20, "released MLPs are at most ~65k wide (Llama 3 405B: 53,248)"),
    "vocab_size": Limit(1, 1 << 22, "released vocabularies have at most ~262k tokens (Gemma 3: 262,144)"),
    "context": Limit(1, 1 << 24, "released models train on at most ~10M positions (Llama 4 Scout)"),
    "experts": Limit(0, 1024, "released mixtures have at most 384 experts (Kimi K2); 0 is a dense model"),
    "window": Limit(0, 1 << 24, "a sliding window is a context length; 0 is none"),
    "latent_rank": Limit(0, 1 << 16, "DeepSeek's latent ranks are 512 (keys/values) and 1,536 (queries)"),
    "count": Limit(0, 1024, "small counts (expert groups, dense leading layers, prediction layers, steps)"),
    "kv_cache_token": Limit(1, 1 << 24, "cache elements per token (layers x 2 x kv heads x head size): ~500k "
                                        "for Llama 3 405B; more means a header that lies"),
    "kv_cache": Limit(1, 1 << 36, "cache elements for the context allocated at load (2^36 f16 elements are "
                                  "128 GiB, the memory of the largest accelerators)"),
    "rms_norm_eps": Limit(0, 1.0, "released models use 1e-12..1e-5; a large epsilon flattens every norm",
                          open_low=True),
    "rope_base": Limit(0, 1e12, "released RoPE bases are 1e4..1e8; 0 or NaN gives NaN angles", open_low=True),
    "rope_factor": Limit(0, 1e4, "released RoPE stretch factors are at most ~64", open_low=True),
    "rope_scalar": Limit(0, 1e4, "RoPE attention factors, betas and frequency divisors are O(1..100)",
                         open_low=True),
    "softcap": Limit(0, 1e6, "Gemma's soft-caps are 30 and 50; 0 is off"),
    "scale": Limit(0, 1e6, "attention and routing scales are O(1..1000)", open_low=True),
}


def _limit(name: str | Limit | None) -> Limit | None:
    return LIMITS[name] if isinstance(name, str) else name


REQUIRED: Any = object()   # the default of a key that must be present


class Values:
    """Typed, range-checked reads of one source's key -> value map (GGUF metadata or a ``config.json``).

    ``source`` names the file in every error; ``gguf``: the values are GGUF metadata (else ``config.json``,
    where an integral float such as ``4096.0`` is accepted as an integer); ``error`` is the class raised (:class:`ModelFormatError` unless a
    reader says otherwise); ``prefix`` is prepended to keys in messages (a nested ``config.json`` object).
    A missing key returns ``default``, or raises when no default is given. GGUF numbers arrive as Python
    numbers, per-layer values as numpy arrays (accepted where ``per_layer`` and uniform), string arrays as
    :class:`~oxide.weights.string_array.StringArray`.
    """

    def __init__(self, values: Mapping[str, Any], source: str, *, gguf: bool,
                 error: type[OxideError] = ModelFormatError, prefix: str = "", advice: str = "") -> None:
        self.values, self.source, self.gguf, self.error, self.prefix = values, source, gguf, error, prefix
        self.advice = advice or ("the file is corrupt or was written by an incompatible converter: convert or "
                                 "download it again" if self.gguf else "fix the file or download the model again")

    @property
    def _at(self) -> str:
        """The message's start: the file (an empty ``source`` leaves it to a caller that knows the file)."""
        return f"{self.source}: " if self.source else ""

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> Any:
        """The raw value (None when absent; ``config.json``'s ``null`` reads as absent)."""
        return self.values.get(key)

    def fail(self, key: str, problem: str) -> OxideError:
        """The error for ``key``: file, key, value, what is wrong and what to do."""
        value = self.get(key)
        shown = f"{type(value).__name__} of {len(value)}" if _is_array(value) and len(value) > 8 else repr(value)
        where = "metadata key" if self.gguf else "key"
        return self.error(f"{self._at}{where} {self.prefix + key!r} = {shown[:120]} {problem}; {self.advice}")

    def _read(self, key: str, per_layer: bool) -> Any:
        """The value at ``key`` (None when absent); a per-layer array must hold one value, which it gives."""
        value = self.get(key)
        return self._uniform(key, value) if value is not None and per_layer else value

    def _missing(self, key: str, default: Any) -> Any:
        if default is REQUIRED:
            where = "metadata key" if self.gguf else "key"
            raise self.error(f"{self._at}required {where} {self.prefix + key!r} is missing; {self.advice}")
        return default

    def integer(self, key: str, limit: str | Limit | None = None, default: Any = REQUIRED, *,
                per_layer: bool = False) -> Any:
        """An integer (bools refused; a JSON float with an integral value accepted) inside ``limit``."""
        value = self._read(key, per_layer)
        if value is None:
            return self._missing(key, default)
        if isinstance(value, float) and not self.gguf and value.is_integer():
            value = int(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise self.fail(key, "must be an integer")
        return self._in(key, int(value), limit)

    def number(self, key: str, limit: str | Limit | None = None, default: Any = REQUIRED, *,
               per_layer: bool = False) -> Any:
        """A finite float (integers accepted) inside ``limit``."""
        value = self._read(key, per_layer)
        if value is None:
            return self._missing(key, default)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise self.fail(key, "must be a number")
        number = float(value)
        if not math.isfinite(number):
            raise self.fail(key, "must be a finite number")
        return self._in(key, number, limit)

    def flag(self, key: str, default: Any = REQUIRED) -> Any:
        """A boolean (GGUF ``bool``, JSON ``true``/``false``)."""
        value = self.get(key)
        if value is None:
            return self._missing(key, default)
        if not isinstance(value, (bool, np.bool_)):
            raise self.fail(key, "must be true or false")
        return bool(value)

    def string(self, key: str, default: Any = REQUIRED, *, choices: Iterable[str] | None = None) -> Any:
        """A string, one of ``choices`` when given."""
        value = self.get(key)
        if value is None:
            return self._missing(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        allowed = None if choices is None else tuple(choices)
        if allowed is not None and value not in allowed:
            raise self.fail(key, f"is not one of {', '.join(map(repr, allowed))}")
        return value

    def strings(self, key: str, default: Any = REQUIRED, *, non_empty: bool = False) -> Any:
        """An array of strings (a GGUF string array or a JSON list of strings)."""
        from .weights.string_array import StringArray

        value = self.get(key)
        if value is None:
            return self._missing(key, default)
        if not isinstance(value, (StringArray, list, tuple)) or \
                (not isinstance(value, StringArray) and not all(isinstance(s, str) for s in value)):
            raise self.fail(key, "must be an array of strings")
        if non_empty and not len(value):
            raise self.fail(key, "must not be empty")
        return value

    def numbers(self, key: str, limit: str | Limit | None = None, default: Any = REQUIRED, *,
                length: int | None = None, integers: bool = False) -> Any:
        """A 1-D numeric array (GGUF) or list (JSON) as a numpy array, every entry finite and inside ``limit``,
        of ``length`` entries when given."""
        value = self.get(key)
        if value is None:
            return self._missing(key, default)
        kinds = int if integers else (int, float)
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value):
            array = np.asarray(value, dtype=np.int64 if integers else np.float64)
        else:
            raise self.fail(key, f"must be an array of {'integers' if integers else 'numbers'}")
        if array.ndim != 1 or array.dtype.kind not in ("iu" if integers else "iuf"):
            raise self.fail(key, f"must be a 1-D array of {'integers' if integers else 'numbers'}")
        if length is not None and len(array) != length:
            raise self.fail(key, f"must have {length} entries, not {len(array)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise self.fail(key, "must hold finite numbers only")
        bound = _limit(limit)
        if bound is not None and len(array) and not (bound.admits(array.min()) and bound.admits(array.max())):
            raise self.fail(key, f"has entries outside {bound} ({bound.reason})")
        return array

    def mapping(self, key: str) -> Values:
        """A nested JSON object (absent: an empty one) as a :class:`Values` over it."""
        value = self.get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.fail(key, "must be an object")
        return Values(value, self.source, gguf=self.gguf, error=self.error, prefix=f"{self.prefix}{key}.",
                      advice=self.advice)

    def _uniform(self, key: str, value: Any) -> Any:
        """Per-layer arrays are accepted when every layer has the same value (varying ones are not supported)."""
        if not isinstance(value, np.ndarray):
            return value
        if value.ndim != 1 or value.size == 0:
            raise self.fail(key, "must be a number or a non-empty per-layer array")
        if not (value == value[0]).all():
            raise self.error(f"{self._at}metadata key {self.prefix + key!r} varies per layer "
                             f"({value.tolist()[:16]}); per-layer values are not supported yet")
        return value[0].item()

    def _in(self, key: str, value: Any, limit: str | Limit | None) -> Any:
        bound = _limit(limit)
        if bound is not None and not bound.admits(value):
            raise self.fail(key, f"is outside {bound} ({bound.reason})")
        return value


def _is_array(value: Any) -> bool:
    from .weights.string_array import StringArray

    return isinstance(value, (list, tuple, np.ndarray, StringArray))


# --- against the tensors and the allocation ------------------------------------------------------------------

_LAYER_INDEX = re.compile(r"^(?:blk|(?:model\.)?(?:language_model\.)?(?:model\.)?layers)\.(\d+)\.")


def layer_indices(names: Iterable[str], normalise: Callable[[str], str] = str) -> dict[int, str]:
    """Layer number -> a tensor of it, from the names (``blk.N.`` in GGUF, ``model.layers.N.`` in checkpoints,
    matched after ``normalise``)."""
    found: dict[int, str] = {}
    for name in names:
        m = _LAYER_INDEX.match(normalise(name))
        if m:
            found.setdefault(int(m.group(1)), name)
    return found


def check_tensors(config: ModelConfig, *, source: str, embedding: Sequence[int] | None, embedding_name: str,
                  layers_found: Mapping[int, str], extra_layers: int = 0, keys: Mapping[str, str] | None = None) -> None:
    """The configuration agrees with the file's tensors: the embedding is (vocab_size, hidden_size) and the
    layers are numbered 0 .. num_hidden_layers - 1 (plus ``extra_layers``, multi-token-prediction layers a
    checkpoint may keep). ``keys``: field -> the file's own key, for the message."""
    key = (keys or {}).get
    if embedding is None or len(embedding) != 2:
        raise ModelFormatError(f"{source}: tensor {embedding_name!r} is missing or not 2-D "
                               f"({None if embedding is None else tuple(embedding)}); the file is not a language "
                               f"model, or it is corrupt")
    vocab, hidden = embedding
    if hidden != config.hidden_size:
        raise ModelFormatError(f"{source}: {key('hidden_size', 'hidden_size')} = {config.hidden_size} but "
                               f"{embedding_name} is {tuple(embedding)} (hidden size {hidden}); the metadata and the "
                               f"tensors disagree: the file is corrupt")
    if vocab != config.vocab_size:
        raise ModelFormatError(f"{source}: {key('vocab_size', 'vocab_size')} = {config.vocab_size} but "
                               f"{embedding_name} has {vocab} rows; the metadata and the tensors disagree: the file "
                               f"is corrupt")
    layers = config.num_hidden_layers
    beyond = sorted(i for i in layers_found if i >= layers + extra_layers)
    if beyond:
        raise ModelFormatError(f"{source}: tensor {layers_found[beyond[0]]!r} is for layer {beyond[0]}, but "
                               f"{key('num_hidden_layers', 'num_hidden_layers')} = {layers}; the metadata and the "
                               f"tensors disagree: the file is corrupt")
    missing = sorted(set(range(layers)) - set(layers_found))
    if missing:
        raise ModelFormatError(f"{source}: {key('num_hidden_layers', 'num_hidden_layers')} = {layers} but the file "
                               f"has no tensors for layer {missing[0]}; the file is truncated or corrupt")


def check_vocabulary(tokens: int, config: ModelConfig, source: str) -> None:
    """A GGUF vocabulary is as large as the embedding, as llama.cpp requires (it sizes ``token_embd`` by the token
    count): more tokens than rows would give ids the model has no row for, fewer would let the model generate
    ids the tokenizer cannot decode."""
    if tokens != config.vocab_size:
        raise ModelFormatError(f"{source}: metadata key 'tokenizer.ggml.tokens' has {tokens} tokens but the "
                               f"embedding has {config.vocab_size} rows; the vocabulary and the tensors disagree: "
                               f"the file is corrupt")


def kv_elements_per_token(config: ModelConfig) -> int:
    """Cache elements one token needs: per layer, keys and values of every key/value head (latent attention
    caches one latent and one rotated key per token instead)."""
    if config.latent_attention:
        return config.num_hidden_layers * (config.kv_lora_rank + config.head_dim)
    value_dim = config.v_head_dim or config.head_dim
    return config.num_hidden_layers * config.num_key_value_heads * (config.head_dim + value_dim)


def check_cache(config: ModelConfig, n_ctx: int, source: str) -> None:
    """The KV cache of ``n_ctx`` positions stays inside :data:`LIMITS` (``kv_cache_token``, ``kv_cache``)."""
    per_token = kv_elements_per_token(config)
    if not LIMITS["kv_cache_token"].admits(per_token):
        raise ModelFormatError(f"{source}: the KV cache needs {per_token:,} elements per token (layers x kv heads "
                               f"x head size), outside {LIMITS['kv_cache_token']} "
                               f"({LIMITS['kv_cache_token'].reason}); the file is corrupt")
    if not LIMITS["kv_cache"].admits(per_token * n_ctx):
        raise ModelFormatError(f"{source}: a KV cache of n_ctx={n_ctx:,} positions needs {per_token * n_ctx:,} "
                               f"elements, over {LIMITS['kv_cache'].high:,.0f} ({LIMITS['kv_cache'].reason}); "
                               f"load with a smaller n_ctx")
