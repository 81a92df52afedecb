"""The request bodies the server takes: OpenAI's chat and text completion schemas, plus llama.cpp's sampling keys.

Keys this server does not know are ignored, as llama.cpp's server and vLLM do (clients send ``user``,
``stream_options`` and more). A key it knows with a wrong type or an out-of-range value is a 400 naming the
key. Keys left out take llama.cpp's defaults (:class:`~oxide.sampling.SamplingOptions`), not OpenAI's, as
``llama-server`` does: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..sampling import SamplingOptions

Number = StrictInt | StrictFloat
ROLES = ("system", "developer", "user", "assistant", "tool")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ImagePart(_Body):
    type: Literal["image_url", "image"]
    image_url: dict[str, Any] | StrictStr | None = None


class Message(_Body):
    role: Literal[ROLES]                                      # type: ignore[valid-type]
    content: StrictStr | list[TextPart | ImagePart] | None = None
    name: StrictStr | None = None

    def as_template_message(self) -> dict[str, Any]:
        """The message as chat templates read it: text parts joined, image parts as ``{"type": "image"}``."""
        content: Any = self.content if self.content is not None else ""
        if isinstance(content, list):
            if all(isinstance(part, TextPart) for part in content):
                content = "".join(part.text for part in content)
            else:
                content = [{"type": "text", "text": p.text} if isinstance(p, TextPart) else _image(p) for p in content]
        return {"role": self.role, "content": content}


def _image(part: ImagePart) -> dict[str, Any]:
    """An image part as bytes, from a ``data:`` URL: the server reads no files and fetches nothing a client
    names (a path would expose the server's disk)."""
    url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise ValueError("an image part must carry its image as a data: URL (data:image/png;base64,...); this "
                         "server neither reads paths nor downloads images")
    try:
        return {"type": "image", "image": base64.b64decode(url.split(";base64,", 1)[1], validate=True)}
    except binascii.Error as e:
        raise ValueError(f"an image part's data: URL is not valid base64 ({e})") from None


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    """What both endpoints share: the token budget, the sampling chain, stops and streaming."""

    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=0)
    min_p: Number | None = Field(default=None, ge=0, le=1)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**64)
    presence_penalty: Number | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: Number | None = Field(default=None, ge=-2, le=2)
    repeat_penalty: Number | None = Field(default=None, gt=0)
    repeat_last_n: StrictInt | None = Field(default=None, ge=-1)
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = Field(default=1, ge=1, le=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    model: StrictStr | None = None

    def sampling(self) -> SamplingOptions:
        """The sampling options: the keys given, llama.cpp's defaults for the rest."""
        given = {key: getattr(self, key) for key in ("temperature", "top_p", "top_k", "min_p", "seed",
                                                      "presence_penalty", "frequency_penalty", "repeat_penalty",
                                                      "repeat_last_n")
                 if getattr(self, key) is not None}
        return SamplingOptions(**given)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprobs_wanted(self) -> int | None:
        """None, or how many alternatives to give beside each token (``top_logprobs``, 0 when absent)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]
    max_tokens: StrictInt | None = Field(default=16, ge=1)     # OpenAI's default for text completions
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    echo: Literal[False] = False
    suffix: None = None
    best_of: StrictInt = Field(default=1, ge=1, le=1)

    def token_budget(self) -> int | None:
        return self.max_tokens

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    def single_prompt(self) -> str | list[int]:
        """The one prompt (a batch of several is not served: ``n`` and prompt lists are 1)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ValueError(f"prompt holds {len(prompt)} prompts; this server takes one per request")
            return prompt[0]
        return prompt
