"""Next-token sampling: the :class:`Sampler`, over the ``sample`` op of :mod:`oxide.ops`.

The options and the processors of llama.cpp's chain (penalties, top-k, top-p, min-p,
temperature), the specification the op follows, live in :mod:`oxide.processors`; they are
re-exported here.
"""

from __future__ import annotations

import math

import torch

from oxide import ops
from oxide.errors import NumericalError
from oxide.log import get_logger
from oxide.ops.reference import SAMPLE_NAN, SAMPLE_NO_FINITE
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
    "build_processors", "window_counts",
]

log = get_logger("sampling")

_SAMPLE_INF = -3   # not an op code: a +inf logit, found by the sampler's own check
_INVALID = {
    SAMPLE_NAN: "the logits contain NaN",
    SAMPLE_NO_FINITE: "no token has a finite logit (the model gave -inf everywhere)",
    _SAMPLE_INF: "the logits contain +inf",
}


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
        generator = self._generator_for(logits.device)
        u = torch.rand((), generator=generator, device=logits.device)  # () in [0, 1)
        chosen = ops.sample(logits, self._counts(logits, history), u, self.options)  # ()
        # ids are below 2^22 (validation.LIMITS), exact in float32; max() propagates NaN
        token, peak = torch.stack([chosen.to(torch.float32), logits.max()]).tolist()
        if math.isnan(peak):
            raise NumericalError(_INVALID[SAMPLE_NAN])
        if not math.isfinite(peak):
            raise NumericalError(_INVALID[SAMPLE_NO_FINITE] if peak < 0 else _INVALID[_SAMPLE_INF])
        if token < 0:
            raise NumericalError(_INVALID[int(token)])
        return int(token)

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
