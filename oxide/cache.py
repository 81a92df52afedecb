"""Static, pre-allocated KV cache.

Full-attention layers keep a buffer of ``n_ctx`` positions. Sliding-window layers keep only the
last ``window - 1`` positions (a query at position p sees keys p - window + 1 .. p, the newest
being its own), stored oldest-first, so their memory does not grow with the context. Positions
are absolute and shared by all layers; the cache refuses to grow past ``n_ctx``.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .errors import ContextOverflowError


class LayerCache:
    """K/V of one layer. :meth:`update` appends new keys and returns everything a query may attend to."""

    def __init__(self, capacity: int, n_kv: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 window: int) -> None:
        self.window = window
        self.keep = window - 1 if window > 0 else capacity     # positions retained between calls
        shape = (1, n_kv, self.keep, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.pos = torch.empty(self.keep, dtype=torch.long, device=device)
        self.length = 0                                       # valid entries in the buffers

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append k, v: (1, Hkv, T, hd) at ``positions`` (T,); return (K, V, key_positions) to attend to."""
        T = k.shape[2]
        if self.window <= 0:
            end = self.length + T
            self.k[:, :, self.length:end] = k
            self.v[:, :, self.length:end] = v
            self.pos[self.length:end] = positions
            self.length = end
            return self.k[:, :, :end], self.v[:, :, :end], self.pos[:end]
        keys = torch.cat((self.k[:, :, :self.length], k), dim=2)          # (1, Hkv, L+T, hd)
        values = torch.cat((self.v[:, :, :self.length], v), dim=2)
        key_pos = torch.cat((self.pos[:self.length], positions))
        kept = min(self.keep, keys.shape[2])
        self.k[:, :, :kept] = keys[:, :, -kept:]
        self.v[:, :, :kept] = values[:, :, -kept:]
        self.pos[:kept] = key_pos[-kept:]
        self.length = kept
        return keys, values, key_pos

    def reset(self) -> None:
        self.length = 0


class KVCache:
    """The cache of a whole model, with the shared position counter and the context limit."""

    def __init__(self, config: ModelConfig, n_ctx: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n_ctx = n_ctx
        self.layers = [
            LayerCache(n_ctx, config.num_key_value_heads, config.head_dim, dtype, device,
                       window=config.sliding_window if config.is_sliding(i) and config.sliding_window < n_ctx else 0)
            for i in range(config.num_hidden_layers)
        ]
        self.seq_len = 0

    def positions_for(self, n_new: int, device: torch.device) -> torch.Tensor:
        """Positions of the next ``n_new`` tokens; raises :class:`ContextOverflowError` past ``n_ctx``."""
        if self.seq_len + n_new > self.n_ctx:
            raise ContextOverflowError(
                f"{self.seq_len + n_new} tokens (cached {self.seq_len} + new {n_new}) exceed the context of "
                f"{self.n_ctx} tokens; shorten the prompt or max_new_tokens, or load with a larger n_ctx"
            )
        return torch.arange(self.seq_len, self.seq_len + n_new, device=device)

    def advance(self, n_new: int) -> None:
        self.seq_len += n_new

    def reset(self) -> None:
        self.seq_len = 0
        for layer in self.layers:
            layer.reset()
