"""What a chat template gets to see: messages, tools and documents as plain JSON-like data.

Follows transformers' ``apply_chat_template`` path: message keys whose value is ``None`` are dropped
(OpenAI-style ``content=None`` / ``tool_calls=None``), everything is rebuilt from plain types
(str, int, float, bool, None, dict, list, tuple; dataclasses and pydantic models via their fields;
numpy scalars via ``.item()``; anything else becomes the inert placeholder ``"<TypeName>"``), and a
message's reasoning given as ``reasoning_content``, ``thinking`` or ``reasoning`` is offered to the
template as both ``reasoning_content`` and ``thinking``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from oxide.errors import InvalidOptionError

_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def plain(value: Any) -> Any:
    """A copy of ``value`` built only from plain data types (see the module docstring)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # str subclasses (enums, ...) may carry methods
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if type(value).__module__ == "numpy" and callable(getattr(value, "item", None)) \
            and getattr(value, "ndim", None) == 0:
        return plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain(value.model_dump())
    return f"<{type(value).__name__}>"


def text_size(value: Any) -> int:
    """Total length of the strings inside ``value`` (keys included); used to scale output caps."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(text_size(k) + text_size(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(text_size(v) for v in value)
    return 0


def _alias_reasoning(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_KEYS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    # 'thinking' only when the message lacks it; 'reasoning_content' always set (key order as HF)
    aliased = {"thinking": reasoning, **message}
    aliased["reasoning_content"] = reasoning
    return aliased


def _as_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return value.model_dump()
    return value


def prepare_messages(messages: Any) -> list[dict]:
    """Validate and convert a conversation: a sequence of message mappings."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidOptionError(
            f"messages must be a list of dicts like {{'role': 'user', 'content': '...'}}, "
            f"got {type(messages).__name__}"
        )
    prepared = []
    for index, message in enumerate(messages):
        message = _as_dict(message)
        if not isinstance(message, Mapping):
            raise InvalidOptionError(
                f"messages[{index}] is a {type(message).__name__}; each message must be a dict "
                f"with 'role' and 'content'"
            )
        kept = {key: value for key, value in message.items() if value is not None}
        prepared.append(_alias_reasoning(plain(kept)))
    return prepared


def prepare_schemas(items: Any, what: str) -> list[dict] | None:
    """Validate ``tools`` / ``documents``: ``None`` or a list of dicts (JSON schemas, documents)."""
    if items is None:
        return None
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise InvalidOptionError(f"{what} must be a list of dicts, got {type(items).__name__}")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidOptionError(
                f"{what}[{index}] is a {type(item).__name__}; pass each one as a dict "
                f"(tools: JSON schemas like {{'type': 'function', 'function': {{...}}}})"
            )
    return plain(list(items))
