"""Sampling options and the logit processors of llama.cpp's chain: the specification of the ``sample`` op.

The chain follows llama.cpp's default sampler chain (``src/llama-sampling.cpp``,
``common/sampling.cpp``): penalties, then top-k, top-p and min-p truncation, then
temperature, then a draw from ``softmax(logits)``. Every processor is a small callable
``processor(logits, history) -> logits`` over a 1-D float32 tensor of vocabulary logits;
tokens a processor removes come back as ``-inf``, so later stages (and the final softmax)
see only what is left.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from oxide.errors import InvalidOptionError

History = Sequence[int] | torch.Tensor
"""Token ids seen so far (prompt and generated), oldest first: a list of ints or a 1-D tensor."""

_NEG_INF = float("-inf")
_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts seeds up to 2**64 - 1


# --------------------------------------------------------------------------- options


def _check_real(name: str, value: object, ok: Callable[[float], bool], rule: str) -> float:
    """Return ``value`` as a float if it is a real number (not a bool) satisfying ``ok``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidOptionError(
            f"SamplingOptions.{name}={value!r} has type {type(value).__name__}; expected a "
            f"number ({rule})."
        )
    as_float = float(value)
    if not (math.isfinite(as_float) and ok(as_float)):
        raise InvalidOptionError(f"SamplingOptions.{name}={value!r} is out of range: expected {rule}.")
    return as_float


def _check_int(name: str, value: object, ok: Callable[[int], bool], rule: str) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) satisfying ``ok``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidOptionError(
            f"SamplingOptions.{name}={value!r} has type {type(value).__name__}; expected an "
            f"integer ({rule})."
        )
    as_int = int(value)
    if not ok(as_int):
        raise InvalidOptionError(f"SamplingOptions.{name}={value!r} is out of range: expected {rule}.")
    return as_int


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is chosen from the model's logits.

    Defaults are those of llama.cpp's ``llama-cli``. A disabling value turns a stage off:
    ``temperature=0`` is greedy decoding (argmax after penalties), ``top_k=0``, ``top_p=1``,
    ``min_p=0``, ``repeat_penalty=1``, ``presence_penalty=0``, ``frequency_penalty=0`` and
    ``repeat_last_n=0`` (no penalties at all). ``repeat_last_n=-1`` penalises over the whole
    history. ``seed=None`` draws a fresh random seed; an int makes runs reproducible.

    Values are validated on construction; a bad one raises
    :class:`~oxide.errors.InvalidOptionError` (a ``ValueError``) naming the field, the value
    and the valid range. Numbers are stored as ``float``/``int``.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        checked: dict[str, object] = {
            "temperature": _check_real(
                "temperature", self.temperature, lambda v: v >= 0,
                "a finite number >= 0 (0 means greedy decoding)",
            ),
            "top_k": _check_int(
                "top_k", self.top_k, lambda v: v >= 0, "an integer >= 0 (0 disables top-k)"
            ),
            "top_p": _check_real(
                "top_p", self.top_p, lambda v: 0 < v <= 1, "0 < top_p <= 1 (1 disables top-p)"
            ),
            "min_p": _check_real(
                "min_p", self.min_p, lambda v: 0 <= v <= 1, "0 <= min_p <= 1 (0 disables min-p)"
            ),
            "repeat_penalty": _check_real(
                "repeat_penalty", self.repeat_penalty, lambda v: v > 0,
                "a finite number > 0 (1 disables the repeat penalty)",
            ),
            "repeat_last_n": _check_int(
                "repeat_last_n", self.repeat_last_n, lambda v: v >= -1,
                "an integer >= -1 (0 disables penalties, -1 uses the whole history)",
            ),
            "presence_penalty": _check_real(
                "presence_penalty", self.presence_penalty, lambda v: True, "a finite number (0 disables it)"
            ),
            "frequency_penalty": _check_real(
                "frequency_penalty", self.frequency_penalty, lambda v: True, "a finite number (0 disables it)"
            ),
        }
        if self.seed is not None:
            checked["seed"] = _check_int(
                "seed", self.seed, lambda v: 0 <= v <= _MAX_SEED,
                f"None or an integer in [0, {_MAX_SEED}]",
            )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def greedy(cls) -> SamplingOptions:
        """Plain greedy decoding: argmax of the raw logits, no truncation, no penalties."""
        return cls(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


# --------------------------------------------------------------------------- processors


class LogitProcessor(Protocol):
    """``(logits (V,) float32, history) -> logits (V,)``; removed tokens are ``-inf``."""

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor: ...


def window_counts(history: History, last_n: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Occurrences of each token id in the last ``last_n`` ids of ``history`` (all if -1).

    Ids outside ``[0, vocab_size)`` are not counted (llama.cpp only looks up ids that are
    candidates). Returns an int32 tensor of shape ``(vocab_size,)`` on ``device``: the ``counts``
    of the ``sample`` op.
    """
    if isinstance(history, torch.Tensor):
        flat = history.reshape(-1)  # (N,)
        window = flat[-last_n:] if last_n > 0 else flat  # (n,)
        ids = window.to(device=device, dtype=torch.long)  # (n,)
    else:
        window = history[-last_n:] if last_n > 0 else history
        ids = torch.as_tensor(list(window), dtype=torch.long, device=device)  # (n,)
    valid = (ids >= 0) & (ids < vocab_size)  # (n,)
    ids = torch.where(valid, ids, vocab_size)  # (n,) out-of-range ids go to a spare bin
    counts = torch.zeros(vocab_size + 1, dtype=torch.int32, device=device)  # (V+1,)
    counts.scatter_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts[:vocab_size]  # (V,)


@dataclass(frozen=True)
class Penalties:
    """Repeat, frequency and presence penalties over the last ``last_n`` history tokens.

    With ``c_i`` the number of times token ``i`` occurs in the window (the last ``last_n``
    ids of the history; the whole history if ``last_n == -1``; no change if ``last_n == 0``),
    each token with ``c_i > 0`` is penalised once, as in llama.cpp::

        l_i <- l_i * repeat_penalty   if l_i <= 0
        l_i <- l_i / repeat_penalty   if l_i >  0
        l_i <- l_i - (c_i * frequency_penalty + presence_penalty)

    Tokens absent from the window are unchanged.
    """

    repeat_penalty: float = 1.0
    last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        if self.last_n == 0:
            return logits
        return self.apply(logits, window_counts(history, self.last_n, logits.shape[-1], logits.device))

    def apply(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The penalties given the window's ``counts`` (V,) of each id (see :func:`window_counts`)."""
        seen = counts > 0  # (V,)
        rp = self.repeat_penalty
        scaled = torch.where(logits <= 0, logits * rp, logits / rp)  # (V,)
        subtract = counts.to(logits.dtype) * self.frequency_penalty + self.presence_penalty  # (V,)
        penalised = scaled - subtract  # (V,)
        return torch.where(seen, penalised, logits)  # (V,)


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` highest logits; ties at the cut are kept lowest token id first.

    Exactly ``min(k, V)`` tokens stay (llama.cpp keeps exactly ``k`` too); ``k >= V`` or
    ``k <= 0`` changes nothing.
    """

    k: int

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        kept = self.kept_ids(logits)
        if kept is None:
            return logits
        return torch.full_like(logits, _NEG_INF).index_copy_(0, kept, logits[kept])  # (V,)

    def kept_ids(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The ids of the ``k`` tokens kept, ascending (None: all are kept)."""
        vocab_size = logits.shape[-1]
        if self.k <= 0 or self.k >= vocab_size:
            return None
        top = torch.topk(logits, self.k + 1)  # one more than kept: is the k-th value tied below the cut?
        kth = top.values[self.k - 1]  # () value of the k-th largest logit
        if top.values[self.k] < kth:  # no tie at the cut (the usual case): the k largest, without a full pass
            return top.indices[:self.k].sort().values
        ids = torch.nonzero(logits >= kth).squeeze(1)  # (>= k,) ascending
        if ids.numel() > self.k:  # ties at the cut: keep the lowest ids among them
            at_cut = logits[ids] == kth
            room = self.k - int((~at_cut).sum())
            ids = ids[~at_cut | (torch.cumsum(at_cut, 0) <= room)]
        return ids


@dataclass(frozen=True)
class TopP:
    """Nucleus sampling: keep the smallest set of most probable tokens with mass >= ``p``.

    With tokens sorted by descending logit (ties: lowest id first), ``q = softmax(logits)``
    in that order and ``S_j = q_1 + ... + q_j``, the ``m`` first tokens are kept where ``m``
    is the smallest index with ``S_m >= p`` (all tokens if rounding keeps every ``S_j < p``).
    Equivalently token ``j`` stays iff ``S_{j-1} < p``, so the most probable token always
    stays. ``p >= 1`` changes nothing.
    """

    p: float

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        if self.p >= 1.0:
            return logits
        # Only tokens still in play are sorted (after top-k, a few dozen rather than the vocabulary);
        # they are listed in id order, so the stable sort still breaks ties by lowest id.
        alive = torch.nonzero(logits > _NEG_INF).squeeze(1)  # (n,)
        if alive.numel() == 0:
            return logits
        return logits.index_fill(0, alive[self.removed(logits[alive])], _NEG_INF)  # (V,)

    def removed(self, logits: torch.Tensor) -> torch.Tensor:
        """Which tokens of each row of ``logits`` (..., n), every one of them in play (no ``-inf``), the
        nucleus removes, as a bool mask of the same shape, for ``p < 1``. Each row gives what it gives alone."""
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (..., n), (..., n)
        cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)  # (..., n)
        mass_before = F.pad(cum[..., :-1], (1, 0))  # (..., n) S_{j-1}, with S_0 = 0
        return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, mass_before >= self.p)  # (..., n)


@dataclass(frozen=True)
class MinP:
    """Keep tokens whose probability is at least ``min_p`` times the largest probability.

    ``p_i >= min_p * p_max`` is ``exp(l_i - l_max) >= min_p``, so the test is done on logits
    as in llama.cpp: keep ``l_i >= l_max + log(min_p)``. The top token always stays;
    ``min_p <= 0`` changes nothing. Logits (..., V) are processed row by row (``l_max`` of each row).
    """

    min_p: float

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        if self.min_p <= 0.0:
            return logits
        threshold = logits.amax(dim=-1, keepdim=True) + math.log(self.min_p)  # (..., 1)
        return logits.masked_fill(logits < threshold, _NEG_INF)  # (..., V)


@dataclass(frozen=True)
class Temperature:
    """Divide logits by the temperature ``T``; ``T == 0`` keeps only the argmax.

    For ``T > 0``: ``l_i <- (l_i - l_max) / T``. Subtracting ``l_max`` leaves
    ``softmax(l / T)`` unchanged and keeps tiny temperatures from overflowing to ``+inf``;
    logits (..., V) are processed row by row (``l_max`` of each row).
    For ``T == 0`` every token but the first maximum (lowest id among ties) becomes ``-inf``,
    as llama.cpp does for ``temp <= 0`` (logits (V,) only).
    """

    temperature: float

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        if self.temperature > 0.0:
            return (logits - logits.amax(dim=-1, keepdim=True)) / self.temperature  # (..., V)
        keep = torch.zeros_like(logits, dtype=torch.bool)  # (V,)
        keep[torch.argmax(logits)] = True
        return logits.masked_fill(~keep, _NEG_INF)  # (V,)


def build_processors(options: SamplingOptions) -> list[LogitProcessor]:
    """The processor chain for ``options``, in llama.cpp's order.

    Penalties -> top-k -> top-p -> min-p -> temperature; disabled stages are left out.
    With ``temperature == 0`` the truncation stages are left out as well: none of them can
    remove the first maximum, so the greedy choice is the same without them.
    """
    chain: list[LogitProcessor] = []
    penalties_on = (
        options.repeat_penalty != 1.0
        or options.frequency_penalty != 0.0
        or options.presence_penalty != 0.0
    )
    if options.repeat_last_n != 0 and penalties_on:
        chain.append(
            Penalties(
                repeat_penalty=options.repeat_penalty,
                last_n=options.repeat_last_n,
                frequency_penalty=options.frequency_penalty,
                presence_penalty=options.presence_penalty,
            )
        )
    if options.temperature > 0.0:
        if options.top_k > 0:
            chain.append(TopK(options.top_k))
        if options.top_p < 1.0:
            chain.append(TopP(options.top_p))
        if options.min_p > 0.0:
            chain.append(MinP(options.min_p))
    chain.append(Temperature(options.temperature))
    return chain
