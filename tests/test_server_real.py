"""``oxide serve`` on the real model (Gemma 3 270M Q4_K_M), driven by OpenAI's own Python client: real text
through Gemma's own chat template, streamed and whole, stops, budgets, seeds, usage, and a second chat turn
that reuses the first turn's keys and gives what a cold prefill gives.

The model is Gemma 3 270M's base (pretrained) model: asked a question through the chat template it tends to
repeat it (llama.cpp's greedy run on the same ids does too), so replies are compared with the Python API's on
the same file, not with an expected answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

import oxide

from _server import RunningServer, oxide_server

GREEDY = {"temperature": 0}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def server(gemma_path: Path) -> Iterator[RunningServer]:
    with oxide_server(gemma_path, "--n-ctx", "2048", "-np", "4") as running:
        yield running


@pytest.fixture()
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


def test_chat_answers_in_text_streamed_or_whole(client: openai.OpenAI, gemma: oxide.Model) -> None:
    whole = client.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=40, **GREEDY)
    answer = whole.choices[0].message.content
    expected = gemma.generate(QUESTION, max_new_tokens=40, sampling=oxide.SamplingOptions.greedy())
    assert answer == expected.text and whole.choices[0].finish_reason == expected.finish_reason
    assert whole.usage.completion_tokens == len(expected.token_ids)
    assert whole.usage.prompt_tokens == len(gemma.encode_prompt(QUESTION))
    stream = client.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=40, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_text_completion_stop_and_budget(client: openai.OpenAI) -> None:
    free = client.completions.create(model="gemma", prompt="Monday, Tuesday, Wednesday,", max_tokens=12,
                                     **GREEDY).choices[0].text
    assert "Thursday" in free
    stopped = client.completions.create(model="gemma", prompt="Monday, Tuesday, Wednesday,", max_tokens=12,
                                        stop=["Friday"], **GREEDY).choices[0]
    assert stopped.text == free[:free.index("Friday")] and stopped.finish_reason == "stop"
    short = client.completions.create(model="gemma", prompt="Monday, Tuesday, Wednesday,", max_tokens=3, **GREEDY)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=24, temperature=1.0,
                                              seed=seed).choices[0].message.content

    assert sample(42) == sample(42)


def test_a_role_the_template_refuses_is_a_400(client: openai.OpenAI) -> None:
    """The file has no template, so oxide's built-in Gemma one renders, and it takes no ``tool`` messages."""
    with pytest.raises(openai.BadRequestError, match="supports the roles"):
        client.chat.completions.create(model="gemma", max_tokens=4,
                                       messages=[*QUESTION, {"role": "tool", "content": "42"}])


def test_a_second_turn_prefills_only_the_new_message(client: openai.OpenAI, gemma_path: Path) -> None:
    first = client.chat.completions.create(model="gemma", messages=QUESTION, max_tokens=40, **GREEDY)
    turn = [*QUESTION, {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And of Italy?"}]
    second = client.chat.completions.create(model="gemma", messages=turn, max_tokens=30, **GREEDY)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens + first.usage.completion_tokens - 2
    with oxide_server(gemma_path, "--n-ctx", "2048", "-np", "1") as cold_server:
        cold_client = openai.OpenAI(base_url=cold_server.api, api_key="unused", max_retries=0, timeout=120)
        cold = cold_client.chat.completions.create(model="gemma", messages=turn, max_tokens=30, **GREEDY)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert cold.choices[0].message.content == second.choices[0].message.content
