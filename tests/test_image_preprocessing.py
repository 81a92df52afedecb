"""oxide.multimodal.ImagePreprocessor against transformers' PIL image processors, plus its inputs, batching, inverse,
augmentations and bad input.

Every preset is compared with its reference processor at a tolerance of 0.0: each makes the same PIL calls
(``convert_to_rgb``'s compositing, ``Image.resize`` with the same filter and size) and the same NumPy arithmetic in
the same dtypes (float64 rescale, float32 normalise), so the outputs are bit-identical. The issue's 0.02 bound
would be the fallback for a pipeline that resized differently; none of the five needs it.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BitImageProcessorPil, CLIPImageProcessorPil, PixtralImageProcessorPil, SiglipImageProcessorPil
from transformers.image_utils import PILImageResampling, load_image

from oxide.errors import InvalidOptionError, MediaError
from oxide.multimodal import ImagePreprocessor
from oxide.multimodal.image import IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Augmentation

CROP_224 = {"height": 224, "width": 224}
# Each model's preprocessor_config.json settings, spelled out rather than left to the classes' defaults.
REFERENCES = {
    "clip": lambda: CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size=CROP_224, image_mean=OPENAI_CLIP_MEAN,
                                          image_std=OPENAI_CLIP_STD, resample=PILImageResampling.BICUBIC),
    "siglip": lambda: SiglipImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3, resample=PILImageResampling.BICUBIC),
    "dinov2": lambda: BitImageProcessorPil(size={"shortest_edge": 256}, crop_size=CROP_224, image_mean=IMAGENET_MEAN,
                                           image_std=IMAGENET_STD, resample=PILImageResampling.BICUBIC),
    "imagenet": lambda: BitImageProcessorPil(size={"shortest_edge": 256}, crop_size=CROP_224,
                                             image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                                             resample=PILImageResampling.BILINEAR),
    "pixtral": lambda: PixtralImageProcessorPil(size={"longest_edge": 1024}, patch_size={"height": 16, "width": 16},
                                                image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                                                resample=PILImageResampling.BICUBIC),
}
SIZES = [(37, 53), (480, 640), (3, 500)]          # (height, width)
MODES = ["RGB", "RGBA", "L", "P"]


@pytest.fixture(scope="module")
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def references() -> dict:
    return {name: make() for name, make in REFERENCES.items()}


def random_image(rng: np.random.Generator, height: int, width: int, mode: str = "RGB") -> Image.Image:
    """Uniform random pixels in ``mode``; the palette image gets a random palette and a transparent index."""
    if mode == "P":
        image = Image.frombytes("P", (width, height), rng.integers(0, 256, (height, width), dtype=np.uint8).tobytes())
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        image.info["transparency"] = 7
        return image
    pixels = rng.integers(0, 256, (height, width, {"RGB": 3, "RGBA": 4, "L": 1}[mode]), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if mode == "L" else pixels)


def reference_output(processor, images) -> np.ndarray:
    return np.asarray(processor(images)["pixel_values"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("name", list(REFERENCES))
def test_preset_equals_reference_processor(name: str, height: int, width: int, mode: str, rng, references) -> None:
    image = random_image(rng, height, width, mode)
    ours = ImagePreprocessor.preset(name)(image)
    expected = reference_output(references[name], image)[0]
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    assert np.abs(ours.numpy() - expected).max() == 0.0


@pytest.mark.parametrize("shape", [(37, 53, 3), (37, 53, 4), (37, 53, 1)])   # transformers takes no (H, W) array
def test_array_input_equals_reference_processor(shape: tuple[int, ...], rng, references) -> None:
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    for name in ("clip", "pixtral"):
        expected = reference_output(references[name], array)[0]
        assert np.abs(ImagePreprocessor.preset(name)(array).numpy() - expected).max() == 0.0


@pytest.mark.parametrize("height,width", [(1, 1), (16, 16), (17, 33), (1024, 1024), (1025, 3), (2000, 1000),
                                          (700, 1500)])
def test_pixtral_sizes_equal_the_processor(height: int, width: int, rng, references) -> None:
    image = random_image(rng, height, width)
    pre = ImagePreprocessor.preset("pixtral")
    ours = pre(image)
    expected = reference_output(references["pixtral"], image)[0]
    assert ours.shape == expected.shape and tuple(ours.shape[1:]) == pre.output_size(height, width)
    assert np.abs(ours.numpy() - expected).max() == 0.0
    rows, cols = pre.patch_grid(ours)
    assert (rows * 16, cols * 16) == tuple(ours.shape[1:]) and max(ours.shape[1:]) <= 1024


def test_pixtral_keeps_one_patch_for_extreme_aspect_ratios() -> None:
    # The reference floors 3 * 1024 / 5000 to 0 and fails; oxide keeps one patch.
    assert ImagePreprocessor.preset("pixtral").output_size(5000, 3) == (1024, 16)


def test_every_input_kind_gives_the_same_tensor(rng, tmp_path: Path) -> None:
    pre = ImagePreprocessor.preset("clip")
    array = rng.integers(0, 256, (41, 29, 4), dtype=np.uint8)
    image = Image.fromarray(array)
    path = tmp_path / "in.png"
    image.save(path)
    expected = pre(image)
    chw = np.moveaxis(array, -1, 0)
    inputs = [path, str(path), path.read_bytes(), array, chw, torch.from_numpy(chw.copy()),
              array.astype(np.float32) / 255.0]
    for source in inputs:
        assert torch.equal(pre(source), expected), type(source)
    grey = array[..., 0]
    assert torch.equal(pre(grey), pre(grey[..., None])) and torch.equal(pre(grey), pre(Image.fromarray(grey)))


def test_file_orientation_is_applied_as_load_image_does(rng, tmp_path: Path, references) -> None:
    image = random_image(rng, 30, 50)
    exif = Image.Exif()
    exif[0x0112] = 6                                           # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    ours = ImagePreprocessor.preset("pixtral")(path)
    assert ours.shape == (3, 64, 32)
    assert np.abs(ours.numpy() - reference_output(references["pixtral"], load_image(str(path)))[0]).max() == 0.0


def test_resize_modes_and_options(rng) -> None:
    image = random_image(rng, 30, 60)
    sizes = {mode: ImagePreprocessor(resize=mode, size=(20, 20) if mode in ("exact", "fill", "pad") else 20,
                                     patch_size=16 if mode == "patches" else None)(image).shape[1:]
             for mode in ("exact", "shortest_edge", "longest_edge", "fill", "pad", "patches")}
    assert sizes == {"exact": (20, 20), "shortest_edge": (20, 40), "longest_edge": (10, 20), "fill": (20, 20),
                     "pad": (20, 20), "patches": (16, 32)}
    padded = ImagePreprocessor(resize="pad", size=(20, 20), rescale_factor=None)(image)    # 10 x 20 content, centered
    assert padded[:, :5].abs().max() == 0 and padded[:, 15:].abs().max() == 0 and padded[:, 5:15].max() > 0
    plain = ImagePreprocessor()(image)
    assert plain.shape == (3, 30, 60) and 0.0 <= plain.min() and plain.max() <= 1.0
    assert torch.equal(ImagePreprocessor(channel_order="BGR")(image), plain.flip(0))
    assert torch.equal(ImagePreprocessor(rescale_factor=None)(image), (plain * 255).round())


def test_batch_pads_like_pixtral_with_masks(rng, references) -> None:
    images = [random_image(rng, 37, 53, "RGBA"), random_image(rng, 100, 20)]
    pre = ImagePreprocessor.preset("pixtral")
    pixels, mask = pre.batch(images)
    reference = references["pixtral"](images)
    assert pixels.shape == (2, 3, 112, 64) and mask.dtype == torch.bool and mask.shape == (2, 112, 64)
    assert np.abs(pixels.numpy() - np.asarray(reference["pixel_values"])).max() == 0.0
    for i, (h, w) in enumerate(reference["image_sizes"]):
        assert mask[i, :h, :w].all() and mask[i].sum() == h * w
        assert torch.equal(pixels[i, :, :h, :w], pre(images[i]))
        assert pixels[i][:, ~mask[i]].abs().sum() == 0
    same_size, full = ImagePreprocessor.preset("siglip").batch(images)
    assert same_size.shape == (2, 3, 224, 224) and full.all()


@pytest.mark.parametrize("name", ["clip", "pixtral", "siglip"])
def test_inverse_round_trips(name: str, rng) -> None:
    image = random_image(rng, 224, 224) if name != "pixtral" else random_image(rng, 32, 48)
    pre = ImagePreprocessor.preset(name, channel_order="BGR")
    back = np.asarray(pre.to_image(pre(image)), dtype=np.int16)
    assert np.abs(back - np.asarray(image, dtype=np.int16)).max() <= 1          # within 1/255


AUGMENT = Augmentation(crop_scale=(0.3, 1.0), hflip=0.5, rotation=20, brightness=0.4, contrast=0.4, saturation=0.4,
                       hue=0.1)


def test_augmentations_reproducible_with_a_seed(rng) -> None:
    image = random_image(rng, 120, 90)
    pre = ImagePreprocessor.preset("clip", augment=AUGMENT)
    first = pre(image, seed=11)
    assert torch.equal(first, pre(image, seed=11))
    assert torch.equal(first, pre(image, generator=torch.Generator().manual_seed(11)))
    outputs = [pre(image, seed=s) for s in range(6)]
    assert all(not torch.equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1:])
    batch, _ = pre.batch([image, image], seed=3)
    assert torch.equal(batch, pre.batch([image, image], seed=3)[0]) and not torch.equal(batch[0], batch[1])
    with pytest.raises(InvalidOptionError, match="not both"):
        pre(image, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("field,value", [("crop_scale", (0.2, 0.5)), ("rotation", 30.0), ("brightness", 0.5),
                                         ("contrast", 0.5), ("saturation", 0.5), ("hue", 0.2)])
def test_each_augmentation_changes_the_image(field: str, value, rng) -> None:
    image = random_image(rng, 64, 64)
    augmented = ImagePreprocessor.preset("siglip", augment=Augmentation(**{field: value}))
    assert not torch.equal(augmented(image, seed=0), ImagePreprocessor.preset("siglip")(image))


def test_hflip_is_an_exact_mirror(rng) -> None:
    image = random_image(rng, 224, 224)                        # siglip leaves a 224 x 224 image unresized
    pre = ImagePreprocessor.preset("siglip")
    flipped = ImagePreprocessor.preset("siglip", augment=Augmentation(hflip=1.0))(image, seed=0)
    assert torch.equal(flipped, pre(image).flip(-1))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (1-bit grey) with a few bytes of pixel data: cheap to write,
    ruinous to decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_files_name_the_file(rng, tmp_path: Path) -> None:
    pre = ImagePreprocessor.preset("clip")
    good = io.BytesIO()
    random_image(rng, 64, 64).save(good, format="PNG")
    cases = {"truncated.png": good.getvalue()[: len(good.getvalue()) // 2], "notes.txt": b"just some text\n",
             "empty.png": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MediaError, match=name):
            pre(tmp_path / name)
    with pytest.raises(MediaError, match="does not exist"):
        pre(tmp_path / "missing.png")
    with pytest.raises(MediaError, match="image bytes"):
        pre(b"\x89PNG not really")


def test_decompression_bomb_and_pixel_limit(rng, tmp_path: Path) -> None:
    pre = ImagePreprocessor.preset("pixtral")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(20000, 20000))           # 400 Mpx: PIL's own check refuses it at open
    with pytest.raises(MediaError, match="bomb.png.*decompression bomb"):
        pre(bomb)
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(11000, 10000))            # 110 Mpx: past max_pixels, refused before decoding
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(MediaError, match="big.png.*max_pixels"):
        pre(big)
    small = random_image(rng, 50, 50)
    with pytest.raises(MediaError, match="max_pixels=1000"):
        ImagePreprocessor.preset("pixtral", max_pixels=1000)(small)
    with pytest.raises(MediaError, match="resized"):           # a 1 x 1000 strip would become 224 x 224000
        ImagePreprocessor.preset("clip", max_pixels=1_000_000)(random_image(rng, 1, 1000))


@pytest.mark.parametrize("value,match", [
    (Image.new("RGB", (0, 5)), "empty"),
    (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
    (np.full((4, 4, 3), 1.5, dtype=np.float32), r"outside \[0, 1\]"),
    (np.zeros((4, 4, 3), dtype=np.int16), "int16"),
    (np.zeros((2, 4, 4, 3), dtype=np.uint8), r"\(2, 4, 4, 3\)"),
    (np.zeros((6, 4, 5), dtype=np.uint8), r"\(6, 4, 5\)"),
    (42, "int"),
])
def test_bad_values_raise_media_error(value, match: str) -> None:
    with pytest.raises(MediaError, match=match):
        ImagePreprocessor.preset("clip")(value)


def test_bad_options_raise_invalid_option() -> None:
    with pytest.raises(InvalidOptionError, match="clip, siglip"):
        ImagePreprocessor.preset("vit")
    with pytest.raises(InvalidOptionError, match="sizee"):
        ImagePreprocessor.preset("clip", sizee=3)
    with pytest.raises(InvalidOptionError, match="resample='cubic'"):
        ImagePreprocessor(resample="cubic")
    with pytest.raises(InvalidOptionError, match="patch_size"):
        ImagePreprocessor(resize="patches", size=64)
    with pytest.raises(InvalidOptionError, match="mean"):
        ImagePreprocessor(mean=(0.5, 0.5, 0.5))
    with pytest.raises(InvalidOptionError, match="hflip"):
        Augmentation(hflip=2.0)
