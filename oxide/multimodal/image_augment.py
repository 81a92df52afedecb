"""Random augmentations for fine-tuning, drawn from a ``torch.Generator`` so that a seed reproduces them.

They act on the RGB ``PIL.Image`` before the preprocessor's resize, crop and normalisation, in this order:
random resized crop, horizontal flip, rotation, then colour jitter (brightness, contrast, saturation, hue; a fixed
order, where torchvision's ``ColorJitter`` shuffles it). Ranges follow torchvision's conventions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image, ImageEnhance

from ..errors import InvalidOptionError


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    """One draw from U(low, high)."""
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """One draw from {0, ..., high - 1}."""
    return int(torch.randint(high, (), generator=generator).item())


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations to draw, and their ranges; the defaults leave the image unchanged.

    - ``crop_scale``: random resized crop: a region of area fraction U(*crop_scale) and aspect ratio (w / h)
      log-uniform in ``crop_ratio``, placed uniformly (torchvision's ``RandomResizedCrop`` sampling, 10 tries, then
      the central region of the clamped ratio). The region then goes through the preprocessor's resize and crop;
      for torchvision's exact behaviour (the region stretched to a square) use ``resize="exact"`` without a crop.
    - ``hflip``: probability of a left-right flip.
    - ``rotation``: degrees, the angle drawn from U(-rotation, rotation); bilinear, corners filled with black.
    - ``brightness``, ``contrast``, ``saturation``: factor drawn from U(max(0, 1 - v), 1 + v), applied with
      ``PIL.ImageEnhance`` (Brightness, Contrast, Color).
    - ``hue``: shift of the hue drawn from U(-hue, hue) turns, ``0 <= hue <= 0.5``.
    """

    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __post_init__(self) -> None:
        if self.crop_scale is not None and not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise InvalidOptionError(f"crop_scale={self.crop_scale} must satisfy 0 < low <= high <= 1")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise InvalidOptionError(f"crop_ratio={self.crop_ratio} must satisfy 0 < low <= high")
        if not 0.0 <= self.hflip <= 1.0:
            raise InvalidOptionError(f"hflip={self.hflip} is a probability; use a value in [0, 1]")
        if not 0.0 <= self.hue <= 0.5:
            raise InvalidOptionError(f"hue={self.hue} must lie in [0, 0.5] (a fraction of a turn)")
        for name in ("rotation", "brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise InvalidOptionError(f"{name}={getattr(self, name)} must be >= 0")

    def _crop_box(self, width: int, height: int, scale: tuple[float, float],
                  generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a random region (torchvision's ``RandomResizedCrop.get_params`` sampling)."""
        area = width * height
        log_low, log_high = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for _ in range(10):
            target = area * _uniform(scale[0], scale[1], generator)
            ratio = math.exp(_uniform(log_low, log_high, generator))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left, top = _randint(width - w + 1, generator), _randint(height - h + 1, generator)
                return left, top, left + w, top + h
        ratio = min(max(width / height, self.crop_ratio[0]), self.crop_ratio[1])
        w, h = (width, round(width / ratio)) if width / height > ratio else (round(height * ratio), height)
        w, h = max(1, min(w, width)), max(1, min(h, height))
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        """``image`` (RGB) with each enabled augmentation drawn from ``generator`` (None: torch's global one)."""
        if self.crop_scale is not None:
            image = image.crop(self._crop_box(image.width, image.height, self.crop_scale, generator))
        if self.hflip > 0 and _uniform(0.0, 1.0, generator) < self.hflip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rotation > 0:
            angle = _uniform(-self.rotation, self.rotation, generator)
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        for amount, enhancer in ((self.brightness, ImageEnhance.Brightness), (self.contrast, ImageEnhance.Contrast),
                                 (self.saturation, ImageEnhance.Color)):
            if amount > 0:
                image = enhancer(image).enhance(_uniform(max(0.0, 1.0 - amount), 1.0 + amount, generator))
        if self.hue > 0:
            image = _shift_hue(image, _uniform(-self.hue, self.hue, generator))
        return image


def _shift_hue(image: Image.Image, turns: float) -> Image.Image:
    """``image`` with its hue rotated by ``turns`` of a full circle (PIL's HSV, hue in 0..255, wrapping)."""
    shift = round(turns * 256)
    hue, saturation, value = image.convert("HSV").split()
    return Image.merge("HSV", (hue.point(lambda h: (h + shift) % 256), saturation, value)).convert("RGB")
