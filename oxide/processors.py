"""Next-token sampling: validated options, composable logit processors and the sampler.

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

from oxide import ops
from oxide.errors import InvalidOptionError, OxideError
from oxide.log import get_logger

log = get_logger("sampling")

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


def _window_counts(history: History, last_n: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Occurrences of each token id in the last ``last_n`` ids of ``history`` (all if -1).

    Ids outside ``[0, vocab_size)`` are not counted (llama.cpp only looks up ids that are
    candidates). Returns an int64 tensor of shape ``(vocab_size,)``.
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
    counts = torch.zeros(vocab_size + 1, dtype=torch.long, device=device)  # (V+1,)
    counts.scatter_add_(0, ids, torch.ones_like(ids))
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
        counts = _window_counts(history, self.last_n, logits.shape[-1], logits.device)  # (V,)
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
        kth = torch.topk(logits, self.k).values[-1]  # () value of the k-th largest logit
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
        sorted_logits, order = torch.sort(logits[alive], descending=True, stable=True)  # (n,), (n,)
        cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)  # (n,)
        mass_before = F.pad(cum[:-1], (1, 0))  # (n,) S_{j-1}, with S_0 = 0
        dropped = alive[order[mass_before >= self.p]]  # ids removed
        return logits.index_fill(0, dropped, _NEG_INF)  # (V,)


@dataclass(frozen=True)
class MinP:
    """Keep tokens whose probability is at least ``min_p`` times the largest probability.

    ``p_i >= min_p * p_max`` is ``exp(l_i - l_max) >= min_p``, so the test is done on logits
    as in llama.cpp: keep ``l_i >= l_max + log(min_p)``. The top token always stays;
    ``min_p <= 0`` changes nothing.
    """

    min_p: float

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        if self.min_p <= 0.0:
            return logits
        threshold = logits.max() + math.log(self.min_p)  # ()
        return logits.masked_fill(logits < threshold, _NEG_INF)  # (V,)


@dataclass(frozen=True)
class Temperature:
    """Divide logits by the temperature ``T``; ``T == 0`` keeps only the argmax.

    For ``T > 0``: ``l_i <- (l_i - l_max) / T``. Subtracting ``l_max`` leaves
    ``softmax(l / T)`` unchanged and keeps tiny temperatures from overflowing to ``+inf``.
    For ``T == 0`` every token but the first maximum (lowest id among ties) becomes ``-inf``,
    as llama.cpp does for ``temp <= 0``.
    """

    temperature: float

    def __call__(self, logits: torch.Tensor, history: History) -> torch.Tensor:
        if self.temperature > 0.0:
            return (logits - logits.max()) / self.temperature  # (V,)
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


# --------------------------------------------------------------------------- sampler


class Sampler:
    """Choose next tokens according to :class:`SamplingOptions`.

    ``sample(logits, history)`` runs the :func:`build_processors` chain, then returns the
    argmax (temperature 0; ties go to the lowest id) or a draw from ``softmax`` of the
    processed logits (inverse CDF over the tokens still in play). Draws use this sampler's own
    ``torch.Generator``, created on the device of the first logits it sees and seeded with
    ``options.seed`` (a fresh random seed if None), so equal seeds give equal token sequences
    on the same device and the global RNG is never touched.
    """

    def __init__(self, options: SamplingOptions | None = None) -> None:
        self.options = options if options is not None else SamplingOptions()
        self.processors = build_processors(self.options)
        # where the chain's top-k stage is (None: it has none): the stages after it see only its tokens
        self._top_k_at = next((i for i, p in enumerate(self.processors) if isinstance(p, TopK)), None)
        self._generator: torch.Generator | None = None
        log.debug("sampler chain: %s", self.processors)

    def process(self, logits: torch.Tensor, history: History = ()) -> torch.Tensor:
        """Apply the processor chain to 1-D ``logits`` (converted to float32)."""
        return self._apply(self.processors, logits, history)

    def sample(self, logits: torch.Tensor, history: History = ()) -> int:
        """Return the next token id for ``logits`` (shape ``(V,)``, any device)."""
        if self.options.temperature == 0.0:
            # The chain ends with Temperature(0), which keeps only the first maximum of what it is given:
            # the argmax before it is the same token, without a pass that masks the whole vocabulary.
            return ops.argmax(self._apply(self.processors[:-1], logits, history))
        if torch.isnan(logits).any():
            raise OxideError("sampling: the logits contain NaN; the model's forward pass failed")
        processed, ids = self._process_kept(logits, history)  # (n,) logits of the tokens ids (n,) (None: all)
        # A draw by inverse CDF over the tokens still in play: torch.multinomial over the whole of a
        # 262,144-token vocabulary took ~6 ms on a CPU; the same distribution.
        alive = torch.nonzero(processed > _NEG_INF).squeeze(1)  # (m,) positions, ascending
        if alive.numel() == 0:
            raise OxideError("sampling: no token has a finite logit (the model gave -inf everywhere)")
        cdf = torch.cumsum(torch.softmax(processed[alive], dim=-1), dim=0)  # (m,)
        generator = self._generator_for(cdf.device)
        u = torch.rand((), generator=generator, device=generator.device).to(cdf.device)
        pick = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_(max=alive.numel() - 1)  # first cdf > u
        position = alive[pick]
        return int(position if ids is None else ids[position])

    def _process_kept(self, logits: torch.Tensor, history: History) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The processed logits of the tokens top-k keeps, and their ids (None: every token, in id order).

        The stages after top-k (top-p, min-p, temperature) see only the ``k`` kept tokens, listed by
        ascending id, which is what they see of the masked vocabulary: the same result, without passes
        over the whole vocabulary.
        """
        cut = self._top_k_at
        if cut is None:
            return self.process(logits, history), None
        before = self._apply(self.processors[:cut], logits, history)  # (V,)
        ids = self.processors[cut].kept_ids(before)
        rest = self.processors[cut + 1:]
        return self._apply(rest, before if ids is None else before[ids], history), ids

    @staticmethod
    def _apply(processors: Sequence[LogitProcessor], logits: torch.Tensor, history: History) -> torch.Tensor:
        if logits.dim() != 1:
            raise ValueError(
                f"Sampler expects 1-D logits of shape (vocab_size,), got shape {tuple(logits.shape)}; "
                f"select the last position first (logits[-1])."
            )
        out = logits.float()  # (V,)
        for processor in processors:
            out = processor(out, history)  # (V,)
        return out

    def _generator_for(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            generator = torch.Generator(device=device)
            if self.options.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.options.seed)
            self._generator = generator
        return self._generator
