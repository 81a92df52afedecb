"""The HTTP application: OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``, plus
``/health``, ``/metrics`` and the chat page at ``/``.

Every error is OpenAI's JSON (``{"error": {...}}``) with a 4xx code for what the client can fix: a body that is
not JSON, a key of the wrong type or range, an unknown role, a prompt that does not fit the context, a
template that refuses the conversation (400), a missing or wrong API key (401), a full queue (503, with
``Retry-After``). An error after a stream has begun arrives as an ``error`` object in the stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api import Model
from ..engine import Engine
from ..errors import ContextOverflowError, ModelBusyError, OxideError, QueueFullError
from ..generate import Request, TokenLogprob
from ..log import get_logger
from .metrics import RequestCounter, render
from .responses import Responder, error_body
from .runner import EngineThread, RequestEvents
from .schemas import ChatCompletionRequest, CompletionRequest

log = get_logger("server")

MAX_BODY_BYTES = 32 * 2**20          # a request body past this is refused (413) before it is read
DISCONNECT_POLL_SECONDS = 0.25       # how often a non-streaming request looks at its client
PUBLIC_PATHS = ("/", "/health")      # served without the API key: the page asks for the key itself
ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """``max_waiting``: requests that may wait for a slot before the next is refused (503); ``api_key``: the
    key every request but ``/`` and ``/health`` must bring (``Authorization: Bearer KEY``); ``model_name``:
    the id ``/v1/models`` gives and responses carry."""

    model_name: str
    max_waiting: int = 64
    api_key: str | None = None


class ApiError(Exception):
    """A request the server refuses, with its status code and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, kind=self.kind, param=self.param, code=self.code),
                            status_code=self.status, headers=self.headers)


def create_app(model: Model, options: ServerOptions) -> FastAPI:
    """The application over ``model``: its scheduler starts and stops with the app's lifespan."""
    engine = Engine(model.lm, model.tokenizer, model.slots, max_waiting=options.max_waiting,
                    source=str(model.info.source.path))
    runner = EngineThread(model, engine)
    counter = RequestCounter()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runner.start()
        log.info("serving %s with %d KV slots of %d tokens", options.model_name, model.slots.capacity, model.n_ctx)
        yield
        runner.stop()

    app = FastAPI(title="oxide", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, api_key=options.api_key, counter=counter)
    _add_error_handlers(app)
    piece = _piece_function(model)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("oxide.server").joinpath("static/index.html").read_text(encoding="utf-8")
        # The page's script is inline; nothing else may run, and it talks only to this server.
        policy = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
        return HTMLResponse(html, headers={"Content-Security-Policy": policy})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "oxide", "context_length": model.n_ctx}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(render(engine, counter), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest) -> Any:
        params = _parse(ChatCompletionRequest, await _json_body(http))
        try:
            messages = [message.as_template_message() for message in params.messages]
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        request = await run_in_threadpool(_generation_request, model, messages, params)
        return await _answer(http, runner, request, params, Responder(True, options.model_name, piece))

    @app.post("/v1/completions")
    async def completions(http: HttpRequest) -> Any:
        params = _parse(CompletionRequest, await _json_body(http))
        try:
            prompt = params.single_prompt()
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt") from None
        request = await run_in_threadpool(_generation_request, model, prompt, params)
        return await _answer(http, runner, request, params, Responder(False, options.model_name, piece))

    return app


# ---- requests

async def _json_body(http: HttpRequest) -> dict[str, Any]:
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body of {declared} bytes is over the {MAX_BODY_BYTES} bytes this server reads")
    raw = await http.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body is a JSON {type(body).__name__}; send a JSON object")
    return body


def _parse(schema: type[BaseModel], body: dict[str, Any]) -> Any:
    """``body`` read as ``schema``; the first problem becomes a 400 naming its key."""
    try:
        return schema.model_validate(body)
    except ValidationError as e:
        problems = e.errors(include_url=False)
        where = ".".join(str(part) for part in problems[0]["loc"])
        detail = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in problems[:5])
        raise ApiError(400, f"invalid request: {detail}", param=where) from None


def _generation_request(model: Model, prompt: Any, params: ChatCompletionRequest | CompletionRequest) -> Request:
    """The engine's request (the prompt encoded, the options checked), or the 400 that explains why not."""
    budget = params.token_budget()
    try:
        request = model.request(prompt, max_new_tokens=budget or 1, sampling=params.sampling(), stop=params.stops(),
                                ignore_eos=params.ignore_eos, logprobs=params.logprobs_wanted())
    except ContextOverflowError as e:
        raise ApiError(400, str(e), param="messages" if isinstance(params, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded") from None
    room = model.n_ctx - len(request.prompt_ids)
    if budget is not None and budget > room:
        raise ApiError(400, f"this model's context is {model.n_ctx} tokens; the prompt has "
                            f"{len(request.prompt_ids)} and max_tokens asks for {budget} more; lower max_tokens to "
                            f"at most {room}", param="max_tokens", code="context_length_exceeded")
    return request if budget is not None else dataclasses.replace(request, max_new_tokens=room)


def _submit(runner: EngineThread, request: Request) -> RequestEvents:
    try:
        return runner.submit(request, asyncio.get_running_loop())
    except QueueFullError as e:
        raise ApiError(503, str(e), kind="server_overloaded", code="queue_full", headers={"Retry-After": "1"}) from None


async def _answer(http: HttpRequest, runner: EngineThread, request: Request,
                  params: ChatCompletionRequest | CompletionRequest, responder: Responder) -> Any:
    events = _submit(runner, request)
    if params.stream:
        usage = params.stream_options is not None and params.stream_options.include_usage
        return EventSourceResponse(_stream(events, responder, usage), ping=15)
    logprobs: list[TokenLogprob] = []
    looked = time.monotonic()
    try:
        while True:
            event = await events.next_event(DISCONNECT_POLL_SECONDS)
            if time.monotonic() - looked >= DISCONNECT_POLL_SECONDS:
                if await http.is_disconnected():
                    return None       # nobody to answer; `finally` frees the slot
                looked = time.monotonic()
            if event is None:
                continue
            logprobs += event.logprobs
            if event.error is not None:
                raise _engine_error(event.error)
            if event.completion is not None:
                wanted = request.logprobs is not None
                return responder.response(event.completion, logprobs if wanted else None)
    finally:
        events.cancel()


async def _stream(events: RequestEvents, responder: Responder, usage: bool) -> AsyncIterator[str]:
    """The stream's ``data:`` payloads; a client that goes away cancels this generator, which cancels the
    request."""
    wanted = events.ticket is not None and events.ticket.request.logprobs is not None
    try:
        first = responder.first_chunk()
        if first is not None:
            yield json.dumps(first)
        async for event in events:
            if event.error is not None:
                error = _engine_error(event.error)
                yield json.dumps(error_body(error.message, kind=error.kind, code=error.code))
                return
            if event.text or (wanted and event.logprobs):
                yield json.dumps(responder.chunk(event.text, event.logprobs if wanted else None))
            if event.completion is not None:
                yield json.dumps(responder.chunk("", None, event.completion.finish_reason))
                if usage:
                    yield json.dumps(responder.usage_chunk(event.completion))
        yield "[DONE]"
    finally:
        events.cancel()


def _engine_error(error: Exception) -> ApiError:
    """An error that ended a generation (the request was valid: the model or the server failed)."""
    if isinstance(error, OxideError):
        return ApiError(500, f"generation failed: {error}", kind="server_error", code="generation_failed")
    return ApiError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error")


# ---- errors, keys and counting

def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: HttpRequest, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(OxideError)
    async def oxide_error(_: HttpRequest, error: OxideError) -> JSONResponse:
        """What a prompt can do wrong (a template that refuses it, a token out of range, an option)."""
        if isinstance(error, (QueueFullError, ModelBusyError)):
            return ApiError(503, str(error), kind="server_overloaded", headers={"Retry-After": "1"}).response()
        return ApiError(400, str(error), code=type(error).__name__).response()

    @app.exception_handler(HTTPException)
    async def http_error(_: HttpRequest, error: HTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail), code=str(error.status_code)).response()

    @app.exception_handler(Exception)
    async def unexpected(_: HttpRequest, error: Exception) -> JSONResponse:
        log.exception("request failed")
        return ApiError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error").response()


class _Guard:
    """ASGI middleware: checks the API key (``Authorization: Bearer KEY``) on every path but the public ones,
    and counts the answers by endpoint and status."""

    def __init__(self, app: ASGIApp, api_key: str | None, counter: RequestCounter) -> None:
        self.app, self.api_key, self.counter = app, api_key, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in ENDPOINTS else "other"   # bounded label values
        if self.api_key is not None and scope["path"] not in PUBLIC_PATHS and not self._authorised(scope):
            self.counter.add(path, 401)
            response = ApiError(401, "missing or incorrect API key; send it as 'Authorization: Bearer KEY'",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}).response()
            await response(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counter.add(path, message["status"])
            await send(message)

        await self.app(scope, receive, counted)

    def _authorised(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, key = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode())


def _piece_function(model: Model) -> Callable[[int], bytes]:
    """A token's bytes as logprobs show them (its piece, special tokens included)."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        return lambda token: f"<{token}>".encode()
    return lambda token: tokenizer.token_to_piece(token).encode("utf-8")

