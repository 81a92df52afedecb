"""Images in, one RGB ``PIL.Image`` out: files, bytes, PIL images and arrays, checked before they are decoded.

RGB conversion follows transformers' ``convert_to_rgb`` (what ``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``,
``BitImageProcessorPil`` and ``PixtralImageProcessorPil`` apply to every image): an image with an alpha band or a
transparency key (RGBA, LA, a palette with a transparent index) is composited onto white, anything else goes through
``Image.convert("RGB")`` (greyscale is replicated, a palette is looked up). Files and bytes are turned upright by
their EXIF orientation, as transformers' ``load_image`` does; a PIL image passed in is taken as it stands.
(``load_image`` itself then drops alpha instead of compositing; oxide composites for every input, so a file and the
PIL image opened from it give the same tensor.)
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
import torch

from ..errors import MediaError

try:
    from PIL import Image, ImageOps
except ImportError as exc:  # pragma: no cover - the multimodal extra is missing
    raise ImportError("oxide.multimodal's images need Pillow: pip install 'oxide[multimodal]'") from exc

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray, torch.Tensor]

# Beyond this many pixels an input is refused before it is decoded (a 10000 x 10000 image); PIL's own
# decompression-bomb check (Image.MAX_IMAGE_PIXELS, an error past twice that) applies to files as well.
DEFAULT_MAX_PIXELS = 100_000_000


def check_pixels(height: int, width: int, max_pixels: int | None, what: str) -> None:
    """Raise ``MediaError`` if a ``height`` x ``width`` image is empty or has more than ``max_pixels`` pixels."""
    if height <= 0 or width <= 0:
        raise MediaError(f"{what} is empty ({width} x {height} pixels); pass an image with at least one pixel")
    if max_pixels is not None and height * width > max_pixels:
        raise MediaError(
            f"{what} has {width} x {height} = {height * width} pixels, more than max_pixels={max_pixels}; "
            f"downscale it first, or raise max_pixels if the size is intended")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB: transparency composited onto white, other modes converted
    (transformers' ``convert_to_rgb``)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _open(source: str | os.PathLike | bytes | bytearray, max_pixels: int | None) -> Image.Image:
    """Decode a file or an encoded buffer, checking its size from the header before the pixels are decoded."""
    if isinstance(source, (bytes, bytearray)):
        what, stream = f"image bytes ({len(source)} bytes)", io.BytesIO(source)
    else:
        what, stream = f"image file {os.fspath(source)!r}", os.fspath(source)
    try:
        image = Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{what} is a decompression bomb ({exc}); refusing to decode it") from exc
    except FileNotFoundError as exc:
        raise MediaError(f"{what} does not exist; check the path") from exc
    except (OSError, SyntaxError, ValueError) as exc:   # UnidentifiedImageError is an OSError
        raise MediaError(f"{what} is not an image PIL can read ({exc}); pass a PNG, JPEG, WebP, GIF, BMP or "
                         f"TIFF file") from exc
    with image:
        width, height = image.size
        check_pixels(height, width, max_pixels, what)
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise MediaError(f"{what} is corrupt or truncated ({exc}); re-export or re-download it") from exc
    return upright


def _from_array(array: np.ndarray | torch.Tensor, max_pixels: int | None) -> Image.Image:
    """An (H, W), (H, W, C) or (C, H, W) array, C in {1, 3, 4}, uint8 or float in [0, 1], as a PIL image.

    Channels-last is assumed when the last dimension can be a channel count (as NumPy and PIL lay images out),
    else channels-first. Floats become uint8 by ``round(x * 255)``.
    """
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    what = f"image array of shape {tuple(a.shape)} and dtype {a.dtype}"
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)                                  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., 0] if a.shape[-1] == 1 else a
    elif a.ndim != 2:
        raise MediaError(f"{what} is not an image; pass (H, W), (H, W, C) or (C, H, W) with C = 1, 3 or 4")
    check_pixels(a.shape[0], a.shape[1], max_pixels, what)
    if np.issubdtype(a.dtype, np.floating):
        if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise MediaError(f"{what} has values outside [0, 1] (or not finite); float images are taken in [0, 1], "
                             f"pass uint8 for 0..255")
        a = np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise MediaError(f"{what}: pass uint8 (0..255) or a float array in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(a))               # (H, W) -> L, 3 channels -> RGB, 4 -> RGBA


def load_rgb(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any supported input as an RGB ``PIL.Image``; ``MediaError`` (naming the file or value) for anything unusable:
    a missing, corrupt or non-image file, an empty image, more than ``max_pixels`` pixels, a bad array."""
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        pil = _open(image, max_pixels)
    elif isinstance(image, Image.Image):
        check_pixels(image.height, image.width, max_pixels, f"PIL image ({image.mode}, {image.width} x {image.height})")
        pil = image
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        pil = _from_array(image, max_pixels)
    else:
        raise MediaError(f"cannot read an image from a {type(image).__name__}; pass a path, bytes, a PIL image or "
                         f"an array")
    return to_rgb(pil)
