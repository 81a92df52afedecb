"""``ChatTemplate``: a model's Jinja chat template, rendered the way transformers renders it.

Rendering matches ``transformers.utils.chat_template_utils.render_jinja_template`` (same
environment, globals and filters: see :mod:`oxide.chat.sandbox`; same input preparation: see
:mod:`oxide.chat.inputs`), with the template context ``messages``, ``tools``, ``documents``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` and any extra keyword arguments.

Every failure — syntax, undefined value, runtime error, ``raise_exception(...)``, sandbox
violation, deadline or size cap — raises :class:`oxide.errors.TemplateError` naming the template
and, where Jinja knows it, the template line (also on the error as ``.template_name``/``.lineno``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2.exceptions import SecurityError, TemplateSyntaxError

from oxide.chat.inputs import plain, prepare_messages, prepare_schemas, text_size
from oxide.chat.sandbox import (
    ChatSandbox,
    RenderBudget,
    RenderLimitExceeded,
    TemplateRaised,
    render_budget,
)
from oxide.errors import InvalidOptionError, ModelFormatError, ModelNotFoundError, TemplateError
from oxide.log import get_logger

log = get_logger("template")

#: Output cap of a render, in characters, before adding 4 per character of input text.
DEFAULT_MAX_OUTPUT_CHARS = 1 << 20
#: Wall-clock cap of a render, in seconds.
DEFAULT_MAX_RENDER_SECONDS = 2.0
_INPUT_EXPANSION = 4

_ENV = ChatSandbox()


class ChatTemplate:
    """A compiled chat template.

    ``max_output_chars``: a render may produce (and build values of) at most
    ``max_output_chars + 4 * <characters of text in its inputs>`` characters/items.
    ``max_render_seconds``: a render is stopped after this much wall-clock time.
    """

    def __init__(
        self,
        source: str,
        *,
        name: str = "chat_template",
        max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
        max_render_seconds: float = DEFAULT_MAX_RENDER_SECONDS,
    ) -> None:
        if not isinstance(source, str):
            raise TemplateError(
                f"chat template {name!r} must be a str of Jinja source, got {type(source).__name__}"
            )
        if not (isinstance(max_output_chars, int) and max_output_chars > 0):
            raise InvalidOptionError(f"max_output_chars must be a positive int, got {max_output_chars!r}")
        if not (isinstance(max_render_seconds, (int, float)) and max_render_seconds > 0):
            raise InvalidOptionError(
                f"max_render_seconds must be a positive number, got {max_render_seconds!r}"
            )
        self.source = source
        self.name = name
        self.max_output_chars = max_output_chars
        self.max_render_seconds = float(max_render_seconds)
        try:
            self._template = _ENV.compile_template(source, name)
        except Exception as exc:
            raise _template_error(exc, name) from exc

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, {len(self.source)} chars)"

    @classmethod
    def from_gguf_metadata(
        cls, metadata: Mapping[str, Any], variant: str | None = None, *, source: str = ""
    ) -> ChatTemplate | None:
        """The template under ``tokenizer.chat_template`` (or ``tokenizer.chat_template.<variant>``);
        ``source``: the file, named in errors.

        Returns ``None`` when the key is absent.
        """
        key = "tokenizer.chat_template" if variant is None else f"tokenizer.chat_template.{variant}"
        where = f"{source}: " if source else ""
        value = metadata.get(key)
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "surrogateescape")
        if not isinstance(value, str):
            raise TemplateError(
                f"{where}GGUF metadata key {key!r} holds a {type(value).__name__}, expected the template "
                f"string; the file is malformed: re-convert the model"
            )
        log.debug("chat template from GGUF metadata key %s (%d chars)", key, len(value))
        return cls(value, name=f"{where}{key}")

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike[str], variant: str | None = None) -> ChatTemplate | None:
        """The template of a Hugging Face model folder, looked up as transformers does.

        Without ``variant``: ``chat_template.jinja``, else ``tokenizer_config.json``'s
        ``chat_template`` (a string, or a list of ``{name, template}`` whose ``default`` entry is
        used), else ``chat_template.json``. With ``variant``: ``additional_chat_templates/<variant>.jinja``
        or the list entry of that name. Returns ``None`` when the folder has none.
        """
        root = Path(path)
        if not root.exists():
            raise ModelNotFoundError(f"{root}: no such folder; pass the folder holding tokenizer_config.json")
        if root.is_file():
            root = root.parent
        if variant is not None:
            extra = root / "additional_chat_templates" / f"{variant}.jinja"
            if extra.is_file():
                return cls(extra.read_text(encoding="utf-8"), name=str(extra))
            return _template_from_config(cls, root / "tokenizer_config.json", variant)
        jinja = root / "chat_template.jinja"
        if jinja.is_file():
            return cls(jinja.read_text(encoding="utf-8"), name=str(jinja))
        found = _template_from_config(cls, root / "tokenizer_config.json", "default")
        if found is None:
            found = _template_from_config(cls, root / "chat_template.json", "default")
        return found

    def render(
        self,
        messages: list[dict],
        *,
        add_generation_prompt: bool = True,
        bos_token: str = "",
        eos_token: str = "",
        tools: list | None = None,
        documents: list | None = None,
        **extra: Any,
    ) -> str:
        """Render a conversation to prompt text.

        ``messages``: dicts with ``role`` and ``content`` (str or a list of parts), optionally
        ``tool_calls``, ``tool_call_id``, ``name``, ``reasoning_content``; keys set to ``None`` are
        dropped. ``tools``: JSON schemas; ``documents``: dicts; ``extra`` reaches the template as
        variables (e.g. ``enable_thinking=False``).
        """
        context = {
            "bos_token": bos_token,
            "eos_token": eos_token,
            **plain(extra),
            "messages": prepare_messages(messages),
            "tools": prepare_schemas(tools, "tools"),
            "documents": prepare_schemas(documents, "documents"),
            "add_generation_prompt": add_generation_prompt,
        }
        cap = self.max_output_chars + _INPUT_EXPANSION * text_size(context)
        with render_budget(self.max_render_seconds, cap) as budget:
            try:
                return _collect(self._template.generate(context), budget)
            except Exception as exc:
                raise _template_error(exc, self.name) from exc


def _collect(stream: Iterator[str], budget: RenderBudget) -> str:
    """Join the rendered pieces, stopping once the output passes the budget's cap."""
    parts: list[str] = []
    size = 0
    with closing(stream):
        for piece in stream:
            size += len(piece)
            if size > budget.max_chars:
                raise RenderLimitExceeded(f"the output passed the cap of {budget.max_chars} characters")
            budget.tick()
            parts.append(piece)
    return "".join(parts)


def _template_from_config(cls: type[ChatTemplate], path: Path, wanted: str) -> ChatTemplate | None:
    """``chat_template`` of a JSON config: a string (only for ``default``) or a list of named entries."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc}); fix or re-download the file") from exc
    value = config.get("chat_template") if isinstance(config, dict) else None
    if value is None:
        return None
    if isinstance(value, str):
        return cls(value, name=str(path)) if wanted == "default" else None
    if isinstance(value, list) and all(isinstance(e, dict) and "name" in e and "template" in e for e in value):
        for entry in value:
            if entry["name"] == wanted:
                return cls(entry["template"], name=f"{path}:{wanted}")
        if wanted == "default":
            names = ", ".join(repr(e["name"]) for e in value)
            raise TemplateError(
                f"{path}: 'chat_template' has no 'default' entry (entries: {names}); "
                f"pass variant=<name> to choose one"
            )
        return None
    raise ModelFormatError(
        f"{path}: 'chat_template' must be a string or a list of {{'name', 'template'}} entries, "
        f"got {type(value).__name__}"
    )


def _template_line(tb: TracebackType | None, filename: str) -> int | None:
    """Line of the innermost traceback entry inside the template (Jinja rewrites these frames)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _template_error(exc: Exception, name: str) -> TemplateError:
    """Translate any render/compile failure into a ``TemplateError`` naming template and line."""
    if isinstance(exc, TemplateSyntaxError):
        lineno = exc.lineno
    else:
        lineno = _template_line(exc.__traceback__, f"<{name}>")
    where = f"chat template {name!r}" + (f", line {lineno}" if lineno else "")
    if isinstance(exc, TemplateSyntaxError):
        message = f"{where}: syntax error: {exc.message}. Fix the template source or use another template"
    elif isinstance(exc, TemplateRaised):
        message = (
            f"{where}: the template rejected the conversation: {exc}. Change the messages "
            f"(roles, order, fields) to what this template accepts"
        )
    elif isinstance(exc, RenderLimitExceeded):
        message = (
            f"{where}: render stopped: {exc}. If the template is legitimate, raise "
            f"max_render_seconds / max_output_chars"
        )
    elif isinstance(exc, SecurityError):
        message = f"{where}: unsafe operation blocked by the sandbox: {exc}. Do not use this template"
    else:
        message = (
            f"{where}: {type(exc).__name__}: {exc}. The template failed on this input: check the "
            f"messages' fields against what the template expects"
        )
    error = TemplateError(message)
    error.template_name = name
    error.lineno = lineno
    return error
