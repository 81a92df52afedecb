"""The multimodal projector of LLaVA: vision features to the language model's embedding width.

``linear_2(act(linear_1(x)))`` with ``act`` the config's ``projector_hidden_act`` (transformers'
``LlavaMultiModalProjector``).
"""

from __future__ import annotations

import torch

from ... import ops
from .weights import VisionWeights


class LlavaProjector:
    def __init__(self, weights: VisionWeights, act: str, device: torch.device, dtype: torch.dtype) -> None:
        self.linear_1 = ops.Linear(weights.linear_1, weights.linear_1_bias, device, dtype)
        self.linear_2 = ops.Linear(weights.linear_2, weights.linear_2_bias, device, dtype)
        self.act = act

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """(P, D_vision * layers) -> (P, D_text)."""
        return self.linear_2(ops.activation(self.linear_1(features), self.act))
