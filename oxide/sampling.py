"""Next-token sampling: the :class:`Sampler`, over the ``sample`` op of :mod:`oxide.ops`.

The options and the processors of llama.cpp's chain (penalties, top-k, top-p, min-p,
temperature), the specification the op follows, live in :mod:`oxide.processors`; they are
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from oxide import ops
from oxide.errors import InvalidOptionError, NumericalError
from oxide.log import get_logger
from oxide.ops import reference
from oxide.ops.cpu import layers as cpu_layers
from oxide.ops.reference import SAMPLE_NAN, SAMPLE_NO_FINITE, sample_stages
from oxide.processors import (
    History,
    LogitProcessor,
    MinP,
    Penalties,
    SamplingOptions,
    Temperature,
    TopK,
    TopP,
    build_processors,
    window_counts,
)

__all__ = [
    "History", "LogitProcessor", "MinP", "Penalties", "Sampler", "SamplingOptions", "Temperature", "TopK", "TopP",
    "build_processors", "sample_rows", "window_counts",
]

log = get_logger("sampling")

_SAMPLE_INF = -3   # not an op code: a +inf logit, found by the sampler's own check
_INVALID = {
    SAMPLE_NAN: "the logits contain NaN",
    SAMPLE_NO_FINITE: "no token has a finite logit (the model gave -inf everywhere)",
    _SAMPLE_INF: "the logits contain +inf",
}
_NEG_INF = float("-inf")


def _invalid(token: float, peak: float) -> NumericalError | None:
    """The error of a draw that gave ``token`` (an id or an op's error code) from logits whose maximum is ``peak``;
    None when the id stands."""
    if math.isnan(peak):
        return NumericalError(_INVALID[SAMPLE_NAN])
    if not math.isfinite(peak):
        return NumericalError(_INVALID[SAMPLE_NO_FINITE] if peak < 0 else _INVALID[_SAMPLE_INF])
    if token < 0:
        return NumericalError(_INVALID[int(token)])
    return None


class Sampler:
    """Choose next tokens according to :class:`SamplingOptions`.

    ``sample(logits, history)`` returns what :func:`oxide.ops.sample` picks: the argmax after penalties
    (temperature 0; ties go to the lowest id) or a draw from ``softmax`` of the processed logits (inverse
    CDF over the tokens still in play). The penalty window's counts are built on the logits' device, and
    the uniform of each draw comes from this sampler's own ``torch.Generator``, created on the device of
    the first logits it sees and seeded with ``options.seed`` (a fresh random seed if None), so equal
    seeds give equal token sequences on the same device and the global RNG is never touched. The chosen
    id is the only value that crosses from the device to the host.
    """

    def __init__(self, options: SamplingOptions | None = None) -> None:
        self.options = options if options is not None else SamplingOptions()
        chain = build_processors(self.options)
        self._penalties = chain[0] if isinstance(chain[0], Penalties) else None
        self._generator: torch.Generator | None = None
        log.debug("sampler chain: %s", chain)

    def process(self, logits: torch.Tensor, history: History = ()) -> torch.Tensor:
        """The processed logits (V,) float32 a draw sees (:func:`oxide.ops.sample_filter`); removed tokens are
        ``-inf``."""
        logits = self._checked(logits)
        return ops.sample_filter(logits, self._counts(logits, history), self.options)

    def sample(self, logits: torch.Tensor, history: History = ()) -> int:
        """Return the next token id for ``logits`` (shape ``(V,)``, any device).

        Logits whose maximum is not finite (a NaN, a ``+inf``, or ``-inf`` everywhere) allow no choice, greedy or
        sampled: :class:`NumericalError`. The maximum crosses to the host with the id, in one transfer.
        """
        logits = self._checked(logits)
        u = self._draw(logits.device)
        # ids are below 2^22 (validation.LIMITS), exact in float32; max() propagates NaN
        token, peak = torch.stack([self._chosen(logits, history, u).to(torch.float32), logits.max()]).tolist()
        error = _invalid(token, peak)
        if error is not None:
            raise error
        return int(token)

    def _draw(self, device: torch.device) -> torch.Tensor:
        """The uniform of one draw, a 0-d float32 in [0, 1) on ``device``, from this sampler's generator."""
        return torch.rand((), generator=self._generator_for(device), device=device)

    def _chosen(self, logits: torch.Tensor, history: History, u: torch.Tensor) -> torch.Tensor:
        """:func:`oxide.ops.sample` of ``logits`` (V,) float32 with the draw ``u``: a 0-d int64, or an error code."""
        return ops.sample(logits, self._counts(logits, history), u, self.options)

    def _draws_from_top_k(self, vocab_size: int) -> bool:
        """Whether every draw goes through top-k with no penalties: what :func:`sample_rows` samples together."""
        options = self.options
        return self._penalties is None and options.temperature > 0.0 and 0 < options.top_k < vocab_size

    def _counts(self, logits: torch.Tensor, history: History) -> torch.Tensor | None:
        """The occurrences of each id in the penalty window (V,) int32, None when the chain has no penalties."""
        if self._penalties is None:
            return None
        return window_counts(history, self._penalties.last_n, logits.shape[-1], logits.device)

    @staticmethod
    def _checked(logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 1:
            raise ValueError(
                f"Sampler expects 1-D logits of shape (vocab_size,), got shape {tuple(logits.shape)}; "
                f"select the last position first (logits[-1])."
            )
        return logits.float()  # (V,)

    def _generator_for(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            generator = torch.Generator(device=device)
            if self.options.seed is None:
                generator.seed()
            else:
                generator.manual_seed(self.options.seed)
            self._generator = generator
        return self._generator


def sample_rows(samplers: Sequence[Sampler], logits: torch.Tensor, histories: Sequence[History]
                ) -> list[int | NumericalError]:
    """``samplers[i].sample(logits[i], histories[i])`` for each row ``i`` of ``logits`` (B, V): the token, or the
    :class:`NumericalError` that call raises (the other rows still get their tokens). Each sampler draws one
    uniform per row from its generator, in row order, as ``sample`` does, whether the row fails or not.

    One pass over the vocabulary serves every row: the maxima of its chunks of ``_CHUNK`` logits, and so of the row
    (the errors' test). On the CPU, where :func:`oxide.ops.sample` is the reference, the rows whose samplers draw
    from top-k (temperature > 0, ``0 < top_k < V``, no penalties) look for their ``k + 1`` largest logits in the
    chunks of the largest maxima only; their ``k`` candidates go through top-p, min-p and temperature as one (G, k)
    tensor per set of equal options, and draw together per count of tokens left in play. Every other row (greedy,
    penalties, no top-k, a tie between the ``k``-th and ``(k+1)``-th largest logits, a maximum that is not finite,
    another device) is sampled alone by :func:`oxide.ops.sample`. Either way a row gets exactly the token
    ``sample`` gives it.
    """
    rows = logits.shape[0] if logits.dim() == 2 else -1
    if rows < 0 or len(samplers) != rows or len(histories) != rows:
        raise InvalidOptionError(f"sample_rows takes logits (B, V) and one sampler and one history per row; got "
                                 f"logits of shape {tuple(logits.shape)}, {len(samplers)} samplers and "
                                 f"{len(histories)} histories")
    logits = logits.float()  # (B, V)
    us = [sampler._draw(logits.device) for sampler in samplers]  # B of ()
    chunk_max, peaks = _chunk_maxima(logits)  # (B, V // _CHUNK), (B,)
    tokens: dict[int, float] = {}
    if logits.is_cpu and ops.resolve("sample", "cpu", torch.float32) in (reference.sample, cpu_layers.sample):
        top_k = [i for i, sampler in enumerate(samplers) if sampler._draws_from_top_k(logits.shape[1])]
        if top_k:
            tokens = _sample_top_k_rows(logits, chunk_max, peaks, top_k, us, [samplers[i].options for i in top_k])
    alone = [i for i in range(rows) if i not in tokens]
    chosen = [samplers[i]._chosen(logits[i], histories[i], us[i]).to(torch.float32).view(1) for i in alone]
    # one transfer: the maxima, then the ids (below 2^22, exact in float32) or error codes of the rows alone
    host = torch.cat([peaks, *chosen]).tolist()
    tokens.update(zip(alone, host[rows:]))
    results: list[int | NumericalError] = []
    for i, peak in enumerate(host[:rows]):
        error = _invalid(tokens[i], peak)
        results.append(int(tokens[i]) if error is None else error)
    return results


_CHUNK = 64
"""Logits per chunk in :func:`sample_rows`: about ``sqrt(V / (k + 1))`` for V = 262,144 and k = 40, which balances
the chunk maxima that top-k sorts through against the logits of the chunks it keeps."""


def _chunk_maxima(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The maxima of each row of ``logits`` (B, V) over its whole chunks of ``_CHUNK`` logits, (B, V // _CHUNK),
    and over the whole row, (B,) (NaN if it holds one): one pass."""
    whole = logits.shape[1] // _CHUNK
    chunk_max = logits[:, :whole * _CHUNK].unflatten(1, (whole, _CHUNK)).amax(dim=-1)  # (B, whole), of a view
    rest = logits[:, whole * _CHUNK:]  # (B, V mod _CHUNK)
    parts = [chunk_max, rest.amax(dim=-1, keepdim=True)] if rest.shape[1] else [chunk_max]
    return chunk_max, torch.cat(parts, dim=1).amax(dim=-1)


def _largest(logits: torch.Tensor, index: torch.Tensor, chunk_max: torch.Tensor, count: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest logits of rows ``index`` (G,) of ``logits`` (B, V), descending, (G, count), exactly the
    values ``topk`` gives, and ids holding them (G, count), ties at a value in any order.

    With ``chunk_max`` (G, C) their chunk maxima, only the ``count`` chunks of the largest maxima and the logits
    past the last whole chunk are searched: with ``t`` the ``count``-th largest chunk maximum, every logit above
    ``t`` lies there and they hold ``count`` logits ``>= t``, so their ``count`` largest values are the row's."""
    whole = chunk_max.shape[1]
    if whole < count:
        return torch.topk(logits.index_select(0, index), count, dim=-1)
    chunks = torch.topk(chunk_max, count, dim=-1).indices  # (G, count)
    ids = (chunks.unsqueeze(2) * _CHUNK + torch.arange(_CHUNK)).flatten(1)  # (G, count * _CHUNK)
    rest = torch.arange(whole * _CHUNK, logits.shape[1]).expand(len(index), -1)  # (G, V mod _CHUNK)
    ids = torch.cat([ids, rest], dim=1)  # (G, n)
    top = torch.topk(logits[index.unsqueeze(1), ids], count, dim=-1)  # (G, count)
    return top.values, ids.gather(1, top.indices)


def _sample_top_k_rows(logits: torch.Tensor, chunk_max: torch.Tensor, peaks: torch.Tensor, rows: list[int],
                       us: list[torch.Tensor], options: list[SamplingOptions]) -> dict[int, float]:
    """The tokens :func:`oxide.ops.reference.sample` gives ``rows`` of ``logits`` (B, V) float32 (with their chunk
    maxima (B, C) and maxima (B,)), the uniforms ``us`` of all B rows and each row's ``options`` (temperature > 0,
    ``0 < top_k < V``, no penalties), by row index: for each row whose maximum is finite and whose ``k``-th largest
    logit is above the ``(k+1)``-th. The others are left out."""
    index = torch.tensor(rows)  # (G,)
    ks = torch.tensor([o.top_k for o in options]).unsqueeze(1)  # (G, 1)
    values, ids = _largest(logits, index, chunk_max[index], int(ks.max()) + 1)  # (G, K + 1) each, descending
    kth, after = values.gather(1, ks - 1).squeeze(1), values.gather(1, ks).squeeze(1)  # (G,), (G,)
    # No tie at the cut: exactly k logits are >= the k-th (so finite, with a finite maximum), listed first whatever
    # the order of ties below.
    served = (after < kth) & peaks[index].isfinite()  # (G,)
    groups: dict[tuple, list[int]] = {}
    for g, ok in enumerate(served.tolist()):
        if ok:
            groups.setdefault(sample_stages(options[g])[1:], []).append(g)
    tokens: dict[int, float] = {}
    for (stage_k, rest), members in groups.items():
        m = torch.tensor(members)  # (n,)
        kept = ids[m, :stage_k.k].sort(dim=-1).values  # (n, k) ascending, as TopK.kept_ids gives them
        processed = logits[index[m].unsqueeze(1), kept]  # (n, k), every one finite
        for stage in rest:  # top-p (first, while all k are in play), min-p, temperature: row by row
            processed = (processed.masked_fill(stage.removed(processed), _NEG_INF) if isinstance(stage, TopP)
                         else stage(processed, ()))
        u = torch.stack([us[rows[g]] for g in members])  # (n,)
        chosen = kept.gather(1, _draw_rows(processed, u).unsqueeze(1)).squeeze(1)  # (n,)
        tokens.update(zip((rows[g] for g in members), chosen.tolist()))
    return tokens


def _draw_rows(processed: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The draw of :func:`oxide.ops.reference.sample` for each row of ``processed`` (n, k), each with a token in
    play, with its uniform ``u`` (n,): the position chosen in the row, (n,) int64.

    The reference's softmax runs over the tokens in play only, packed together (its sums depend on how many), so
    they are packed here the same way and rows with as many in play draw together."""
    alive = processed > _NEG_INF  # (n, k)
    order = torch.argsort(~alive, dim=-1, stable=True)  # (n, k) positions in play first, ascending
    packed = processed.gather(1, order)  # (n, k)
    counts = alive.sum(dim=-1).tolist()
    positions = torch.empty(len(counts), dtype=torch.long)  # (n,)
    for count in set(counts):
        members = torch.tensor([r for r, c in enumerate(counts) if c == count])  # (c,)
        cdf = torch.cumsum(torch.softmax(packed[members, :count], dim=-1), dim=-1)  # (c, count)
        pick = torch.searchsorted(cdf, u[members].unsqueeze(1) * cdf[:, -1:], right=True).clamp_(max=count - 1)
        positions[members] = order[members].gather(1, pick).squeeze(1)  # (c,)
    return positions
