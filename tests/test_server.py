"""``oxide serve`` on a tiny model, driven by OpenAI's own Python client (and raw HTTP for malformed requests).

The tiny Llama (random weights, placeholder vocabulary ``▁t3 ▁t4 ...``) gets a small chat template, so chat
requests render; its replies are random pieces, which is all these tests need: they compare the server with
itself and with the Python API on the same file. The real model's turn is in ``test_server_real.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

import oxide
from oxide.quant import GGMLType

from _server import RunningServer, metric, oxide_server
from _tiny_models import TINY_MODELS, _write_vocab, write_gguf

TEMPLATE = ("{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('the conversation must start with a "
            "system or user message') }}{% endif %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
            "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
N_CTX = 2048
GREEDY = {"temperature": 0}


def _vocab_with_template(writer, vocab_size: int) -> None:   # noqa: ANN001 - gguf.GGUFWriter
    _write_vocab(writer, vocab_size)
    writer.add_chat_template(TEMPLATE)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(TINY_MODELS["llama"].build(), tmp_path_factory.mktemp("serve") / "tiny-llama.gguf",
                      qtype=GGMLType.Q8_0, vocab=_vocab_with_template)


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[RunningServer]:
    with oxide_server(model_path, "--n-ctx", str(N_CTX), "-np", "8", "--queue", "16") as running:
        yield running


@pytest.fixture()
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)


def _chat(client: openai.OpenAI, text: str, **options: object):   # noqa: ANN202 - the client's type
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": text}], **options)


# ---- completions, streamed or not

def test_chat_completion_counts_and_matches_the_python_api(client: openai.OpenAI, model_path: Path) -> None:
    response = _chat(client, "t5 t6 t7", max_tokens=9, extra_body={"ignore_eos": True}, **GREEDY)
    choice = response.choices[0]
    model = oxide.load(model_path, device="cpu", n_ctx=N_CTX)
    messages = [{"role": "user", "content": "t5 t6 t7"}]
    expected = model.generate(messages, max_new_tokens=9, sampling=oxide.SamplingOptions.greedy(), ignore_eos=True)
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == "length"
    assert response.usage.prompt_tokens == len(model.encode_prompt(messages))
    assert response.usage.completion_tokens == 9
    assert response.usage.total_tokens == response.usage.prompt_tokens + 9
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")


def test_chat_stream_gives_the_same_text_in_pieces(client: openai.OpenAI) -> None:
    whole = _chat(client, "t9 t10", max_tokens=12, extra_body={"ignore_eos": True}, **GREEDY)
    chunks = list(_chat(client, "t9 t10", max_tokens=12, stream=True, stream_options={"include_usage": True},
                        extra_body={"ignore_eos": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1, "the text should come in pieces"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_text_completion_streamed_and_whole(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny", prompt="t40 t41", max_tokens=10, extra_body={"ignore_eos": True},
                                      **GREEDY)
    pieces = client.completions.create(model="tiny", prompt="t40 t41", max_tokens=10, stream=True,
                                       extra_body={"ignore_eos": True}, **GREEDY)
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 10


def test_max_tokens_bounds_the_reply(client: openai.OpenAI) -> None:
    for n in (1, 4):
        response = client.completions.create(model="tiny", prompt="t3", max_tokens=n, extra_body={"ignore_eos": True})
        assert response.usage.completion_tokens == n and response.choices[0].finish_reason == "length"


def test_a_stop_string_cuts_the_text_before_it(client: openai.OpenAI) -> None:
    free = client.completions.create(model="tiny", prompt="t50 t51", max_tokens=8, extra_body={"ignore_eos": True},
                                     **GREEDY).choices[0].text
    pieces = free.split(" ")             # " t113 t113 t232 ..." -> ['', 't113', ...]
    stop = " " + pieces[3]
    expected = free[:free.index(stop)]
    for stream in (False, True):
        response = client.completions.create(model="tiny", prompt="t50 t51", max_tokens=8, stop=[stop],
                                             stream=stream, extra_body={"ignore_eos": True}, **GREEDY)
        chunks = list(response) if stream else [response]
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_a_seed_repeats_a_sampled_reply(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return _chat(client, "t20", max_tokens=16, temperature=1.0, seed=seed,
                     extra_body={"top_k": 0, "min_p": 0, "ignore_eos": True}).choices[0].message.content

    assert sample(3) == sample(3)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_logprobs_in_both_forms(client: openai.OpenAI) -> None:
    chat = _chat(client, "t7", max_tokens=4, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True},
                 **GREEDY)
    content = chat.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(entry.token for entry in content) == chat.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token               # greedy takes the likeliest
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)
    text = client.completions.create(model="tiny", prompt="t7", max_tokens=4, logprobs=2,
                                     extra_body={"ignore_eos": True}, **GREEDY)
    legacy = text.choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 4
    assert all(len(top) == 2 for top in legacy.top_logprobs)


def test_models_health_and_metrics(server: RunningServer, client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-llama.gguf"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{server.url}/metrics").text
    for family in ("oxide_http_requests_total", "oxide_queue_depth", "oxide_decode_step_seconds_sum",
                   "oxide_prompt_tokens_total", "oxide_completion_tokens_total"):
        assert f"# TYPE {family.removesuffix('_sum')} " in text
    assert metric(server, "oxide_completion_tokens_total") > 0


# ---- concurrency

def test_eight_clients_at_once_get_what_each_gets_alone(client: openai.OpenAI, server: RunningServer) -> None:
    prompts = [f"t{10 + 7 * i} t{200 - 3 * i}" for i in range(8)]

    def ask(prompt: str) -> str:
        response = _chat(client, prompt, max_tokens=24, extra_body={"ignore_eos": True}, **GREEDY)
        return response.choices[0].message.content

    alone = [ask(p) for p in prompts]
    steps_before = metric(server, "oxide_decode_step_rows_total"), metric(server, "oxide_decode_step_seconds_count")
    barrier = threading.Barrier(len(prompts))

    def together(prompt: str) -> str:
        barrier.wait()
        return ask(prompt)

    with ThreadPoolExecutor(len(prompts)) as pool:
        concurrent = list(pool.map(together, prompts))
    assert concurrent == alone
    rows = metric(server, "oxide_decode_step_rows_total") - steps_before[0]
    steps = metric(server, "oxide_decode_step_seconds_count") - steps_before[1]
    assert rows / steps > 1.5, f"the 8 requests should have been decoded in batches (mean batch {rows / steps:.2f})"


def _wait_for(condition, what: str, timeout: float = 10.0) -> None:   # noqa: ANN001 - a predicate
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_a_client_that_disconnects_frees_its_slot(client: openai.OpenAI, server: RunningServer) -> None:
    cancelled = metric(server, "oxide_requests_cancelled_total")
    stream = _chat(client, "t30", max_tokens=N_CTX - 32, stream=True, extra_body={"ignore_eos": True})
    for _, _chunk in zip(range(3), stream):
        pass
    assert metric(server, "oxide_running_sequences") == 1
    stream.close()
    _wait_for(lambda: metric(server, "oxide_running_sequences") == 0, "the slot to be freed")
    assert metric(server, "oxide_requests_cancelled_total") == cancelled + 1


def test_a_client_that_gives_up_on_a_whole_response_frees_its_slot(server: RunningServer) -> None:
    """Without streaming the server looks at the client every DISCONNECT_POLL_SECONDS while it waits."""
    cancelled = metric(server, "oxide_requests_cancelled_total")
    body = {"prompt": "t30", "max_tokens": N_CTX - 32, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.api}/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
    _wait_for(lambda: metric(server, "oxide_running_sequences") == 0, "the slot to be freed")
    assert metric(server, "oxide_requests_cancelled_total") == cancelled + 1


def test_a_full_queue_answers_503_and_the_server_keeps_serving(model_path: Path) -> None:
    with oxide_server(model_path, "--n-ctx", str(N_CTX), "-np", "1", "--queue", "1") as small:
        client = openai.OpenAI(base_url=small.api, api_key="unused", max_retries=0, timeout=60)
        busy = _chat(client, "t30", max_tokens=N_CTX - 32, stream=True, extra_body={"ignore_eos": True})
        next(iter(busy))
        waiting: list[object] = []
        waiter = threading.Thread(target=lambda: waiting.append(_chat(client, "t31", max_tokens=2)))
        waiter.start()
        _wait_for(lambda: metric(small, "oxide_queue_depth") == 1, "the second request to queue")
        with pytest.raises(openai.APIStatusError) as refused:
            _chat(client, "t32", max_tokens=2)
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body["code"] == "queue_full"
        busy.close()
        waiter.join(timeout=30)
        assert waiting and waiting[0].choices[0].finish_reason in ("stop", "length")
        assert _chat(client, "t33", max_tokens=2).usage.completion_tokens >= 1


# ---- bad requests: OpenAI's error JSON with a 4xx, never a 500 or a dropped connection

BAD_REQUESTS = {
    "malformed JSON": ("/v1/chat/completions", b'{"messages": [', 400, None),
    "not an object": ("/v1/chat/completions", b"[1, 2]", 400, None),
    "wrong type": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "t5"}], "max_tokens": "ten"},
                   400, "max_tokens"),
    "wrong content type": ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400,
                           "messages.0.content.str"),
    "unknown role": ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "t5"}]}, 400,
                     "messages.0.role"),
    "no messages": ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    "negative max_tokens": ("/v1/completions", {"prompt": "t5", "max_tokens": -3}, 400, "max_tokens"),
    "temperature out of range": ("/v1/completions", {"prompt": "t5", "temperature": 7}, 400, "temperature"),
    "n above 1": ("/v1/completions", {"prompt": "t5", "n": 2}, 400, "n"),
    "two prompts": ("/v1/completions", {"prompt": ["t5", "t6"]}, 400, "prompt"),
    "oversize prompt": ("/v1/completions", {"prompt": " ".join(["t9"] * (N_CTX + 10))}, 400, "prompt"),
    "prompt and max_tokens over the context": ("/v1/completions", {"prompt": "t5 t6", "max_tokens": N_CTX}, 400,
                                               "max_tokens"),
    "template error": ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "t5"}]}, 400, None),
    "token id out of range": ("/v1/completions", {"prompt": [1, 5, 10**6]}, 400, None),
    "image path instead of data": ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, 400, "messages"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_openai_error_json(server: RunningServer, case: str) -> None:
    path, body, status, param = BAD_REQUESTS[case]
    content = body if isinstance(body, bytes) else None
    response = httpx.post(f"{server.url}{path}", content=content, json=None if content else body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    if "context" in case or "oversize" in case:
        assert error["code"] == "context_length_exceeded"


def test_bad_requests_leave_the_server_serving(server: RunningServer, client: openai.OpenAI) -> None:
    assert httpx.get(f"{server.url}/no/such/path").status_code == 404
    assert httpx.get(f"{server.url}/no/such/path").json()["error"]["message"]
    assert _chat(client, "t5", max_tokens=3).usage.completion_tokens >= 1


def test_the_api_key_is_checked_on_every_request(model_path: Path) -> None:
    with oxide_server(model_path, "--n-ctx", "256", "--api-key", "s3cret") as keyed:
        for key in ("wrong", ""):
            client = openai.OpenAI(base_url=keyed.api, api_key=key or "x", max_retries=0, timeout=60)
            with pytest.raises(openai.AuthenticationError) as refused:
                client.models.list()
            assert refused.value.body["code"] == "invalid_api_key"
        assert httpx.post(f"{keyed.api}/completions", json={"prompt": "t5"}).status_code == 401
        assert httpx.get(f"{keyed.url}/metrics").status_code == 401
        assert httpx.get(f"{keyed.url}/health").status_code == 200           # public: no model work
        right = openai.OpenAI(base_url=keyed.api, api_key="s3cret", max_retries=0, timeout=60)
        assert right.completions.create(model="tiny", prompt="t5", max_tokens=2).usage.completion_tokens >= 1
