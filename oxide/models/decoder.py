"""``DecoderLM``: one decoder-only language model driven entirely by its :class:`ModelConfig`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import ops
from ..ops.bound import LayerOps
from ..cache import KVCache, LayerRows
from ..config import ModelConfig
from ..errors import TokenizerError
from .blocks import DecoderBlock
from .rope import RotaryEmbedding
from .weights import ModelWeights


class DecoderLM:
    """Embedding -> blocks -> final norm -> output head (-> soft-cap)."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, device: torch.device, dtype: torch.dtype) -> None:
        self.config = config
        self.weights = weights
        self.device = device
        self.dtype = dtype
        self.ops = LayerOps.bind(device, dtype)
        self.blocks = [DecoderBlock(config, i, w, self.ops, device, dtype) for i, w in enumerate(weights.layers)]
        self.embed = ops.bind("embedding", device.type, weights.embed, dtype)
        self.head = ops.Linear(weights.output, None, device, dtype)
        kinds = list(dict.fromkeys(config.rope_for(i) for i in range(config.num_hidden_layers)))  # (base, scaling)
        self._ropes = [RotaryEmbedding(config.head_dim, theta, scaling, device) for theta, scaling in kinds]
        self._layer_rope = [kinds.index(config.rope_for(i)) for i in range(config.num_hidden_layers)]

    def prepare_ropes(self, end: int) -> None:
        """Set every RoPE's frequencies for a sequence of length ``end`` after the next step (what
        :meth:`run` does itself; a replayed decode step, which does not run it, calls this first)."""
        for rope in self._ropes:
            rope.prepare(end)

    def rope_regimes(self) -> tuple:
        """Which regime each RoPE's frequencies are in (they change where a scaling follows the length)."""
        return tuple(rope.regime for rope in self._ropes)

    def new_cache(self, n_ctx: int) -> KVCache:
        """A KV cache in the model's dtype, the one its attention implementation was bound for."""
        return KVCache(self.config, n_ctx, self.dtype, self.device)

    def check_ids(self, ids: torch.Tensor) -> None:
        """Token ids must lie in [0, vocab_size); anything else is a :class:`TokenizerError`."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            self.check_token(ids[(ids < 0) | (ids >= self.config.vocab_size)][0].item())

    def check_token(self, token: int) -> None:
        """One token id, as :meth:`check_ids`."""
        if not 0 <= token < self.config.vocab_size:
            raise TokenizerError(f"token id {token} is out of range for a vocabulary of {self.config.vocab_size}")

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The input embeddings of ``ids`` (1, T): the table's rows, times the embedding multiplier (Gemma's)."""
        x = self.embed(ids, self.weights.embed, self.dtype)                    # (1, T, D)
        if self.config.embedding_multiplier != 1.0:
            x = self.ops.scale(x, self.config.embedding_multiplier)
        return x

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: KVCache, *, last_only: bool = False) -> torch.Tensor:
        """Run ``ids`` (B=1, T) after what ``cache`` holds; returns float32 logits (1, T, V) or (1, 1, V)."""
        self.check_ids(ids)
        T = ids.shape[1]
        logits = self.run(ids, cache.positions_for(T, self.device), cache, last_only=last_only)
        cache.advance(T)
        return logits

    @torch.inference_mode()
    def forward_embeddings(self, x: torch.Tensor, cache: KVCache, *, last_only: bool = False) -> torch.Tensor:
        """:meth:`forward` from input embeddings ``x`` (1, T, D) in the model's dtype (token embeddings from
        :meth:`embed_ids` with other features, an image's, placed among them)."""
        T = x.shape[1]
        logits = self.run_embeddings(x, cache.positions_for(T, self.device), cache, last_only=last_only)
        cache.advance(T)
        return logits

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, *, last_only: bool) -> torch.Tensor:
        """The forward pass itself, for ids already checked at ``positions`` (T,) that ``cache`` has
        room for: it stores their keys in ``cache`` but leaves counting them in to the caller
        (``cache.advance``). Every computation goes through :attr:`ops`, so that
        :class:`oxide.models.step.DecodeStep` can record one decode step and replay it in C++."""
        return self.run_embeddings(self.embed_ids(ids), positions, cache, last_only=last_only)

    @torch.inference_mode()
    def run_embeddings(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache, *, last_only: bool
                       ) -> torch.Tensor:
        """:meth:`run` from the input embeddings ``x`` (1, T, D): blocks, final norm, head (and soft-cap)."""
        end = cache.seq_len + x.shape[1]                  # the sequence's length after this pass
        cos_sin = [rope.cos_sin(positions, end) for rope in self._ropes]
        for block, rope, layer_cache in zip(self.blocks, self._layer_rope, cache.layers):
            x = block(x, *cos_sin[rope], positions, layer_cache)
        return self._logits(x[:, -1:] if last_only else x)

    @torch.inference_mode()
    def decode_batch(self, tokens: torch.Tensor, caches: Sequence[KVCache]) -> torch.Tensor:
        """One decode step of B sequences: token b (of ``tokens``, (B,)) runs at the next position of ``caches[b]``;
        returns the float32 logits (B, V) and counts each token in its cache.

        The B tokens travel as the rows of one pseudo-sequence (1, B, D), each with its own position, so every
        projection reads its weights once for all of them; attention runs per row over that row's own cache
        (:class:`oxide.cache.LayerRows`). A row's logits equal those of :meth:`forward` on its token alone:
        every op computes row by row (the CPU core bit for bit).
        """
        self.check_ids(tokens)
        for cache in caches:
            cache.check_room(1)
        starts = [cache.seq_len for cache in caches]
        positions = torch.tensor(starts, device=self.device)                                   # (B,)
        x = self.embed_ids(tokens.view(1, -1).to(self.device))                                 # (1, B, D)
        cos_sin = [_rows_cos_sin(rope, positions, [start + 1 for start in starts]) for rope in self._ropes]
        for i, (block, rope) in enumerate(zip(self.blocks, self._layer_rope)):
            x = block(x, *cos_sin[rope], positions, LayerRows([cache.layers[i] for cache in caches]))
        logits = self._logits(x)[0]                                                            # (B, V)
        for cache in caches:
            cache.advance(1)
        return logits

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, output head (and soft-cap): float32 logits (1, T, V) of the hidden states x (1, T, D)."""
        x = self.ops.rms_norm(x, self.weights.output_norm, self.config.rms_norm_eps)
        logits = self.head(x).float()
        if self.config.final_logit_softcapping > 0:
            logits = self.ops.softcap(logits, self.config.final_logit_softcapping)
        return logits


def _rows_cos_sin(rope: RotaryEmbedding, positions: torch.Tensor, ends: list[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) (B, d/2) of a batch of sequences, row b at ``positions[b]`` of a sequence whose length is then
    ``ends[b]``. A scaling whose frequencies follow the length (dynamic NTK, LongRoPE) may put rows in
    different regimes: each row then gets its own sequence's frequencies."""
    if len({rope.regime_for(end) for end in ends}) == 1:
        return rope.cos_sin(positions, max(ends))
    rows = [rope.cos_sin(positions[b:b + 1], end) for b, end in enumerate(ends)]
    return torch.cat([cos for cos, _ in rows]), torch.cat([sin for _, sin in rows])
