"""``ImagePreprocessor``: an image to the float32 (C, H, W) tensor a vision model takes, as its processor makes it.

The pipeline is transformers' PIL image processors' (``PilBackend._preprocess``), step for step, with the same
PIL and NumPy operations, so the presets give their processors' output exactly:

1. load and convert to RGB (``image_io.load_rgb``: transparency composited onto white);
2. (optional) seeded augmentations (``image_augment.Augmentation``);
3. resize with a PIL filter to a size given by the resize mode (below);
4. center crop (padding with black where the image is smaller than the crop);
5. rescale: ``float32(float64(pixel) * rescale_factor)``;
6. normalize: ``(x - mean) / std`` per channel, in float32;
7. channel order: RGB, or BGR (reversed after normalising, so ``mean`` and ``std`` are in RGB order).

Resize modes (``size`` is an int or (height, width)):

- ``exact``: to (height, width), aspect ratio not kept.
- ``shortest_edge``: the short side becomes ``size``, the long side ``int(size * long / short)`` (torchvision's
  ``Resize(int)``, transformers' ``shortest_edge``).
- ``longest_edge``: the long side becomes ``size``, the short side ``max(1, int(size * short / long))``.
- ``fill``: scaled to cover (height, width), then center-cropped to it (nothing is padded, the overflow is cut).
- ``pad``: scaled to fit inside (height, width), then padded with black on both sides, centered (a letterbox).
- ``patches``: Pixtral's: shrunk (never enlarged) so that both sides are at most ``size``, with ``floor``, then each
  side rounded up to a multiple of ``patch_size`` (``PixtralImageProcessor``; a side never drops below one patch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidOptionError, MediaError
from .image_augment import Augmentation
from .image_io import DEFAULT_MAX_PIXELS, ImageInput, check_pixels, load_rgb

__all__ = ["Augmentation", "ImagePreprocessor", "PRESETS"]

RESIZE_MODES = ("exact", "shortest_edge", "longest_edge", "fill", "pad", "patches")
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
            "hamming": Image.Resampling.HAMMING, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS}

# transformers.image_utils' OPENAI_CLIP_MEAN/STD and IMAGENET_DEFAULT_MEAN/STD (the values torchvision's ImageNet
# models were trained with).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as (height, width); an int is a square."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The central (height, width) window of an (H, W, C) array; where the image is smaller it is padded with 0,
    the image placed ``ceil((target - size) / 2)`` from the top/left (transformers' ``center_crop``)."""
    out = np.zeros((height, width, pixels.shape[2]), dtype=pixels.dtype)
    src, dst = [], []
    for have, want in zip(pixels.shape[:2], (height, width)):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have + 1) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[dst[0], dst[1]] = pixels[src[0], src[1]]
    return out


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """A generator seeded with ``seed``, or ``generator`` itself; None draws from torch's global generator."""
    if seed is not None and generator is not None:
        raise InvalidOptionError("pass seed= or generator=, not both")
    return torch.Generator().manual_seed(seed) if seed is not None else generator


@dataclass(frozen=True)
class ImagePreprocessor:
    """Images to float32 (3, H, W) tensors; see the module docstring for the steps and the resize modes.

    ``resize=None`` keeps the size; ``crop_size=None`` crops nothing (``fill`` and ``pad`` crop to ``size``);
    ``rescale_factor=None`` keeps 0..255; ``mean=std=None`` skips normalising. ``resample`` names a PIL filter
    (nearest, box, bilinear, hamming, bicubic, lanczos). ``max_pixels`` refuses larger inputs (and resize targets)
    with ``MediaError`` before they are decoded or allocated; None lifts the limit (PIL's decompression-bomb check
    still applies to files). ``augment`` adds seeded augmentations for training.
    """

    resize: str | None = None
    size: int | tuple[int, int] = 224
    resample: str = "bicubic"
    crop_size: int | tuple[int, int] | None = None
    patch_size: int | None = None
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: str = "RGB"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    augment: Augmentation | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise InvalidOptionError(f"resize={self.resize!r} is not a resize mode; use one of {RESIZE_MODES} or None")
        if self.resample not in RESAMPLE:
            raise InvalidOptionError(f"resample={self.resample!r} is not a filter; use one of {tuple(RESAMPLE)}")
        if min(_pair(self.size)) <= 0 or (self.crop_size is not None and min(_pair(self.crop_size)) <= 0):
            raise InvalidOptionError(f"size={self.size} and crop_size={self.crop_size} must be positive")
        if self.resize in ("shortest_edge", "longest_edge", "patches") and not isinstance(self.size, int):
            raise InvalidOptionError(f"resize={self.resize!r} takes one edge length, got size={self.size}")
        if (self.resize == "patches" or self.patch_size is not None) and not (self.patch_size or 0) > 0:
            raise InvalidOptionError(f"patch_size={self.patch_size} must be a positive int for resize='patches'")
        if (self.mean is None) != (self.std is None):
            raise InvalidOptionError(f"mean={self.mean} and std={self.std}: give both or neither")
        if self.mean is not None and (len(self.mean) != 3 or len(self.std) != 3 or 0 in self.std):
            raise InvalidOptionError(f"mean={self.mean} and std={self.std} need 3 values (R, G, B), std non-zero")
        if self.channel_order not in ("RGB", "BGR"):
            raise InvalidOptionError(f"channel_order={self.channel_order!r}; use 'RGB' or 'BGR'")
        if self.rescale_factor is not None and self.rescale_factor <= 0:
            raise InvalidOptionError(f"rescale_factor={self.rescale_factor} must be positive (or None)")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> ImagePreprocessor:
        """The preset ``name`` (a key of ``PRESETS``) with ``overrides`` replacing any of its fields."""
        if name not in PRESETS:
            raise InvalidOptionError(f"no image preset {name!r}; presets: {', '.join(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise InvalidOptionError(f"unknown ImagePreprocessor field(s) {unknown}; fields: {sorted(fields)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step (before any crop) for an input of ``height`` x ``width``."""
        if self.resize is None:
            return height, width
        if self.resize == "exact":
            return _pair(self.size)
        if self.resize in ("shortest_edge", "longest_edge"):
            short, long = sorted((height, width))
            edge = self.size
            new_short, new_long = ((edge, int(edge * long / short)) if self.resize == "shortest_edge"
                                   else (max(1, int(edge * short / long)), edge))
            return (new_short, new_long) if height <= width else (new_long, new_short)
        if self.resize in ("fill", "pad"):
            target_h, target_w = _pair(self.size)
            pick = max if self.resize == "fill" else min
            scale = pick(target_h / height, target_w / width)
            return max(1, round(height * scale)), max(1, round(width * scale))
        ratio = max(height / self.size, width / self.size)               # "patches"
        if ratio > 1:
            height, width = int(height / ratio), int(width / ratio)
        p = self.patch_size
        return max(1, -(-height // p)) * p, max(1, -(-width // p)) * p

    def _crop(self) -> tuple[int, int] | None:
        """The center crop's (height, width): ``crop_size``, or ``size`` for the fill and pad modes."""
        if self.crop_size is not None:
            return _pair(self.crop_size)
        return _pair(self.size) if self.resize in ("fill", "pad") else None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the tensor made from a ``height`` x ``width`` image (no augmentation), without making it."""
        return self._crop() or self.resized_size(height, width)

    def patch_grid(self, pixels: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of ``patch_size`` patches in a tensor this preprocessor made, (..., H, W):
        (H / patch_size, W / patch_size), e.g. Pixtral's grid of image tokens."""
        if self.patch_size is None:
            raise InvalidOptionError("patch_grid needs patch_size; this preprocessor has none")
        height, width = pixels.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise MediaError(f"a {height} x {width} image is not a whole number of {self.patch_size}-pixel patches; "
                             f"pass a tensor made with resize='patches'")
        return height // self.patch_size, width // self.patch_size

    def __call__(self, image: ImageInput, *, seed: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``image`` (a path, bytes, a PIL image, or an (H, W), (H, W, C) or (C, H, W) array, uint8 or float in
        [0, 1]) as float32 (3, H, W). ``seed`` or ``generator`` drives the augmentations, if any."""
        rgb = load_rgb(image, self.max_pixels)
        if self.augment is not None:
            rgb = self.augment(rgb, _generator(seed, generator))
        if self.resize is not None:
            height, width = self.resized_size(rgb.height, rgb.width)
            check_pixels(height, width, self.max_pixels,
                         f"the {rgb.width} x {rgb.height} image resized ({self.resize})")
            rgb = rgb.resize((width, height), resample=RESAMPLE[self.resample])
        pixels = np.array(rgb)                                            # (H, W, 3) uint8
        crop = self._crop()
        if crop is not None:
            pixels = _center_crop(pixels, *crop)
        x = pixels.transpose(2, 0, 1)                                     # (3, H, W) uint8
        if self.rescale_factor:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.mean is not None:
            mean = np.array(self.mean, dtype=np.float32)[:, None, None]
            std = np.array(self.std, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        if self.channel_order == "BGR":
            x = x[::-1]
        return torch.from_numpy(np.ascontiguousarray(x))

    def batch(self, images: Sequence[ImageInput], *, seed: int | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The images as one batch: pixels float32 (N, 3, Hmax, Wmax), each image at the top left and zeros after it
        (as ``PixtralImageProcessor`` pads), and mask bool (N, Hmax, Wmax), True on the image's own pixels.
        One generator (from ``seed``) serves every image, so each draws its own augmentations."""
        if len(images) == 0:
            raise MediaError("batch() got no images; pass at least one")
        generator = _generator(seed, generator)
        tensors = [self(image, generator=generator) for image in images]
        height = max(t.shape[1] for t in tensors)
        width = max(t.shape[2] for t in tensors)
        pixels = torch.zeros(len(tensors), 3, height, width)              # (N, 3, Hmax, Wmax)
        mask = torch.zeros(len(tensors), height, width, dtype=torch.bool)  # (N, Hmax, Wmax)
        for i, t in enumerate(tensors):
            pixels[i, :, :t.shape[1], :t.shape[2]] = t
            mask[i, :t.shape[1], :t.shape[2]] = True
        return pixels, mask

    def to_image(self, pixels: torch.Tensor) -> Image.Image:
        """The inverse for inspection: a (3, H, W) tensor this preprocessor made back to an RGB ``PIL.Image``
        (channel order, normalisation and rescaling undone, rounded and clamped to 0..255)."""
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise MediaError(f"to_image takes one (3, H, W) tensor, got shape {tuple(pixels.shape)}")
        x = pixels.detach().to("cpu", torch.float32)
        if self.channel_order == "BGR":
            x = x.flip(0)
        if self.mean is not None:
            x = x * torch.tensor(self.std)[:, None, None] + torch.tensor(self.mean)[:, None, None]
        if self.rescale_factor:
            x = x / self.rescale_factor
        rgb = x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)     # (H, W, 3)
        return Image.fromarray(rgb.contiguous().numpy())


# Each preset is its model's preprocessor_config.json (as published on the Hub; written out here, as the tests run
# offline) applied by that model's transformers image processor.
PRESETS: dict[str, ImagePreprocessor] = {
    # openai/clip-vit-base-patch32: CLIPImageProcessor, size {"shortest_edge": 224}, crop 224 x 224, resample 3
    # (bicubic), OpenAI's mean/std, rescale 1/255 (also CLIPImageProcessorPil's defaults).
    "clip": ImagePreprocessor(resize="shortest_edge", size=224, crop_size=224, resample="bicubic",
                              mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
    # google/siglip-base-patch16-224: SiglipImageProcessor, size 224 x 224 (no crop), resample 3 (bicubic),
    # mean = std = 0.5, rescale 1/255.
    "siglip": ImagePreprocessor(resize="exact", size=224, resample="bicubic", mean=(0.5, 0.5, 0.5),
                                std=(0.5, 0.5, 0.5)),
    # facebook/dinov2-base: BitImageProcessor, size {"shortest_edge": 256}, crop 224 x 224, resample 3 (bicubic),
    # ImageNet mean/std, rescale 1/255.
    "dinov2": ImagePreprocessor(resize="shortest_edge", size=256, crop_size=224, resample="bicubic",
                                mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # The classic ImageNet evaluation transform of torchvision's reference scripts: Resize(256) (bilinear, short
    # side), CenterCrop(224), ToTensor, Normalize(ImageNet mean/std); equal to BitImageProcessor with those settings.
    "imagenet": ImagePreprocessor(resize="shortest_edge", size=256, crop_size=224, resample="bilinear",
                                  mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # mistral-community/pixtral-12b: PixtralImageProcessor, size {"longest_edge": 1024}, patch_size 16 x 16,
    # resample 3 (bicubic), OpenAI CLIP's mean/std, rescale 1/255; variable size.
    "pixtral": ImagePreprocessor(resize="patches", size=1024, patch_size=16, resample="bicubic",
                                 mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
}
