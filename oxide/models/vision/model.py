"""``VisionModel``: a Pixtral-Llava model's images to embeddings of its language model.

Pixel tensors (C, H, W) are checked against what the tower takes, encoded together (:class:`PixtralEncoder`,
attention block-diagonal across images) and projected (:class:`LlavaProjector`); :func:`build_vision` reads a
Hugging Face folder's tower when its config.json has one oxide runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import MediaError
from ...log import get_logger
from ...weights.safetensors import SafetensorsReader
from .config import VisionConfig, vision_support
from .pixtral import PixtralEncoder
from .projector import LlavaProjector
from .weights import load_vision_weights

log = get_logger("load")


class VisionModel:
    def __init__(self, config: VisionConfig, encoder: PixtralEncoder, projector: LlavaProjector) -> None:
        self.config, self.encoder, self.projector = config, encoder, projector
        self.device, self.dtype = encoder.device, encoder.dtype

    def grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of patches of a checked pixel tensor."""
        return pixels.shape[1] // self.config.patch_size, pixels.shape[2] // self.config.patch_size

    def check_pixels(self, pixels: torch.Tensor, index: int) -> torch.Tensor:
        """Image ``index`` as the tower takes it: float (C, H, W), C its channels, H and W multiples of the patch
        from one patch up to ``image_size``, finite; moved to the device. Anything else is a :class:`MediaError`."""
        c = self.config
        what = f"image {index}"
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 3 or not pixels.is_floating_point():
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise MediaError(f"{what}: pixel values must be a float tensor (C, H, W), got {shape}")
        C, H, W = pixels.shape
        if C != c.num_channels:
            raise MediaError(f"{what}: {C} channels, but the vision tower takes {c.num_channels}")
        for name, size in (("height", H), ("width", W)):
            if size % c.patch_size or not c.patch_size <= size <= c.image_size:
                raise MediaError(f"{what}: {name} {size} must be a multiple of the patch size {c.patch_size} "
                                 f"between {c.patch_size} and the model's limit of {c.image_size} pixels; "
                                 f"resize it (the 'pixtral' preprocessor does)")
        if not torch.isfinite(pixels).all():
            raise MediaError(f"{what}: pixel values hold NaN or infinity")
        return pixels.to(self.device)

    def __call__(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Embeddings of checked images, one (rows * cols, D_text) tensor each in the model's dtype, patches
        row by row."""
        with torch.inference_mode():
            features = self.projector(self.encoder(images))                   # (P, D_text)
        sizes = [rows * cols for rows, cols in map(self.grid, images)]
        return list(features.split(sizes))


def build_vision(directory: Path, outer: dict[str, Any], reader: SafetensorsReader, device: torch.device,
                 dtype: torch.dtype) -> tuple[VisionModel | None, str]:
    """The folder's vision model and a sentence saying what was decided: (None, why) where config.json has no
    vision tower or one oxide does not run (the language model then loads alone)."""
    reason = vision_support(outer)
    if reason is not None:
        return None, reason
    config = VisionConfig.from_hf(outer, str(directory / "config.json"))
    weights = load_vision_weights(reader, config, directory, device)
    encoder = PixtralEncoder(config, weights, device, dtype)
    log.info("%s: Pixtral vision tower, %d layers, patch %d, images up to %d pixels", directory.name,
             config.num_hidden_layers, config.patch_size, config.image_size)
    return (VisionModel(config, encoder, LlavaProjector(weights, config.projector_hidden_act, device, dtype)),
            f"Pixtral vision tower ({config.num_hidden_layers} layers, images up to {config.image_size} pixels)")
