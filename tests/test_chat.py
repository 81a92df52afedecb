"""Tests of oxide.chat: parity with transformers on real templates, sandbox, limits, fallbacks.

Reference: ``transformers.utils.chat_template_utils.render_jinja_template``. Real templates: the
``templates/*.jinja`` of llama.cpp, from the llama-cpp-python 0.3.36 sdist (``tests/_sdist.py``).
Conversation text is random on every run (seed printed in failures; set ``OXIDE_TEST_SEED`` to
replay) and includes non-ASCII, quotes, HTML characters, braces and newlines.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import random
import time
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from oxide.chat.fallbacks import FALLBACK_FAMILIES, builtin_template, fallback_template
from oxide.chat.template import ChatTemplate
from oxide.errors import InvalidOptionError, ModelNotFoundError, TemplateError
from _sdist import llama_cpp_models_dir  # tests/ is on sys.path (pytest rootdir-less import)
from conftest import slow_selected

SEED = int(os.environ.get("OXIDE_TEST_SEED") or random.SystemRandom().randrange(2**32))


@functools.cache
def _templates() -> list[Path]:
    """llama.cpp's chat templates (downloads the sdist on first use: only tests marked slow ask for them)."""
    return sorted((llama_cpp_models_dir() / "templates").glob("*.jinja"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One ``test_real_template_matches_transformers`` per shipped template; none listed (nor the sdist
    fetched) when slow tests are not selected, since that test is marked slow."""
    if "template" in metafunc.fixturenames:
        paths = _templates() if slow_selected(metafunc.config) else []
        metafunc.parametrize("template", paths, ids=[p.stem for p in paths])
BOS, EOS = "<|bos-7|>", "<|eos-7|>"

_WORDS = ("alpha", "Zürich", "naïve", "東京", "ñandú", "emoji🙂", "<b>", "a&b", "\"quoted\"", "it's",
          "{brace}", "{{ x }}", "50%", "line\nbreak", "tab\there", "--", "λ", "x<y>z", "path\\to")


def _text(rng: random.Random, low: int = 2, high: int = 9) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def _tools(rng: random.Random) -> list[dict]:
    return [
        {"type": "function", "function": {
            "name": "get_weather",
            "description": _text(rng),
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": _text(rng)},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            }, "required": ["location"]},
        }},
        {"type": "function", "function": {
            "name": "search",
            "description": _text(rng),
            "parameters": {"type": "object", "properties": {
                "query": {"type": "string", "description": _text(rng)}}, "required": ["query"]},
        }},
    ]


def _cases(rng: random.Random, source: str) -> dict[str, dict]:
    """Named conversations; tools/documents cases only for templates that mention them."""
    def msg(role: str) -> dict:
        return {"role": role, "content": _text(rng)}

    call_id = "".join(rng.choice("abcdefghijkLMNOP0123456789") for _ in range(9))  # Mistral wants 9
    cases = {
        "system_user": {"messages": [msg("system"), msg("user")]},
        "multi_turn": {"messages": [msg("user"), msg("assistant"), msg("user"), msg("assistant"), msg("user")]},
        "system_multi_turn": {"messages": [msg("system"), msg("user"), msg("assistant"), msg("user")],
                              "extra": {"enable_thinking": False}},
        "reasoning": {"messages": [msg("user"), {**msg("assistant"), "reasoning_content": _text(rng)},
                                   msg("user")]},
    }
    if "tool" in source:
        weather = {"location": _text(rng, 1, 2), "unit": "celsius"}
        result = {"role": "tool", "tool_call_id": call_id, "name": "get_weather",
                  "content": json.dumps({"temperature": rng.randint(-20, 40), "sky": _text(rng, 1, 3)})}
        # HF style: empty content, arguments as a dict; OpenAI style: no content, arguments as JSON text
        cases["tools"] = {"tools": _tools(rng), "messages": [
            msg("system"), msg("user"),
            {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function",
                                                                 "function": {"name": "get_weather", "arguments": weather}}]},
            result, msg("assistant"), msg("user"),
        ]}
        cases["tools_openai_style"] = {"tools": _tools(rng), "messages": [
            msg("user"),
            {"role": "assistant", "tool_calls": [{"id": call_id, "type": "function", "function": {
                "name": "get_weather", "arguments": json.dumps(weather, ensure_ascii=False)}}]},
            result,
        ]}
    if "documents" in source:
        cases["documents"] = {"messages": [msg("user")], "documents": [
            {"title": _text(rng, 1, 3), "text": _text(rng)} for _ in range(2)]}
    return cases


def _reference(source: str, case: dict, generation_prompt: bool) -> tuple[str, str]:
    try:
        rendered, _ = render_jinja_template(
            conversations=[copy.deepcopy(case["messages"])], tools=copy.deepcopy(case.get("tools")),
            documents=copy.deepcopy(case.get("documents")), chat_template=source,
            add_generation_prompt=generation_prompt, bos_token=BOS, eos_token=EOS, **case.get("extra", {}),
        )
    except Exception as exc:  # noqa: BLE001 - any reference failure must be a TemplateError in oxide
        return "error", f"{type(exc).__name__}: {exc}"
    return "ok", rendered[0]


def _oxide(template: ChatTemplate | TemplateError, case: dict, generation_prompt: bool) -> tuple[str, str]:
    if isinstance(template, TemplateError):
        return "error", str(template)
    try:
        return "ok", template.render(
            copy.deepcopy(case["messages"]), add_generation_prompt=generation_prompt, bos_token=BOS,
            eos_token=EOS, tools=case.get("tools"), documents=case.get("documents"), **case.get("extra", {}),
        )
    except TemplateError as exc:
        return "error", str(exc)


@pytest.mark.slow
def test_sdist_has_the_templates() -> None:
    assert len(_templates()) >= 70, f"expected >= 70 templates in the sdist, found {len(_templates())}"


@functools.lru_cache(maxsize=None)
def _outcomes(path: Path) -> tuple[tuple[str, bool, tuple[str, str], tuple[str, str]], ...]:
    """(case, generation prompt, transformers outcome, oxide outcome) for every case of a template."""
    source = path.read_text(encoding="utf-8")
    rng = random.Random(f"{SEED}-{path.name}")
    try:
        template: ChatTemplate | TemplateError = ChatTemplate(source, name=path.name)
    except TemplateError as exc:
        template = exc
    return tuple(
        (case_name, prompt, _reference(source, case, prompt), _oxide(template, case, prompt))
        for case_name, case in _cases(rng, source).items() for prompt in (True, False)
    )


def _agree(want: tuple[str, str], got: tuple[str, str]) -> bool:
    return want[0] == got[0] and (want[0] == "error" or want[1] == got[1])


@pytest.mark.slow
def test_real_template_matches_transformers(template: Path) -> None:
    mismatches = [f"{case} gen={prompt}:\n  transformers={want!r}\n  oxide={got!r}"
                  for case, prompt, want, got in _outcomes(template) if not _agree(want, got)]
    assert not mismatches, f"seed {SEED}: " + "\n".join(mismatches)


@pytest.mark.slow
def test_real_templates_mostly_render() -> None:
    """Guards the parity test against passing vacuously (both sides raising on most inputs)."""
    outcomes = [o for path in _templates() for o in _outcomes(path)]
    identical = sum(1 for _, _, want, got in outcomes if want[0] == "ok" and want == got)
    both_raise = sum(1 for _, _, want, got in outcomes if want[0] == got[0] == "error")
    print(f"\nreal chat templates: {identical}/{len(outcomes)} renders identical to transformers, "
          f"{both_raise} raise in both (seed {SEED})")
    assert identical >= 0.85 * len(outcomes), (identical, both_raise, len(outcomes))


def test_reasoning_and_none_keys_are_prepared_like_transformers() -> None:
    source = "{% for m in messages %}{{ m|tojson }}\n{% endfor %}"
    messages = [{"role": "user", "content": "hi", "name": None},
                {"role": "assistant", "content": "ok", "reasoning": "because", "tool_calls": None}]
    got = ChatTemplate(source).render(messages, add_generation_prompt=False)
    kept = [{k: v for k, v in m.items() if v is not None} for m in messages]
    want = render_jinja_template(conversations=[kept], chat_template=source)[0][0]
    assert got == want
    assert '"thinking": "because"' in got and '"reasoning_content": "because"' in got


def test_context_variables_reach_the_template() -> None:
    rng = random.Random(SEED)
    tools, docs, flag = _tools(rng), [{"title": _text(rng), "text": _text(rng)}], _text(rng)
    source = ("{{ bos_token }}|{{ tools|map(attribute='function.name')|join(',') }}|"
              "{{ documents[0].title }}|{{ custom }}|{{ add_generation_prompt }}|{{ eos_token }}")
    out = ChatTemplate(source).render([{"role": "user", "content": "x"}], bos_token=BOS, eos_token=EOS,
                                      tools=tools, documents=docs, custom=flag)
    assert out == f"{BOS}|get_weather,search|{docs[0]['title']}|{flag}|True|{EOS}"


def test_tojson_options_match_transformers() -> None:
    source = ("{{ x|tojson }}\n{{ x|tojson(indent=2) }}\n{{ x|tojson(separators=(',', ':')) }}\n"
              "{{ x|tojson(sort_keys=true, ensure_ascii=true) }}")
    value = {"b": "東京 <tag> & 'q'", "a": [1, 2.5, None, True]}
    got = ChatTemplate(source).render([], add_generation_prompt=False, x=value)
    want = render_jinja_template(conversations=[[]], chat_template=source, x=value)[0][0]
    assert got == want and "東京 <tag> &" in got


def test_bad_arguments_are_invalid_options() -> None:
    template = ChatTemplate("{{ messages|length }}")
    with pytest.raises(InvalidOptionError, match=r"messages\[1\]"):
        template.render([{"role": "user", "content": "a"}, "not a dict"])
    with pytest.raises(InvalidOptionError, match="tools"):
        template.render([], tools=[print])
    with pytest.raises(InvalidOptionError, match="max_render_seconds"):
        ChatTemplate("x", max_render_seconds=0)


# ---------------------------------------------------------------- errors carry name and line

def test_syntax_error_names_template_and_line() -> None:
    source = "{% for m in messages %}\n{{ m.content }}\n{% if %}\n{% endfor %}"
    with pytest.raises(TemplateError) as info:
        ChatTemplate(source, name="my-template")
    assert info.value.template_name == "my-template" and info.value.lineno == 3
    assert "'my-template', line 3" in str(info.value)


@pytest.mark.parametrize(("source", "line", "text"), [
    ("a\n{{ raise_exception('Roles must alternate user/assistant') }}", 2, "Roles must alternate"),
    ("a\nb\n\n{{ messages[0].nothing.deeper }}", 4, "UndefinedError"),
    ("{% for m in messages %}\n{{ m.content + 1 }}\n{% endfor %}", 2, "TypeError"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}\n{{ f(1) }}", 1, "RecursionError"),
])
def test_runtime_error_names_template_and_line(source: str, line: int, text: str) -> None:
    with pytest.raises(TemplateError) as info:
        ChatTemplate(source, name="rt").render([{"role": "user", "content": "hi"}])
    assert info.value.template_name == "rt" and info.value.lineno == line, str(info.value)
    assert f"'rt', line {line}" in str(info.value) and text in str(info.value)


# ---------------------------------------------------------------- sandbox

@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ (1).__class__.__base__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__['os'] }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__ }}",
    "{{ namespace.__init__ }}",
    "{{ dict.__class__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ messages.__class__.__subclasses__() }}",
    "{{ ''|attr('__class__') }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ messages.append(1) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{% set ns = namespace(__dict__=1) %}",
    "{% set ns = namespace() %}{% set ns._private = 1 %}",
    "{{ open('/etc/passwd').read() }}",
    "{{ __import__('os') }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
])
def test_sandbox_escape_raises(source: str) -> None:
    with pytest.raises(TemplateError):
        ChatTemplate(source, name="evil").render([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------- render limits

@pytest.mark.parametrize(("source", "limit"), [
    ("{% for i in range(10**12) %}x{% endfor %}", 0.5),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", 1.5),
    ("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}", 1.5),
    ("{% set s %}{% for i in range(100000) %}{% for j in range(100000) %}a{% endfor %}{% endfor %}"
     "{% endset %}", 1.5),
    ("{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}", 1.5),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", 1.5),
    ("{% set ns = namespace(s=[1, 2]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", 1.5),
    ("{{ 'x' * 10**10 }}", 0.5),
    ("{{ [1] * 10**10 }}", 0.5),
    ("{{ 'x'|center(10**10) }}", 0.5),
    ("{{ 'x'|indent(10**10) }}", 0.5),
    ("{{ 'x'.ljust(10**10) }}", 0.5),
    ("{{ 2 ** 100000000 }}", 0.5),
    ("{{ '%0999999999d' % 1 }}", 0.5),
    ("{{ '{:>999999999}'.format(1) }}", 0.5),
    ("{{ '%999999999s'|format(1) }}", 0.5),
    ("{{ lipsum(n=100000) }}", 0.5),
])
def test_runaway_render_is_stopped(source: str, limit: float) -> None:
    template = ChatTemplate(source, name="runaway", max_render_seconds=0.5)
    start = time.monotonic()
    with pytest.raises(TemplateError, match="runaway"):
        template.render([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < limit


def test_output_cap_scales_with_input_and_is_configurable() -> None:
    rng = random.Random(SEED)
    big = "".join(rng.choice("abcdefgh ") for _ in range(3 << 20))  # 3 MiB of input text
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", max_output_chars=1000)
    assert template.render([{"role": "user", "content": big}]) == big
    with pytest.raises(TemplateError, match="cap"):
        ChatTemplate("{% for i in range(2000) %}x{% endfor %}", max_output_chars=1000).render([])
    assert ChatTemplate("{% for i in range(900) %}x{% endfor %}", max_output_chars=1000).render([]) == "x" * 900


# ---------------------------------------------------------------- loading

def test_from_gguf_metadata() -> None:
    meta = {"tokenizer.chat_template": "{{ messages[0].content }}!",
            "tokenizer.chat_template.tool_use": "tools:{{ tools|length }}"}
    assert ChatTemplate.from_gguf_metadata(meta).render([{"role": "user", "content": "hey"}]) == "hey!"
    assert ChatTemplate.from_gguf_metadata(meta, "tool_use").render([], tools=[{"a": 1}]) == "tools:1"
    assert ChatTemplate.from_gguf_metadata(meta, "rag") is None
    assert ChatTemplate.from_gguf_metadata({"general.architecture": "llama"}) is None
    with pytest.raises(TemplateError, match="tokenizer.chat_template"):
        ChatTemplate.from_gguf_metadata({"tokenizer.chat_template": 3})


def test_from_hf_dir(tmp_path: Path) -> None:
    assert ChatTemplate.from_hf_dir(tmp_path) is None
    with pytest.raises(ModelNotFoundError):
        ChatTemplate.from_hf_dir(tmp_path / "missing")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "plain:{{ messages|length }}"}))
    assert ChatTemplate.from_hf_dir(tmp_path).render([{"role": "user", "content": "x"}]) == "plain:1"
    config.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "T"},
                                                    {"name": "default", "template": "D"}]}))
    assert ChatTemplate.from_hf_dir(tmp_path).render([]) == "D"
    assert ChatTemplate.from_hf_dir(config, variant="tool_use").render([]) == "T"
    assert ChatTemplate.from_hf_dir(tmp_path, variant="rag") is None
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "rag.jinja").write_text("R")
    assert ChatTemplate.from_hf_dir(tmp_path, variant="rag").render([]) == "R"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert ChatTemplate.from_hf_dir(tmp_path).render([]) == "J"
    (tmp_path / "chat_template.jinja").unlink()
    config.write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "T"}]}))
    with pytest.raises(TemplateError, match="variant"):
        ChatTemplate.from_hf_dir(tmp_path)


# ---------------------------------------------------------------- fallbacks

def test_chatml_fallback_exact() -> None:
    template = fallback_template({"<|im_start|>": 151644, "<|im_end|>": 151645, "<|endoftext|>": 151643})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "Two"}, {"type": "image"},
                                             {"type": "text", "text": " parts"}]}]
    assert template.render(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nTwo parts<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert template.render(messages[:2], add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")


def test_gemma_fallback_exact() -> None:
    template = fallback_template({"<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert template.render(messages, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert template.render(messages[1:2], bos_token="<bos>", add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n")
    with pytest.raises(TemplateError, match="roles"):
        template.render([{"role": "tool", "content": "x"}])


# family: (special tokens, text the generation prompt appends, how the prompt ends)
_FAMILIES = {
    "chatml": ({"<|im_start|>", "<|im_end|>"}, "<|im_start|>assistant\n", "<|im_start|>assistant\n"),
    "gemma": ({"<start_of_turn>", "<end_of_turn>"}, "<start_of_turn>model\n", "<start_of_turn>model\n"),
    "llama3": ({"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
               "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|end_header_id|>\n\n"),
    "phi3": ({"<|user|>", "<|assistant|>", "<|end|>", "<|system|>"}, "<|assistant|>\n", "<|assistant|>\n"),
    "deepseek": ({"<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"}, "<｜Assistant｜>", "<｜Assistant｜>"),
    "mistral": ({"<s>", "</s>", "[INST]", "[/INST]"}, "", "[/INST]"),
    "llama2": ({"<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>"}, "", " [/INST]"),
}


@pytest.mark.parametrize("family", FALLBACK_FAMILIES)
def test_fallback_detection_and_sane_render(family: str, caplog: pytest.LogCaptureFixture) -> None:
    tokens, generation_prompt, prompt_end = _FAMILIES[family]
    with caplog.at_level(logging.INFO, logger="oxide.template"):
        template = fallback_template(tokens)
    assert template is builtin_template(family)
    assert any(family in r.getMessage() and r.name == "oxide.template" for r in caplog.records)
    rng = random.Random(f"{SEED}-{family}")
    # numbered, so that no message's text can occur inside another's (random words alone sometimes did)
    texts = [f"message{i} {_text(rng).strip()}" for i in range(4)]
    messages = [{"role": r, "content": t} for r, t in zip(("system", "user", "assistant", "user"), texts)]
    out = template.render(messages, bos_token="<BOS>", eos_token="<EOS>")
    positions = [out.find(t) for t in texts]
    order = [1, 2, 0, 3] if family == "mistral" else [0, 1, 2, 3]  # Mistral: system before last user
    assert all(p >= 0 for p in positions) and [positions[i] for i in order] == sorted(positions), out
    assert all(out.count(t) == 1 for t in texts), out
    assert out.endswith(prompt_end), out
    without = template.render(messages, bos_token="<BOS>", eos_token="<EOS>", add_generation_prompt=False)
    assert out == without + generation_prompt


@pytest.mark.slow
@pytest.mark.parametrize(("family", "real", "with_system"), [
    ("gemma", "google-gemma-2-2b-it.jinja", False),
    ("chatml", "Qwen-Qwen2.5-7B-Instruct.jinja", True),
    ("phi3", "microsoft-Phi-3.5-mini-instruct.jinja", True),
])
def test_fallback_equals_the_real_template_of_its_family(family: str, real: str, with_system: bool) -> None:
    """Where a shipped template writes the plain format, the built-in one must agree with it."""
    rng = random.Random(f"{SEED}-{family}-real")
    roles = (["system"] if with_system else []) + ["user", "assistant", "user", "assistant", "user"]
    messages = [{"role": role, "content": _text(rng)} for role in roles]
    source = (llama_cpp_models_dir() / "templates" / real).read_text(encoding="utf-8")
    want = render_jinja_template(conversations=[messages], chat_template=source, add_generation_prompt=True,
                                 bos_token=BOS, eos_token=EOS)[0][0]
    assert builtin_template(family).render(messages, bos_token=BOS, eos_token=EOS) == want


def test_fallback_none_when_nothing_matches(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="oxide.template"):
        assert fallback_template({"<s>", "</s>", "<unk>"}) is None
    assert caplog.records, "the miss is logged"
    with pytest.raises(InvalidOptionError, match="chatml"):
        builtin_template("vicuna")
