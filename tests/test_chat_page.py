"""The chat page that ``oxide serve`` gives at ``/`` (``oxide/server/static/index.html``), in a real browser.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, which ``.ci/run`` installs; Playwright's own browser
download is not used) against real ``python -m oxide serve`` subprocesses:

* the real default model (Gemma 3 270M; these tests are in the slow tier): a reply streams in token by token,
  with its first-token time and speed; each turn sends the whole conversation and the settings; Stop cancels;
* the tiny random Llama behind an API key (fast tier): the key from the settings reaches the server, a wrong
  key's 401 is shown, and text from the model, the user or an error is shown as text, never run as HTML.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gguf import GGMLQuantizationType as GGMLType
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from oxide.server.responses import Responder, error_body

from _server import oxide_server
from _tiny_models import TINY_MODELS, write_gguf

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_OPTIONS = ("--parallel", "1", "--n-ctx", "1024")
REPLY_MS = 120_000          # the longest a short reply of the real model may take on a busy 2-core machine
API_KEY = "secret-key"

# The last assistant message's state ("streaming", "done", "stopped", "error") and text, read in one look.
READ_REPLY = """() => {
  const reply = [...document.querySelectorAll(".message.assistant")].pop();
  return [reply.dataset.state, reply.querySelector(".content").textContent];
}"""


# ---- a server and a browser

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the chat page tests drive Debian's Chromium, which .ci/run installs "
                    f"(apt-get install chromium); install it so, then run the tests again", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page in its own context (so its own localStorage)."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def gemma_server(gemma_path: Path) -> Iterator[str]:
    with oxide_server(gemma_path, *SERVER_OPTIONS) as server:
        yield server.url


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama: it has no chat template, so only replies replaced in the browser reach the page."""
    path = tmp_path_factory.mktemp("page") / "llama.gguf"
    return write_gguf(TINY_MODELS["llama"].build(), path, qtype=GGMLType.Q8_0)


@pytest.fixture(scope="module")
def keyed_server(tiny_path: Path) -> Iterator[str]:
    with oxide_server(tiny_path, *SERVER_OPTIONS, "--api-key", API_KEY) as server:
        yield server.url


# ---- using the page

def _set_api_key(page: Page, key: str) -> None:
    page.fill("#api-key", key)
    page.press("#api-key", "Tab")           # the key is taken (and stored) when the field changes


def _set_options(page: Page, **values: object) -> None:
    for name, value in values.items():
        page.fill(f"#{name}", str(value))


def _send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


def _last_reply(page: Page):
    return page.locator(".message.assistant").last


def _watch_reply(page: Page) -> tuple[list[str], str, str]:
    """The last reply's text at each look while it streams (every 20 ms), then its final state and text."""
    seen: list[str] = []
    deadline = time.monotonic() + REPLY_MS / 1000
    while time.monotonic() < deadline:
        state, text = page.evaluate(READ_REPLY)
        if state != "streaming":
            return seen, state, text
        seen.append(text)
        time.sleep(0.02)
    pytest.fail(f"the reply was still streaming after {REPLY_MS / 1000} s; seen: {seen[-3:]}")


def _request_body(request: Any) -> dict[str, Any]:
    return json.loads(request.post_data)


# ---- the real model

def test_reply_streams_in_with_its_speed(page: Page, gemma_server: str, gemma_path: Path) -> None:
    page.goto(gemma_server)
    expect(page.locator("#model-name")).to_have_text(gemma_path.name)
    _set_options(page, temperature=0, max_tokens=16)
    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "Write a short poem about the sea.")
    seen, state, final = _watch_reply(page)

    assert state == "done" and final, (state, final)
    lengths = sorted({len(text) for text in seen if text})
    assert len(lengths) >= 2, f"the reply did not grow while it streamed: {len(seen)} looks saw lengths {lengths}"
    assert all(final.startswith(text) for text in seen), "streamed text was replaced, not appended to"
    stats = _last_reply(page).locator(".stats")
    expect(stats).to_have_text(re.compile(r"^first token \d+\.\d\d s · \d+\.\d tokens/s · \d+ tokens$"))
    body = _request_body(sent.value)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "seed" not in body                 # an empty field leaves its key out


def test_each_turn_sends_the_whole_conversation(page: Page, gemma_server: str) -> None:
    page.goto(gemma_server)
    page.fill("#system", "Answer in one line.")
    _set_options(page, temperature=0, max_tokens=6, seed=7, top_k=20, top_p=0.9, min_p=0.1, repeat_penalty=1.1)
    _send(page, "Name a colour.")
    expect(_last_reply(page)).to_have_attribute("data-state", "done", timeout=REPLY_MS)
    first_reply = page.evaluate(READ_REPLY)[1]
    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "And another?")
    expect(_last_reply(page)).to_have_attribute("data-state", "done", timeout=REPLY_MS)

    body = _request_body(sent.value)
    assert body["messages"] == [{"role": "system", "content": "Answer in one line."},
                                {"role": "user", "content": "Name a colour."},
                                {"role": "assistant", "content": first_reply},
                                {"role": "user", "content": "And another?"}]
    assert {key: body[key] for key in ("temperature", "max_tokens", "seed", "top_k", "top_p", "min_p",
                                       "repeat_penalty")} == {
        "temperature": 0, "max_tokens": 6, "seed": 7, "top_k": 20, "top_p": 0.9, "min_p": 0.1, "repeat_penalty": 1.1}


def test_stop_cancels_the_reply(page: Page, gemma_server: str) -> None:
    page.goto(gemma_server)
    _set_options(page, max_tokens=500)
    _send(page, "Tell me a long story about a lighthouse keeper.")
    reply = _last_reply(page)
    expect(reply.locator(".content")).not_to_have_text("", timeout=REPLY_MS)
    page.click("#stop")

    expect(reply).to_have_attribute("data-state", "stopped")
    expect(reply.locator(".stats")).to_have_text(re.compile(r"^stopped · first token "))
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    stopped_at = page.evaluate(READ_REPLY)[1]
    time.sleep(0.5)
    assert page.evaluate(READ_REPLY)[1] == stopped_at, "text kept arriving after Stop"


# ---- what the page shows as text (the tiny model behind an API key)

def _canned_stream(route: Route, payloads: list[dict[str, Any]]) -> None:
    """Answers the page's request with a Server-Sent Events stream of ``payloads`` then ``[DONE]``, framed as
    the server frames them."""
    events = [json.dumps(payload) for payload in payloads] + ["[DONE]"]
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                  body="".join(f"data: {event}\r\n\r\n" for event in events))


def test_model_and_user_text_is_shown_as_text(page: Page, keyed_server: str, tiny_path: Path) -> None:
    """A reply with ``<script>`` and ``<img onerror>`` (split across chunks) must appear as those characters.
    A model cannot be made to say that, so the server's reply to the page's request is replaced in the browser
    by a stream built with the server's own chunk builder; the page, its server and its request are real.
    The user's message carries HTML too."""
    pieces = ["<scr", "ipt>window.__pwned = 1</scr", "ipt>", '<img src=x onerror="window.__pwned = 2">']
    responder = Responder(True, tiny_path.name, lambda token: b"")
    headers: list[dict[str, str]] = []

    def reply(route: Route) -> None:
        headers.append(route.request.headers)
        _canned_stream(route, [responder.first_chunk(), *(responder.chunk(piece, None) for piece in pieces),
                               responder.chunk("", None, "stop")])

    page.route("**/v1/chat/completions", reply)
    page.goto(keyed_server)
    expect(page.locator("#model-name")).to_have_text("model hidden: set the API key")
    _set_api_key(page, API_KEY)
    expect(page.locator("#model-name")).to_have_text(tiny_path.name)
    user_text = '<img src=x onerror="window.__pwned = 3"><b>hi</b>'
    _send(page, user_text)

    expect(_last_reply(page)).to_have_attribute("data-state", "done")
    assert headers[0]["authorization"] == f"Bearer {API_KEY}"
    assert page.evaluate(READ_REPLY)[1] == "".join(pieces)
    expect(page.locator(".message.user .content")).to_have_text(user_text)
    expect(_last_reply(page).locator(".stats")).to_have_text(re.compile(r"· 4 tokens$"))   # no usage: chunks counted
    assert page.locator("#messages script, #messages img, #messages b").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_new_chat_starts_an_empty_conversation(page: Page, keyed_server: str, tiny_path: Path) -> None:
    responder = Responder(True, tiny_path.name, lambda token: b"")
    page.route("**/v1/chat/completions", lambda route: _canned_stream(
        route, [responder.first_chunk(), responder.chunk("Hello.", None), responder.chunk("", None, "stop")]))
    page.goto(keyed_server)
    _set_api_key(page, API_KEY)
    _send(page, "First conversation")
    expect(_last_reply(page)).to_have_attribute("data-state", "done")
    page.click("#new-chat")

    expect(page.locator(".message")).to_have_count(0)
    with page.expect_request("**/v1/chat/completions") as sent:
        _send(page, "Second conversation")
    assert _request_body(sent.value)["messages"] == [{"role": "user", "content": "Second conversation"}]


def test_wrong_api_key_shows_the_servers_error(page: Page, keyed_server: str) -> None:
    page.goto(keyed_server)
    _set_api_key(page, "wrong-key")
    _send(page, "Hello")

    reply = _last_reply(page)
    expect(reply).to_have_attribute("data-state", "error")
    expect(reply.locator(".error-text")).to_have_text(
        "Error: 401: missing or incorrect API key; send it as 'Authorization: Bearer KEY'")
    expect(page.locator(".message.user")).to_have_class(re.compile(r"\bunsent\b"))
    expect(page.locator("#prompt")).to_have_value("Hello")        # given back, to send again
    expect(page.locator("#send")).to_be_enabled()


def test_error_in_the_stream_is_shown_as_text(page: Page, keyed_server: str, tiny_path: Path) -> None:
    """An error after the stream began arrives as an ``error`` object; its message is shown, as text."""
    responder = Responder(True, tiny_path.name, lambda token: b"")
    message = "generation failed: <b>boom</b>"
    page.route("**/v1/chat/completions", lambda route: _canned_stream(
        route, [responder.first_chunk(), responder.chunk("partial", None), error_body(message, kind="server_error")]))
    page.goto(keyed_server)
    _send(page, "Hello")

    reply = _last_reply(page)
    expect(reply).to_have_attribute("data-state", "error")
    expect(reply.locator(".content")).to_have_text("partial")
    expect(reply.locator(".error-text")).to_have_text(f"Error: {message}")
    assert page.locator("#messages b").count() == 0
