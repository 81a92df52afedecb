"""The vision tower's and the projector's tensors, read from a Pixtral-Llava checkpoint.

transformers saves them as ``vision_tower.*`` and ``multi_modal_projector.*`` (older and newer checkpoints may
put ``model.`` in front). Matrices stay in the checkpoint's dtype as :class:`~oxide.quant.QuantTensor` (F32, F16,
BF16), as the language model's do, so that ``ops.qmatmul`` and its kernels take them; vectors (norms, biases)
become float32. One load-time transform: the patch convolution's (D, C, p, p) kernel is flattened to a (D, C p p)
matrix, so the convolution runs as a matmul over unfolded patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ModelFormatError
from ...quant import QuantTensor
from ...weights.safetensors import SafetensorsReader
from ..hf import as_quant
from .config import VisionConfig

PREFIXES = ("", "model.")   # where a checkpoint may keep vision_tower.* and multi_modal_projector.*


@dataclass
class VisionLayerWeights:
    attention_norm: torch.Tensor
    q: QuantTensor
    k: QuantTensor
    v: QuantTensor
    o: QuantTensor
    ffn_norm: torch.Tensor
    gate: QuantTensor
    up: QuantTensor
    down: QuantTensor


@dataclass
class VisionWeights:
    patch: QuantTensor                 # (D, C * p * p): the patch convolution, flattened
    ln_pre: torch.Tensor
    layers: list[VisionLayerWeights]
    linear_1: QuantTensor              # (D_text, D * len(feature_layers))
    linear_1_bias: torch.Tensor | None
    linear_2: QuantTensor              # (D_text, D_text)
    linear_2_bias: torch.Tensor | None


class _Tensors:
    """Checkpoint tensors by their name after the prefix, each checked against the shape the config implies."""

    def __init__(self, reader: SafetensorsReader, directory: Path, device: torch.device) -> None:
        self.reader, self.directory, self.device = reader, directory, device
        names = set(reader.names())
        self.prefix = next((p for p in PREFIXES if f"{p}vision_tower.ln_pre.weight" in names), None)
        if self.prefix is None:
            raise ModelFormatError(f"{directory}: config.json has a Pixtral vision_config but the checkpoint has no "
                                   f"vision_tower.ln_pre.weight; the checkpoint is incomplete or not Pixtral-Llava")

    def _get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        full = self.prefix + name
        if full not in self.reader.files:
            raise ModelFormatError(f"{self.directory}: tensor {full!r} is missing from the checkpoint")
        tensor = self.reader.get(full)
        if tuple(tensor.shape) != shape:
            raise ModelFormatError(f"{self.directory}: tensor {full!r} has shape {tuple(tensor.shape)}, but "
                                   f"config.json implies {shape}; the checkpoint and its config.json disagree")
        return tensor

    def matrix(self, name: str, shape: tuple[int, ...]) -> QuantTensor:
        tensor = self._get(name, shape)
        full = self.prefix + name
        return as_quant(tensor.reshape(shape[0], -1), full, self.reader.files[full]).to(self.device)

    def vector(self, name: str, size: int) -> torch.Tensor:
        return self._get(name, (size,)).float().to(self.device)

    def bias(self, name: str, size: int, present: bool) -> torch.Tensor | None:
        return self.vector(name, size) if present else None


def load_vision_weights(reader: SafetensorsReader, config: VisionConfig, directory: Path,
                        device: torch.device) -> VisionWeights:
    """Read and check every tensor of the vision tower and the projector; matrices and vectors on ``device``."""
    t = _Tensors(reader, directory, device)
    D, F, p, C = config.hidden_size, config.intermediate_size, config.patch_size, config.num_channels
    text = config.text_hidden_size
    layers = []
    for i in range(config.num_hidden_layers):
        at = f"vision_tower.transformer.layers.{i}."
        layers.append(VisionLayerWeights(
            attention_norm=t.vector(at + "attention_norm.weight", D),
            q=t.matrix(at + "attention.q_proj.weight", (D, D)), k=t.matrix(at + "attention.k_proj.weight", (D, D)),
            v=t.matrix(at + "attention.v_proj.weight", (D, D)), o=t.matrix(at + "attention.o_proj.weight", (D, D)),
            ffn_norm=t.vector(at + "ffn_norm.weight", D),
            gate=t.matrix(at + "feed_forward.gate_proj.weight", (F, D)),
            up=t.matrix(at + "feed_forward.up_proj.weight", (F, D)),
            down=t.matrix(at + "feed_forward.down_proj.weight", (D, F))))
    bias = config.projector_bias
    return VisionWeights(
        patch=t.matrix("vision_tower.patch_conv.weight", (D, C, p, p)),       # flattened to (D, C p p)
        ln_pre=t.vector("vision_tower.ln_pre.weight", D),
        layers=layers,
        linear_1=t.matrix("multi_modal_projector.linear_1.weight", (text, D * len(config.feature_layers))),
        linear_1_bias=t.bias("multi_modal_projector.linear_1.bias", text, bias),
        linear_2=t.matrix("multi_modal_projector.linear_2.weight", (text, text)),
        linear_2_bias=t.bias("multi_modal_projector.linear_2.bias", text, bias))
