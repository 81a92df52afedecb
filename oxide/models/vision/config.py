"""``VisionConfig``: a Pixtral-Llava model's vision tower and projector settings, from its config.json.

Field names follow transformers' ``PixtralVisionConfig`` and ``LlavaConfig``; the defaults are theirs, in this
one place. The text side keeps its own :class:`oxide.config.ModelConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ModelFormatError

NORM_EPS = 1e-5   # PixtralRMSNorm's epsilon for ln_pre and every layer's norms: fixed in transformers, not in config
SUPPORTED = "a LlavaForConditionalGeneration with a Pixtral vision tower (model_type 'llava', vision 'pixtral')"


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 1024             # the longest edge an image may have, in pixels
    patch_size: int = 16
    hidden_act: str = "gelu"           # the gated MLP's activation (Pixtral 12B: silu)
    rope_theta: float = 10000.0
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True        # multimodal_projector_bias
    feature_layers: tuple[int, ...] = (-2,)    # vision_feature_layer: indices into (embeddings, layer 1, ...)
    image_token_index: int = 10
    text_hidden_size: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, outer: dict[str, Any], source: str) -> VisionConfig:
        """The settings of a Pixtral-Llava config.json (``vision_config`` nested, the projector's outside it)."""
        vision = outer["vision_config"]
        text = outer.get("text_config") if isinstance(outer.get("text_config"), dict) else outer
        rope = vision.get("rope_parameters") if isinstance(vision.get("rope_parameters"), dict) else {}
        layers = outer.get("vision_feature_layer")
        fields = dict(
            hidden_size=vision.get("hidden_size"), intermediate_size=vision.get("intermediate_size"),
            num_hidden_layers=vision.get("num_hidden_layers"), num_attention_heads=vision.get("num_attention_heads"),
            num_channels=vision.get("num_channels"), image_size=vision.get("image_size"),
            patch_size=vision.get("patch_size"), hidden_act=vision.get("hidden_act"),
            rope_theta=rope.get("rope_theta", vision.get("rope_theta")),
            projector_hidden_act=outer.get("projector_hidden_act"),
            projector_bias=outer.get("multimodal_projector_bias"),
            feature_layers=tuple(layers) if isinstance(layers, list) else None if layers is None else (layers,),
            image_token_index=outer.get("image_token_index", outer.get("image_token_id")),
            text_hidden_size=text.get("hidden_size"),
        )
        config = cls(**{k: v for k, v in fields.items() if v is not None})
        for name in ("image_size", "patch_size"):
            if not isinstance(getattr(config, name), int):
                raise ModelFormatError(f"{source}: vision_config.{name}={getattr(config, name)!r}; oxide reads a "
                                       f"square size, one integer")
        if config.hidden_size % config.num_attention_heads or config.head_dim % 4:
            raise ModelFormatError(f"{source}: vision hidden_size {config.hidden_size} over "
                                   f"{config.num_attention_heads} heads must give a head_dim that is a multiple of "
                                   f"4 (2-D RoPE splits it between rows and columns)")
        n = config.num_hidden_layers
        if not all(-(n + 1) <= layer <= n for layer in config.feature_layers):
            raise ModelFormatError(f"{source}: vision_feature_layer {list(config.feature_layers)} is outside the "
                                   f"{n + 1} hidden states of a {n}-layer vision tower")
        return config


def vision_support(outer: dict[str, Any]) -> str | None:
    """Why oxide cannot run this config.json's images (None: it can). Only Pixtral-Llava is supported."""
    vision = outer.get("vision_config")
    if not isinstance(vision, dict):
        return "config.json has no vision_config: it is a text-only model"
    if outer.get("model_type") != "llava" or vision.get("model_type") != "pixtral":
        return (f"its vision tower (model_type {outer.get('model_type')!r}, vision {vision.get('model_type')!r}) is "
                f"not one oxide runs; oxide runs images through {SUPPORTED}")
    strategy = outer.get("vision_feature_select_strategy", "default")   # LlavaConfig's default
    if strategy != "full":
        return (f"config.json's vision_feature_select_strategy is {strategy!r}, which drops the first patch that "
                f"Pixtral's prompt gives a token (transformers cannot run it with images either); Pixtral-Llava "
                f"needs 'full', as Pixtral 12B's config.json has")
    return None
