"""Second-turn time to first token: what a server's prefix cache saves when a chat continues.

A conversation of ~800 tokens (a system prompt and three turns in which the user pastes part of a document and
the assistant explains it) is sent as turn 1; turn 2 is turn 1's messages, the server's own reply and a new
question, streamed, and its time to the first generated text is the warm figure. The cold figure is the same
turn 2 with the system prompt's first characters changed, so that no cached prefix longer than the chat
template's opening matches: the server must prefill all of it. Each repeat tags its system prompt differently,
so no repeat reuses another's keys.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

TEXT = Path(__file__).resolve().parents[1] / "oxide" / "bench" / "data" / "declaration_of_independence.txt"
PASSAGE_WORDS = 110

SYSTEM = ("You are a patient reading companion. The user is working through an old document one part at a time "
          "and will paste each part into the chat. For every part, explain in plain, modern English what it says, "
          "point out any word that a reader today might not know, and keep each answer to a short paragraph. Do "
          "not invent facts that are not in the text; when the text is unclear, say so. Keep in mind what earlier "
          "parts said, because later questions may refer back to them.")

EXPLANATIONS = (
    "This opening says that when a people decides to break away from another and stand as an equal nation, "
    "honesty toward the rest of the world requires them to explain why. It then states ideas the authors take "
    "as obvious: all people are equal and have rights that cannot be taken away, such as life, liberty and the "
    "pursuit of happiness. 'Unalienable' means that those rights cannot be given up or removed.",
    "Here the text says that governments exist to protect those rights and get their authority from the people "
    "they govern. If a government works against that purpose, the people may change it or replace it. It adds "
    "a caution: long-standing governments should not be overthrown for small or passing reasons, and people "
    "usually put up with problems rather than tear down what they are used to.",
    "This part says that when abuses keep piling up with the clear aim of total control, the people have not "
    "only the right but the duty to throw off that government. The colonies say they have suffered patiently "
    "and now have no choice. They accuse the King of Great Britain of repeated injuries meant to set up a "
    "tyranny, and promise to list the facts. 'Usurpations' means seizing powers without a right to them.",
)

NEXT_QUESTION = "Thank you. Before we go on, can you sum up in two sentences what the three parts argue together?"


def conversation(tag: str) -> list[dict[str, str]]:
    """Turn 1's messages; ``tag`` opens the system prompt, so that different tags share no cached prefix."""
    words = TEXT.read_text(encoding="utf-8").split()
    start = words.index("When")
    messages = [{"role": "system", "content": f"[{tag}] {SYSTEM}"}]
    for part, explanation in enumerate(EXPLANATIONS):
        passage = " ".join(words[start + part * PASSAGE_WORDS:start + (part + 1) * PASSAGE_WORDS])
        messages.append({"role": "user", "content": f"Here is part {part + 1}:\n\n{passage}\n\nWhat does it say?"})
        messages.append({"role": "assistant", "content": explanation})
    messages.append({"role": "user", "content": "And what is the single main claim of all this, in one sentence?"})
    return messages


def first_token_time(client: httpx.Client, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """Stream a greedy chat completion; return the seconds to its first non-empty text, its prompt tokens and
    the prompt tokens the server says it reused (``usage.prompt_tokens_details.cached_tokens``, or llama-server's
    ``timings.cache_n``; None when the server reports neither)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"chat stream answered {response.status_code}: {response.read()[:2000]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:
                raise RuntimeError(f"chat stream failed: {chunk['error']}")
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
            choices = chunk.get("choices") or []
            if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the chat stream ended without any text")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", timings.get("cache_n"))
    prompt_tokens = usage.get("prompt_tokens")
    if prompt_tokens is None and "prompt_n" in timings:
        prompt_tokens = timings["prompt_n"] + timings.get("cache_n", 0)
    return {"ttft_s": first, "prompt_tokens": prompt_tokens, "cached_tokens": cached}


def reply(client: httpx.Client, messages: list[dict[str, str]], max_tokens: int) -> str:
    """The server's greedy answer to turn 1 (what a chat client would append before turn 2)."""
    response = client.post("/v1/chat/completions",
                           json={"messages": messages, "max_tokens": max_tokens, "temperature": 0.0})
    if response.status_code != 200:
        raise RuntimeError(f"turn 1 answered {response.status_code}: {response.text[:2000]}")
    return response.json()["choices"][0]["message"]["content"]


def second_turn_ttft(url: str, *, repeats: int, timeout_s: float) -> dict[str, Any]:
    """Warm and cold second-turn TTFTs over ``repeats`` conversations, their medians and cold / warm."""
    runs = []
    # A fresh connection per request: llama-server may close a kept-alive one as the next request goes out on it.
    with httpx.Client(base_url=url, timeout=timeout_s, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for repeat in range(repeats):
            turn1 = conversation(f"session {repeat}")
            turn2 = turn1 + [{"role": "assistant", "content": reply(client, turn1, 48)},
                             {"role": "user", "content": NEXT_QUESTION}]
            warm = first_token_time(client, turn2, 8)
            cold_turn2 = [{"role": "system", "content": f"[other {repeat}] {SYSTEM}"}] + turn2[1:]
            cold = first_token_time(client, cold_turn2, 8)
            runs.append({"warm": warm, "cold": cold})
    warm_median = statistics.median(run["warm"]["ttft_s"] for run in runs)
    cold_median = statistics.median(run["cold"]["ttft_s"] for run in runs)
    return {"runs": runs, "warm_ttft_s": warm_median, "cold_ttft_s": cold_median,
            "cold_over_warm": cold_median / warm_median}
