"""OpenAI's response bodies: chat completions and their stream chunks, text completions, usage, logprobs and
errors (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..generate import Completion, TokenLogprob


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(completion: Completion) -> dict[str, Any]:
    """Token counts, with the prompt tokens served from the prefix cache (OpenAI's ``cached_tokens``)."""
    stats = completion.stats
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens}}


class Responder:
    """Builds one request's response objects, all with the same id, creation time and model name.
    ``piece(token)`` is the bytes a token renders to (for logprobs)."""

    def __init__(self, chat: bool, model: str, piece: Callable[[int], bytes]) -> None:
        self.chat, self.model, self.piece = chat, model, piece
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    # ---- whole responses

    def response(self, completion: Completion, logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                      "logprobs": self.chat_logprobs(logprobs), "finish_reason": completion.finish_reason}
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": completion.text, "logprobs": self.text_logprobs(logprobs),
                      "finish_reason": completion.finish_reason}
            body = self._envelope("text_completion", [choice])
        body["usage"] = usage(completion)
        return body

    # ---- stream chunks

    def first_chunk(self) -> dict[str, Any] | None:
        """A chat stream opens with the assistant's role (text completions have no opening chunk)."""
        if not self.chat:
            return None
        return self._envelope("chat.completion.chunk",
                              [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}])

    def chunk(self, text: str, logprobs: Sequence[TokenLogprob] | None, finish_reason: str | None = None
              ) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": {"content": text} if text or finish_reason is None else {},
                      "logprobs": self.chat_logprobs(logprobs), "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text, "logprobs": self.text_logprobs(logprobs), "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, completion: Completion) -> dict[str, Any]:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage(completion)
        return body

    # ---- logprobs

    def _token(self, token: int) -> tuple[str, list[int]]:
        raw = self.piece(token)
        return raw.decode("utf-8", errors="replace"), list(raw)

    def chat_logprobs(self, logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
        """``{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}``."""
        if logprobs is None:
            return None
        content = []
        for entry in logprobs:
            text, raw = self._token(entry.token)
            top = [dict(zip(("token", "bytes"), self._token(t)), logprob=lp) for t, lp in entry.top]
            content.append({"token": text, "logprob": entry.logprob, "bytes": raw, "top_logprobs": top})
        return {"content": content}

    def text_logprobs(self, logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
        """The legacy form: ``tokens``, ``token_logprobs``, ``top_logprobs`` (a dict per token), ``text_offset``
        (offsets from the start of the completion)."""
        if logprobs is None:
            return None
        tokens, offsets, offset = [], [], 0
        for entry in logprobs:
            text = self._token(entry.token)[0]
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": [entry.logprob for entry in logprobs],
                "top_logprobs": [{self._token(t)[0]: lp for t, lp in entry.top} for entry in logprobs],
                "text_offset": offsets}
