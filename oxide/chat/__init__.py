"""Chat templates: HF-compatible sandboxed Jinja rendering and built-in fallbacks."""

from oxide.chat.fallbacks import FALLBACK_FAMILIES, builtin_template, fallback_template
from oxide.chat.template import ChatTemplate

__all__ = ["FALLBACK_FAMILIES", "ChatTemplate", "builtin_template", "fallback_template"]
