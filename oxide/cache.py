"""Static, pre-allocated KV cache.

Full-attention layers keep a buffer of ``n_ctx`` positions, filled in order. Sliding-window layers
keep a ring of ``window`` positions (a query at position p sees keys p - window + 1 .. p), so their
memory does not grow with the context; slots are reused oldest first and may hold positions out of
order, which attention does not mind since every key carries its absolute position. Positions are
shared by all layers and start at 0, so position p lives in slot ``p % slots`` (the ``kv_store`` op);
the cache refuses to grow past ``n_ctx``. A forward stores each layer's new keys as it goes and
:meth:`KVCache.advance` then counts them in for every layer.

An empty slot holds the position :data:`EMPTY_POSITION`, later than any query, so attention masks it
as a future key. That lets a decode step see every slot (``static_views``): the shapes it computes on
then never change, as a captured CUDA graph needs, where by default it sees only the slots in use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .config import ModelConfig
from .errors import ContextOverflowError
from .ops.dispatch import bind


EMPTY_POSITION = 2**62   # an empty slot's position: after every query, so causal attention masks it

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``attend(q, keys, values, q_positions, key_positions) -> out``: a layer's attention over what a cache gives."""
AttendRows = Callable[[torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor], torch.Tensor,
                       Sequence[torch.Tensor]], torch.Tensor]
"""``attend_rows(q, keys, values, q_positions, key_positions) -> out``: query row b of q (1, H, B, d) over the
b-th of each list, what B caches give (:func:`oxide.ops.reference.attention_rows`)."""


class LayerCache:
    """K/V of one layer. :meth:`update` stores new keys and returns everything a query may attend to."""

    def __init__(self, capacity: int, n_kv: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 window: int, value_dim: int = 0) -> None:
        """``value_dim``: the values' width where it differs from the keys' (0: ``head_dim``)."""
        self.window = window
        self.size = window if window > 0 else capacity          # slots
        self.k = torch.empty((1, n_kv, self.size, head_dim), dtype=dtype, device=device)
        self.v = torch.empty((1, n_kv, self.size, value_dim or head_dim), dtype=dtype, device=device)
        self.pos = torch.full((self.size,), EMPTY_POSITION, dtype=torch.long, device=device)
        self.length = 0                                          # slots holding a position
        self.written = 0                                         # positions ever stored
        self.static_views = False                                # a decode step sees every slot
        self._store = bind("kv_store", device.type, dtype, dtype)

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store k, v: (1, Hkv, T, hd) at ``positions`` (T,); return (K, V, key_positions) to attend to."""
        T = k.shape[2]
        if self.window > 0 and T > 1:
            # A chunk attends to the ring and to all of itself; only its last `size` positions are kept.
            keys = torch.cat((self.k[:, :, :self.length], k), dim=2)        # (1, Hkv, L+T, hd)
            values = torch.cat((self.v[:, :, :self.length], v), dim=2)
            key_pos = torch.cat((self.pos[:self.length], positions))
            self._store(k, v, positions, self.k, self.v, self.pos)
            return keys, values, key_pos
        self._store(k, v, positions, self.k, self.v, self.pos)
        return self.views(T)

    def views(self, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K, V, key_positions) a query may attend to once ``T`` new positions are stored (not for a window's
        chunk, which :meth:`update` handles)."""
        if self.static_views and T == 1:
            return self.k, self.v, self.pos
        length = min(self.written + T, self.size)
        # narrow() rather than indexing: each cache view costs ~1 us instead of ~3 in a decode step
        return self.k.narrow(2, 0, length), self.v.narrow(2, 0, length), self.pos.narrow(0, 0, length)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               attend: Attend, attend_rows: AttendRows | None = None) -> torch.Tensor:
        """Store k, v (1, Hkv, T, d) at ``positions`` (T,), then ``attend(q, keys, values, positions, key_positions)``
        over what the queries q may see (``attend_rows`` is for :class:`LayerRows`, which takes the same call)."""
        keys, values, key_pos = self.update(k, v, positions)
        return attend(q, keys, values, positions, key_pos)

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (see :meth:`KVCache.reusable` for when that is sound)."""
        self.pos.masked_fill_(self.pos >= length, EMPTY_POSITION)
        self.written = length
        self.length = min(length, self.size)

    def keeps_history_for(self, length: int) -> bool:
        """Whether a query at position ``length`` finds every key it may see still stored: always for a full
        cache; for a ring, unless later positions overwrote the ones it needs (``length - window + 1`` on)."""
        if self.window == 0 or self.written <= self.size:
            return True
        return length - self.window + 1 >= self.written - self.size

    def copy_from(self, other: LayerCache, length: int) -> None:
        """Hold ``other``'s first ``length`` positions (and nothing after them)."""
        used = min(other.written, other.size) if self.window else length
        self.k[:, :, :used].copy_(other.k[:, :, :used])
        self.v[:, :, :used].copy_(other.v[:, :, :used])
        self.pos[:used].copy_(other.pos[:used])
        self.pos[used:].fill_(EMPTY_POSITION)
        self.truncate(length)

    def use_static_views(self) -> None:
        """Decode steps attend over every slot from now on; the empty ones get finite keys and values (a
        masked key's weight is 0, and 0 times an uninitialised NaN would not be)."""
        self.static_views = True
        self.k[:, :, self.length:].zero_()
        self.v[:, :, self.length:].zero_()

    def advance(self, n_new: int) -> None:
        """Count in the ``n_new`` positions the last :meth:`update` stored."""
        self.written += n_new
        self.length = min(self.written, self.size)

    def reset(self) -> None:
        self.length = 0
        self.written = 0
        self.pos.fill_(EMPTY_POSITION)


class KVCache:
    """The cache of a whole model, with the shared position counter and the context limit."""

    def __init__(self, config: ModelConfig, n_ctx: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n_ctx = n_ctx
        # Latent attention caches per token its latent (kv_lora_rank) as the "key" and its one shared RoPE
        # key (head_dim) as the "value", from which every head's keys and values are rebuilt.
        n_kv, key_dim, value_dim = ((1, config.kv_lora_rank, config.head_dim) if config.latent_attention
                                    else (config.num_key_value_heads, config.head_dim, config.head_dim))
        self.layers = [
            LayerCache(n_ctx, n_kv, key_dim, dtype, device, value_dim=value_dim,
                       window=config.sliding_window if config.is_sliding(i) and config.sliding_window < n_ctx else 0)
            for i in range(config.num_hidden_layers)
        ]
        self.seq_len = 0

    def positions_for(self, n_new: int, device: torch.device) -> torch.Tensor:
        """Positions of the next ``n_new`` tokens; raises :class:`ContextOverflowError` past ``n_ctx``."""
        self.check_room(n_new)
        return torch.arange(self.seq_len, self.seq_len + n_new, device=device)

    def check_room(self, n_new: int) -> None:
        """Raise :class:`ContextOverflowError` unless ``n_new`` more tokens fit in ``n_ctx``."""
        if self.seq_len + n_new > self.n_ctx:
            raise ContextOverflowError(
                f"{self.seq_len + n_new} tokens (cached {self.seq_len} + new {n_new}) exceed the context of "
                f"{self.n_ctx} tokens; shorten the prompt or max_new_tokens, or load with a larger n_ctx"
            )

    def reusable(self, length: int) -> bool:
        """Whether the first ``length`` positions can be kept and the sequence continued from there
        (:meth:`truncate`): a sliding layer's ring must still hold the keys position ``length`` sees."""
        return length <= self.seq_len and all(layer.keeps_history_for(length) for layer in self.layers)

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions only; the caller checked :meth:`reusable`."""
        self.seq_len = length
        for layer in self.layers:
            layer.truncate(length)

    def copy_from(self, other: KVCache, length: int) -> None:
        """Hold the first ``length`` positions of ``other`` (a cache of the same model; ``other.reusable(length)``)."""
        for mine, theirs in zip(self.layers, other.layers):
            mine.copy_from(theirs, length)
        self.seq_len = length

    def use_static_views(self) -> None:
        """From now on a decode step (one token) attends over every slot of each layer, the empty ones
        masked by their position: fixed shapes, for a captured CUDA graph."""
        for layer in self.layers:
            layer.use_static_views()

    def advance(self, n_new: int) -> None:
        """Count in the ``n_new`` positions that a forward has just stored in every layer."""
        self.seq_len += n_new
        for layer in self.layers:
            layer.advance(n_new)

    def reset(self) -> None:
        self.seq_len = 0
        for layer in self.layers:
            layer.reset()


class LayerRows:
    """One layer's caches of B sequences decoding together, one query row each (see
    :meth:`oxide.models.decoder.DecoderLM.decode_batch`): row b stores its key in, and attends over,
    sequence b's own cache only."""

    def __init__(self, layers: Sequence[LayerCache]) -> None:
        self.layers = layers
        first = layers[0]
        self._store_rows = bind("kv_store_rows", first.k.device.type, first.k.dtype, first.v.dtype)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               attend: Attend, attend_rows: AttendRows | None = None) -> torch.Tensor:
        """Row b's key and value (k, v: (1, Hkv, B, d)) stored at ``positions[b]`` in sequence b's cache; then row b
        of q (1, H, B, d) over that cache: all rows in one ``attend_rows`` call where given, else row by row."""
        layers = self.layers
        self._store_rows(k, v, positions, [layer.k for layer in layers], [layer.v for layer in layers],
                         [layer.pos for layer in layers])
        views = [layer.views(1) for layer in layers]
        if attend_rows is not None:
            keys, values, key_pos = zip(*views)
            return attend_rows(q, keys, values, positions, key_pos)
        return torch.cat([attend(q[:, :, b:b + 1], keys, values, positions[b:b + 1], key_pos)
                          for b, (keys, values, key_pos) in enumerate(views)], dim=2)
