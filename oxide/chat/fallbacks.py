"""Built-in chat templates for models that ship none, chosen from the vocabulary's special tokens.

Each template writes the prompt format its model family documents:

- ``chatml`` (Qwen, Hermes, Yi, ...): ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; the prompt
  ends with ``<|im_start|>assistant\\n``.
- ``llama3``: ``{bos}<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``; role
  ``tool`` is written as ``ipython``.
- ``gemma``: ``{bos}<start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n...``; the
  system message is put before the first user turn's text, followed by a blank line (Gemma 3).
- ``phi3``: ``<|{role}|>\\n{content}<|end|>\\n``, ending with ``<|assistant|>\\n``.
- ``deepseek`` (V3/R1): ``{bos}{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>``.
- ``mistral`` (v3 tokenizers): ``{bos}[INST] {user}[/INST] {answer}{eos}``; system text goes before
  the last user message, followed by a blank line.
- ``llama2``: ``{bos}[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} {eos}`` per turn.

Message content may be a string or a list of parts (only ``{"type": "text"}`` parts are written).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

from oxide.chat.template import ChatTemplate
from oxide.errors import InvalidOptionError
from oxide.log import get_logger

log = get_logger("template")

_TEXT = """\
{%- macro text(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
"""


def _only_roles(family: str, roles: str) -> str:
    return (
        "{{- raise_exception('the built-in " + family + " template supports the roles " + roles
        + ", not ' ~ message.role) -}}"
    )


_SOURCES = {
    "chatml": _TEXT + """\
{%- for message in messages -%}
{{- '<|im_start|>' + message.role + '\\n' + text(message.content) + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
""",
    "llama3": _TEXT + """\
{{- bos_token -}}
{%- for message in messages -%}
{%- set role = 'ipython' if message.role == 'tool' else message.role -%}
{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + text(message.content)|trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
""",
    "gemma": _TEXT + """\
{{- bos_token -}}
{%- set ns = namespace(prefix='') -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.prefix = text(messages[0].content) + '\\n\\n' -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if message.role not in ('user', 'assistant') -%}
""" + _only_roles("Gemma", "system (first message only), user and assistant") + """
{%- endif -%}
{%- set role = 'model' if message.role == 'assistant' else 'user' -%}
{{- '<start_of_turn>' + role + '\\n' + (ns.prefix if loop.first else '') + text(message.content)|trim + '<end_of_turn>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
""",
    "phi3": _TEXT + """\
{%- for message in messages -%}
{%- if message.role not in ('system', 'user', 'assistant') -%}
""" + _only_roles("Phi-3", "system, user and assistant") + """
{%- endif -%}
{{- '<|' + message.role + '|>\\n' + text(message.content) + '<|end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}
""",
    "deepseek": _TEXT + """\
{{- bos_token -}}
{%- for message in messages if message.role == 'system' -%}
{{- ('' if loop.first else '\\n\\n') + text(message.content) -}}
{%- endfor -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
{{- '<｜User｜>' + text(message.content) -}}
{%- elif message.role == 'assistant' -%}
{{- '<｜Assistant｜>' + text(message.content) + '<｜end▁of▁sentence｜>' -}}
{%- elif message.role != 'system' -%}
""" + _only_roles("DeepSeek", "system, user and assistant") + """
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}
""",
    "mistral": _TEXT + """\
{{- bos_token -}}
{%- set ns = namespace(system='', last_user=-1) -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + text(message.content) -%}
{%- elif message.role == 'user' -%}
{%- set ns.last_user = loop.index0 -%}
{%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
{%- if message.role == 'user' -%}
{%- set system = ns.system + '\\n\\n' if loop.index0 == ns.last_user and ns.system else '' -%}
{{- '[INST] ' + system + text(message.content) + '[/INST]' -}}
{%- elif message.role == 'assistant' -%}
{{- ' ' + text(message.content)|trim + eos_token -}}
{%- elif message.role != 'system' -%}
""" + _only_roles("Mistral", "system, user and assistant") + """
{%- endif -%}
{%- endfor -%}
""",
    "llama2": _TEXT + """\
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set ns.system = '<<SYS>>\\n' + text(messages[0].content)|trim + '\\n<</SYS>>\\n\\n' -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- if message.role == 'user' -%}
{{- bos_token + '[INST] ' + (ns.system if loop.first else '') + text(message.content)|trim + ' [/INST]' -}}
{%- elif message.role == 'assistant' -%}
{{- ' ' + text(message.content)|trim + ' ' + eos_token -}}
{%- else -%}
""" + _only_roles("Llama 2", "system (first message only), user and assistant") + """
{%- endif -%}
{%- endfor -%}
""",
}

#: Detection rules, most specific first: (family, special tokens that must all be present).
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("deepseek", ("<｜User｜>", "<｜Assistant｜>")),
    ("llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    ("gemma", ("<start_of_turn>", "<end_of_turn>")),
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("phi3", ("<|user|>", "<|end|>")),
    ("llama2", ("[INST]", "<<SYS>>")),
    ("mistral", ("[INST]",)),
)

#: Names accepted by :func:`builtin_template`.
FALLBACK_FAMILIES: tuple[str, ...] = tuple(_SOURCES)


@lru_cache(maxsize=None)
def builtin_template(family: str) -> ChatTemplate:
    """The built-in template of ``family`` (one of :data:`FALLBACK_FAMILIES`)."""
    if family not in _SOURCES:
        raise InvalidOptionError(
            f"unknown chat template family {family!r}; choose one of {', '.join(FALLBACK_FAMILIES)}"
        )
    return ChatTemplate(_SOURCES[family], name=f"builtin:{family}")


def fallback_template(special_tokens: Mapping[str, int] | Iterable[str]) -> ChatTemplate | None:
    """Pick a built-in template from the special tokens a vocabulary has (token -> id, or strings).

    Returns ``None`` when no family's markers are all present. The choice is logged on
    ``oxide.template``.
    """
    tokens = set(special_tokens.keys() if isinstance(special_tokens, Mapping) else special_tokens)
    for family, markers in _RULES:
        if all(marker in tokens for marker in markers):
            log.info(
                "no chat template in the model: using the built-in %s template (vocabulary has %s)",
                family, ", ".join(markers),
            )
            return builtin_template(family)
    log.info("no chat template in the model and no built-in template matches its special tokens")
    return None
