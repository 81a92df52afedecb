"""The Jinja2 environment chat templates run in: HF-compatible, sandboxed and bounded.

Compatibility follows ``transformers.utils.chat_template_utils`` (``_cached_compile_jinja_template``):
an ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension and a ``{% generation %}`` block tag, plus these template-visible names:

- ``raise_exception(message)``: abort the render with the template's own message;
- ``strftime_now(fmt)``: ``datetime.now().strftime(fmt)``;
- ``tojson``: ``json.dumps(x, ensure_ascii=False, indent, separators, sort_keys)`` (no HTML escaping);
- ``dict``: builds dicts (``dict(...)``, ``dict.fromkeys``) without exposing the ``dict`` type;
- ``namespace``: refuses underscore-prefixed attribute names.

Safety beyond the stock sandbox:

- reaching an unsafe attribute (``__class__``, ``__globals__``, ``list.append`` ...) raises at once
  instead of yielding an undefined value;
- every render runs under a :class:`RenderBudget` (wall-clock deadline, size cap). The deadline is
  checked on each loop iteration (every ``{% for %}`` iterable is wrapped at compile time), call,
  attribute/item lookup, filter, intercepted operator and namespace store; sizes are checked on the
  values those produce, and width-like arguments (``center``, ``indent``, ``'x' * n``, ``%1000000d``,
  ``**``) are refused before they allocate.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum

#: Width/count arguments at or above this are refused (``center``, ``indent``, ``ljust``, format widths).
MAX_WIDTH = 100_000
#: Integer results of ``**`` and ``*`` may have at most this many bits (~30k decimal digits).
MAX_INT_BITS = 100_000

# A %-conversion or {}-field whose width or precision has 6+ digits (>= MAX_WIDTH).
_WIDE_FORMAT = re.compile(r"%[^a-zA-Z%]*\d{6,}|\{[^{}]*:[^{}]*\d{6,}[^{}]*\}")
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_WIDTH_FILTERS = frozenset({"center", "indent", "batch", "slice", "tojson"})


class RenderLimitExceeded(Exception):
    """A render ran past its deadline or built a value/output larger than its cap."""


class TemplateRaised(Exception):
    """The template called ``raise_exception(message)``."""


@dataclass
class RenderBudget:
    """Limits of one render: a monotonic-clock deadline and a cap on any value's length."""

    deadline: float
    timeout_s: float
    max_chars: int

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(
                f"the render ran longer than {self.timeout_s:g} s (the template may loop forever)"
            )

    def check_size(self, value: Any) -> None:
        if isinstance(value, (str, list, tuple, dict)) and len(value) > self.max_chars:
            raise RenderLimitExceeded(
                f"the template built a {type(value).__name__} of {len(value)} items/characters, "
                f"more than the cap of {self.max_chars}"
            )


_BUDGET: ContextVar[RenderBudget | None] = ContextVar("oxide_chat_budget", default=None)


@contextmanager
def render_budget(timeout_s: float, max_chars: int) -> Iterator[RenderBudget]:
    """Make ``RenderBudget(now + timeout_s, max_chars)`` the limits of renders in this context."""
    budget = RenderBudget(time.monotonic() + timeout_s, timeout_s, max_chars)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.tick()


def _check_size(value: Any) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_size(value)


def _refuse_width(what: str, value: Any) -> None:
    size = len(value) if isinstance(value, str) else value
    if isinstance(size, int) and abs(size) >= MAX_WIDTH:
        raise RenderLimitExceeded(f"{what} argument {size} is too large (limit {MAX_WIDTH - 1})")


def _refuse_wide_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
        raise RenderLimitExceeded(f"format string {fmt[:80]!r} has a width or precision >= {MAX_WIDTH}")


def _int_bits(value: Any) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _refuse_big_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``*``, ``**`` and ``%`` whose result would be huge, before computing it."""
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                budget = _BUDGET.get()
                if budget is not None and len(seq) * count > budget.max_chars:
                    raise RenderLimitExceeded(
                        f"repeating a {type(seq).__name__} of length {len(seq)} {count} times "
                        f"exceeds the cap of {budget.max_chars}"
                    )
        if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
            raise RenderLimitExceeded(f"integer product larger than {MAX_INT_BITS} bits")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if _int_bits(left) * right > MAX_INT_BITS:
                raise RenderLimitExceeded(f"integer power larger than {MAX_INT_BITS} bits")
    elif operator == "%":
        _refuse_wide_format(left)


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    """Jinja's ``lipsum`` global, refusing more than ``MAX_WIDTH`` words in all."""
    _refuse_width("lipsum", n * max)
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def raise_exception(message: Any) -> None:
    """Template global: stop the render with the template's own message."""
    raise TemplateRaised(str(message))


def strftime_now(fmt: str) -> str:
    """Template global: the local time now, formatted with ``datetime.strftime``."""
    return datetime.now().strftime(fmt)


def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None,
           separators: Any = None, sort_keys: bool = False) -> str:
    """``json.dumps`` with transformers' defaults: non-ASCII kept, no HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


class DictFactory:
    """The ``dict`` templates see: calling it and ``fromkeys`` build dicts; nothing else is exposed."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Iterable[Any], value: Any = None) -> dict:
        return dict.fromkeys(keys, value)


def _check_namespace_key(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(
            f"chat templates may not store underscore-prefixed names on a namespace (got {name!r})"
        )


class SafeNamespace(Namespace):
    """``namespace()`` for templates: no underscore-prefixed names, stored values size-checked."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same calling trick as Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for key in attrs:
            _check_namespace_key(key)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_key(name)
        _tick()
        _check_size(value)
        Namespace.__setitem__(self, name, value)


class GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged.

    transformers uses the tag to find assistant tokens for training masks; for inference only the
    text matters. The body is compiled as a call block, as transformers does, so scoping is the same.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class GuardedIterable:
    """Wraps a ``{% for %}`` iterable: checks the render deadline on every item; ``len`` passes through."""

    __slots__ = ("_items",)

    def __init__(self, items: Any) -> None:
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            _tick()
            yield item

    def __len__(self) -> int:
        return len(self._items)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter with deadline, argument-width and result-size checks (keeps its pass_* marker)."""

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if name in _WIDTH_FILTERS:
            for value in (*args[1:], *kwargs.values()):
                _refuse_width(f"filter {name!r}", value)
        elif name == "format" and args:
            _refuse_wide_format(args[0])
        result = func(*args, **kwargs)
        _check_size(result)
        return result

    return guarded


class ChatSandbox(ImmutableSandboxedEnvironment):
    """Environment for chat templates (see the module docstring)."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[GenerationTag, "jinja2.ext.loopcontrols"],
        )
        self.filters["tojson"] = tojson
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.globals.update(
            raise_exception=raise_exception,
            strftime_now=strftime_now,
            dict=DictFactory(),
            namespace=SafeNamespace,
            lipsum=bounded_lipsum,
        )

    def compile_template(self, source: str, name: str) -> Any:
        """Parse ``source``, wrap every ``{% for %}`` iterable in :meth:`guard_iter`, compile it.

        The code's filename is ``<name>``, so runtime tracebacks point at template lines.
        """
        filename = f"<{name}>"
        tree = self.parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            guard = nodes.EnvironmentAttribute("guard_iter", lineno=loop.iter.lineno)
            loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.iter.lineno)
        tree.set_environment(self)
        code = self.compile(tree, name, filename)
        return self.template_class.from_code(self, code, self.make_globals(None), None)

    def guard_iter(self, items: Any) -> GuardedIterable:
        return GuardedIterable(items)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed"
        )

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        name = getattr(obj, "__name__", None)
        owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
        if isinstance(owner, str):
            if name in _WIDTH_METHODS:
                for value in (*args, *kwargs.values()):
                    _refuse_width(f"str.{name}", value)
            elif name in ("format", "format_map"):
                _refuse_wide_format(owner)
        result = super().call(context, obj, *args, **kwargs)
        _check_size(result)
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _refuse_big_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        _check_size(result)
        return result
