"""Where an image's embeddings go in the prompt, as transformers' ``PixtralProcessor`` places them.

Each image placeholder (the ``[IMG]`` token, the model's ``image_token_index``) becomes, for a grid of
``rows x cols`` patches, ``rows`` lines of ``cols`` ``[IMG]`` tokens each followed by ``[IMG_BREAK]``, the very last
``[IMG_BREAK]`` replaced by ``[IMG_END]`` (``PixtralProcessor.replace_image_token``). The image's patch embeddings,
row by row, then replace the ``[IMG]`` tokens' embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import MediaError, TokenizerError
from ...tokenizer import Tokenizer

BREAK_TOKEN, END_TOKEN = "[IMG_BREAK]", "[IMG_END]"


@dataclass(frozen=True)
class ImageTokens:
    image: int        # [IMG]: the placeholder, and each patch's token
    row_break: int    # [IMG_BREAK]: after each row of patches
    end: int          # [IMG_END]: after the last row instead

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, image_token_index: int) -> ImageTokens:
        """``image_token_index`` from config.json; the break and end tokens from the tokenizer's special tokens."""
        special = tokenizer.special_tokens
        missing = [t for t in (BREAK_TOKEN, END_TOKEN) if t not in special]
        if missing:
            raise TokenizerError(f"the tokenizer has no {' or '.join(missing)} special token, which Pixtral's image "
                                 f"prompt needs; use the model's own tokenizer.json")
        return cls(image_token_index, special[BREAK_TOKEN], special[END_TOKEN])


def image_token_ids(rows: int, cols: int, tokens: ImageTokens) -> list[int]:
    """The tokens of one image of ``rows x cols`` patches."""
    ids = ([tokens.image] * cols + [tokens.row_break]) * rows
    ids[-1] = tokens.end
    return ids


def expand_placeholders(ids: Sequence[int], grids: Sequence[tuple[int, int]], tokens: ImageTokens) -> list[int]:
    """``ids`` with its i-th ``[IMG]`` placeholder replaced by image i's tokens; there must be one per image."""
    found = sum(1 for i in ids if i == tokens.image)
    if found != len(grids):
        raise MediaError(f"the prompt has {found} image placeholder(s) (token {tokens.image}) for {len(grids)} "
                         f"image(s); give one image per placeholder")
    out: list[int] = []
    pending = iter(grids)
    for token in ids:
        out.extend(image_token_ids(*next(pending), tokens) if token == tokens.image else (token,))
    return out
