"""The ops a model calls in its loop, each chosen once for the model's device type and dtypes.

``LayerOps.bind(device, dtype)`` asks :func:`oxide.ops.dispatch.bind` for every layer op with the
probe its functional wrapper in :mod:`oxide.ops` would pass (the tensors' dtypes), so a model's
forward pays no dispatch per call; the functions keep the reference ops' signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .dispatch import bind


@dataclass(frozen=True)
class LayerOps:
    rms_norm: Callable[..., torch.Tensor]
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rope_cos_sin: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rope: Callable[..., torch.Tensor]
    kv_store: Callable[..., None]
    attention: Callable[..., torch.Tensor]
    attention_rows: Callable[..., torch.Tensor]
    gated_activation: Callable[..., torch.Tensor]
    add: Callable[..., torch.Tensor]
    scale: Callable[..., torch.Tensor]
    softcap: Callable[..., torch.Tensor]

    @classmethod
    def bind(cls, device: torch.device, dtype: torch.dtype) -> LayerOps:
        """The implementations for activations and a KV cache of ``dtype`` on ``device``."""
        on = device.type
        return cls(
            rms_norm=bind("rms_norm", on, dtype),
            add_rms_norm=bind("add_rms_norm", on, dtype, dtype),
            rope_cos_sin=bind("rope_cos_sin", on, torch.float32),
            rope=bind("rope", on, dtype),
            kv_store=bind("kv_store", on, dtype, dtype),
            attention=bind("attention", on, dtype, dtype, dtype),
            attention_rows=bind("attention_rows", on, dtype, dtype, dtype),
            gated_activation=bind("gated_activation", on, dtype, dtype),
            add=bind("add", on, dtype, dtype),
            scale=bind("scale", on, dtype),
            softcap=bind("softcap", on, dtype),
        )
