"""Images in prompts: gathered from ``images=`` and chat messages, turned into pixels, placed among the tokens.

An image is anything :class:`oxide.multimodal.ImagePreprocessor` reads (a path, bytes, a PIL image, an array),
preprocessed with the model's ``pixtral`` preset, or a ``torch.Tensor`` (C, H, W) of pixel values already
preprocessed. A chat message gives an image as a content part ``{"type": "image", "image": ...}`` (or ``"path"``);
a part without one takes the next image of ``images=``. The prompt holds one placeholder per image (the template
renders each image part as one); a text prompt without any gets its images at its start, after BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .errors import MediaError
from .log import get_logger
from .models.vision.placement import ImageTokens, expand_placeholders

if TYPE_CHECKING:
    from .models.decoder import DecoderLM
    from .models.vision.model import VisionModel

log = get_logger("infer")

IMAGE_KEYS = ("image", "path", "url")   # where a chat part may hold its image (transformers' names)


class PromptInput(NamedTuple):
    ids: list[int]                        # the prompt's tokens, each image's placeholder expanded to its tokens
    embeddings: torch.Tensor | None       # (1, T, D) their input embeddings, the images' features at their [IMG]
                                          # tokens; None for a prompt without images (the ids alone)


def chat_images(messages: Sequence[dict[str, Any]], images: Sequence[Any]) -> list[Any]:
    """The images of a chat's ``{"type": "image"}`` parts in order: a part's own, else the next of ``images``
    (which must all be used)."""
    given = list(images)
    found: list[Any] = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if not (isinstance(part, dict) and part.get("type") == "image"):
                continue
            own = next((part[key] for key in IMAGE_KEYS if part.get(key) is not None), None)
            if isinstance(own, str) and own.startswith(("http://", "https://")):
                raise MediaError(f"image part {len(found)}: {own!r} is a web address; oxide does not download "
                                 f"images: give a local path, bytes or a PIL image")
            if own is None and not given:
                raise MediaError(f"image part {len(found)} has no image (no {', '.join(IMAGE_KEYS)} key) and "
                                 f"images= has none left for it")
            found.append(own if own is not None else given.pop(0))
    if given:
        raise MediaError(f"{len(given)} image(s) of images= have no {{'type': 'image'}} part in the messages; "
                         f"add a part per image")
    return found


def to_pixels(image: Any, vision: VisionModel, index: int) -> torch.Tensor:
    """Image ``index`` as checked pixel values (C, H, W) on the model's device (see the module docstring)."""
    if not isinstance(image, torch.Tensor):
        from .multimodal import ImagePreprocessor

        c = vision.config
        image = ImagePreprocessor.preset("pixtral", patch_size=c.patch_size, size=c.image_size)(image)
    return vision.check_pixels(image, index)


def image_prompt(lm: DecoderLM, vision: VisionModel, tokens: ImageTokens, ids: Sequence[int],
                 pixels: Sequence[torch.Tensor], *, bos: int | None, chat: bool) -> PromptInput:
    """The prompt ``ids`` with its placeholders expanded and its input embeddings, each image's features in place
    of its ``[IMG]`` tokens. A text prompt without placeholders gets them after BOS; a chat's must come from its
    template."""
    ids = list(ids)
    if tokens.image not in ids and chat:
        raise MediaError("the chat template rendered no image placeholder for the messages' image parts; use a "
                         "template that renders {'type': 'image'} parts (the model's own)")
    if tokens.image not in ids:
        at = 1 if ids[:1] == [bos] and bos is not None else 0
        ids[at:at] = [tokens.image] * len(pixels)
        log.info("the prompt has no image placeholder: its %d image(s) go at its start", len(pixels))
    ids = expand_placeholders(ids, [vision.grid(p) for p in pixels], tokens)
    tensor = torch.tensor([ids], device=lm.device)                                      # (1, T)
    lm.check_ids(tensor)
    with torch.inference_mode():
        x = lm.embed_ids(tensor).clone()                                                # (1, T, D)
        x[0, tensor[0] == tokens.image] = torch.cat(vision(pixels)).to(x.dtype)         # (P, D) in place
    return PromptInput(ids, x)
