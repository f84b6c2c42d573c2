"""The OpenAI-compatible HTTP app: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

FastAPI parses the bodies (repl/api/protocol.py), the runner (repl/api/runner.py) queues the
generations on the one backend, and the answers are built with the `openai` package's own
response types, so their shape is the one every client expects. Streaming answers are
server-sent events ending in `data: [DONE]`; every refusal is OpenAI's error JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from repl.api.cli import DEFAULT_MAX_QUEUE
from repl.api.logprobs import TokenTexts, chat_logprobs, completion_logprobs
from repl.api.protocol import ApiError, ChatBody, CompletionBody, finish_reason, requests_for
from repl.api.runner import EngineRunner, QueueFull, Ticket
from repl.api.session_log import Outcome, write_session
from repl.engine.base import Backend
from repl.engine.request import GenerationRequest, GenerationStats
from repl.errors import TextgenError
from repl.params import SamplingParams
from repl.token_probs import TokenTrace

log = logging.getLogger("textgen.api")


@dataclasses.dataclass
class ApiConfig:
    api_key: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    defaults: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    log_sessions: Path | None = None
    # Web origins whose pages may call the API (CORS); none by default, so a page the user
    # happens to visit cannot drive the engine on their loopback.
    allow_origins: tuple[str, ...] = ()


class Served:
    """The one model this server runs, and what every request needs to know about it."""

    def __init__(self, backend: Backend, config: ApiConfig) -> None:
        self.backend = backend
        self.config = config
        self.runner = EngineRunner(backend, config.max_queue)
        self.model_id = backend.info.name
        self.created = int(time.time())
        self.text_of = TokenTexts(backend.tokenizer)
        self.closing = False

    def check_model(self, name: str | None) -> None:
        if name and name not in (self.model_id, self.backend.info.spec):
            raise ApiError(404, f"The model {name!r} does not exist; this server runs "
                                f"{self.model_id!r}.", param="model", code="model_not_found")

    def check(self, requests: list[GenerationRequest]) -> None:
        """Refuse up front what the engine would refuse once the stream has begun."""
        if self.closing:
            raise ApiError(503, "the server is shutting down.", kind="server_error")
        info = self.backend.info
        if requests[0].messages is not None and not info.has_chat_template:
            raise ApiError(400, f"{info.name} has no chat template, so it cannot chat; use "
                                "/v1/completions.", param="messages")
        try:
            requests[0].params.check_fits(info.context_length)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="max_tokens") from None

    def model_card(self) -> dict[str, Any]:
        info = self.backend.info
        # `context_length` (and vLLM's `max_model_len`) let a textgen URL backend size its
        # context meter; plain clients ignore fields they do not know.
        return {"id": self.model_id, "object": "model", "created": self.created,
                "owned_by": "textgen", "context_length": info.context_length,
                "max_model_len": info.context_length,
                "has_chat_template": info.has_chat_template, "parameters": info.parameters}

    def session_model(self) -> dict[str, str]:
        return {"spec": self.backend.info.spec, "name": self.backend.info.name}


def create_app(backend: Backend, config: ApiConfig | None = None,
               on_ready: Callable[[], None] | None = None) -> FastAPI:
    served = Served(backend, config or ApiConfig())

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield
        served.closing = True

    app = FastAPI(title="textgen api", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.served = served
    if served.config.allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(served.config.allow_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(ApiError(400, message, param=".".join(where) or None).body(),
                            status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), kind=kind).body(),
                            status_code=exc.status_code, headers=exc.headers)

    def authorize(request: Request) -> None:
        key = served.config.api_key
        if not key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(),
                                                                    key.encode()):
            raise ApiError(401, "Incorrect API key provided." if given else
                           "Missing API key: send it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [served.model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
    async def model(name: str) -> dict[str, Any]:
        served.check_model(name)
        return served.model_card()

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionBody, request: Request) -> Any:
        return await _answer(served, body, "completions", request)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatBody, request: Request) -> Any:
        return await _answer(served, body, "chat", request)

    return app


async def _answer(served: Served, body: CompletionBody | ChatBody, endpoint: str,
                  http: Request) -> Any:
    served.check_model(body.model)
    requests = requests_for(body, body.params(served.config.defaults))
    served.check(requests)
    top = body.top_logprobs() if isinstance(body, CompletionBody) else body.top_logprobs_count()
    if top is not None:
        requests = [dataclasses.replace(r, trace=TokenTrace(top=max(top, 1))) for r in requests]
    try:
        ticket = served.runner.reserve()
    except QueueFull as full:
        raise ApiError(429, f"the server is busy: {served.runner.max_waiting} requests are "
                            f"already waiting; retry after {full.retry_after} s.",
                       kind="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(full.retry_after)}) from None
    answer = _Answer(served, endpoint, requests, top, ticket)
    if body.stream:
        return StreamingResponse(answer.events(body.wants_usage_chunk()),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(ticket.leave))
    try:
        return await _unless_gone(http, answer.whole())
    finally:
        ticket.leave()


async def _unless_gone(http: Request, work: Any) -> Any:
    """Await `work`, cancelling it (and so its generation) if the client disconnects first;
    streams get this from Starlette, whole answers from here."""
    async def gone() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the server is shutting down: the generation goes too
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ApiError(499, "the client closed the connection.")
    return task.result()


class _Answer:
    """The generations of one HTTP request (n choices, or one per prompt), run in turn."""

    def __init__(self, served: Served, endpoint: str, requests: list[GenerationRequest],
                 top: int | None, ticket: Ticket) -> None:
        self.served, self.endpoint, self.requests = served, endpoint, requests
        self.top, self.ticket = top, ticket
        self.chat = endpoint == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.outcomes: list[Outcome] = []

    async def _generate(self, index: int) -> AsyncIterator[str | GenerationStats]:
        """One choice's text chunks, then its stats; its outcome is recorded however it ends."""
        request = self.requests[index]
        runner = self.served.runner
        ticket = self.ticket if index == 0 else runner.reserve(queue_full_ok=True)
        outcome = Outcome(request, "", None, "cancelled")
        self.outcomes.append(outcome)
        try:
            async for item in runner.stream(ticket, request):
                if isinstance(item, str):
                    outcome.text += item
                    yield item
                elif isinstance(item, GenerationStats):
                    outcome.stats, outcome.finish = item, item.finish_reason
                    yield item
        except (TextgenError, ValueError) as exc:
            outcome.finish = "error"
            raise ApiError(400, str(exc)) from None
        except ApiError:
            outcome.finish = "error"
            raise
        except Exception as exc:
            outcome.finish = "error"
            log.exception("generation failed")
            raise ApiError(500, f"the engine failed: {exc}", kind="server_error") from None
        finally:
            ticket.leave()

    def _logprobs(self, request: GenerationRequest, start: int, end: int | None,
                  offset: int) -> dict[str, Any] | None:
        if self.top is None or request.trace is None:
            return None
        steps = request.trace.snapshot()[start:end]
        if self.chat:
            return chat_logprobs(steps, self.top, self.served.text_of)
        return completion_logprobs(steps, self.top, self.served.text_of, offset)

    def _usage(self) -> dict[str, int]:
        prompt = sum(o.stats.prompt_tokens for o in self.outcomes[:1] if o.stats)
        done = sum(o.stats.new_tokens for o in self.outcomes if o.stats)
        return {"prompt_tokens": prompt, "completion_tokens": done,
                "total_tokens": prompt + done}

    async def whole(self) -> dict[str, Any]:
        from openai.types import Completion
        from openai.types.chat import ChatCompletion

        choices = []
        try:
            for index, request in enumerate(self.requests):
                stats: GenerationStats | None = None
                text: list[str] = []
                async for item in self._generate(index):
                    if isinstance(item, str):
                        text.append(item)
                    else:
                        stats = item
                finish = finish_reason(stats.finish_reason if stats else "stop")
                logprobs = self._logprobs(request, 0, None, len(request.prompt))
                if self.chat:
                    choices.append({"index": index, "finish_reason": finish,
                                    "logprobs": logprobs,
                                    "message": {"role": "assistant", "content": "".join(text)}})
                else:
                    choices.append({"index": index, "finish_reason": finish,
                                    "logprobs": logprobs, "text": "".join(text)})
        finally:
            await self._log()
        kind = ChatCompletion if self.chat else Completion
        answer = kind.model_validate({
            "id": self.id, "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created, "model": self.served.model_id, "choices": choices,
            "usage": self._usage()})
        return answer.model_dump(mode="json", exclude_unset=True)

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: a chunk per piece of text, a last chunk per choice with its
        finish reason, the usage chunk if asked for, then `[DONE]`."""
        try:
            for index, request in enumerate(self.requests):
                sent = 0  # trace steps already sent with a chunk
                offset = len(request.prompt)
                if self.chat:
                    yield self._chunk(index, {"role": "assistant", "content": ""})
                async for item in self._generate(index):
                    if isinstance(item, str):
                        logprobs = self._logprobs(request, sent, None, offset)
                        sent += len(logprobs["content"] if self.chat else logprobs["tokens"]) \
                            if logprobs else 0
                        offset += len(item)
                        yield self._chunk(index, item, logprobs=logprobs)
                    else:
                        yield self._chunk(index, "" if not self.chat else {},
                                          finish=finish_reason(item.finish_reason),
                                          logprobs=self._logprobs(request, sent, None, offset))
            if include_usage:
                yield _event({"id": self.id, "object": self._object(), "created": self.created,
                              "model": self.served.model_id, "choices": [],
                              "usage": self._usage()})
            yield "data: [DONE]\n\n"
        except ApiError as exc:
            yield _event(exc.body())
        finally:
            await asyncio.shield(self._log())

    def _object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _chunk(self, index: int, piece: str | dict[str, str], finish: str | None = None,
               logprobs: dict[str, Any] | None = None) -> str:
        if self.chat:
            delta = piece if isinstance(piece, dict) else {"content": piece}
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish,
                                      "logprobs": logprobs}
        else:
            choice = {"index": index, "text": piece, "finish_reason": finish,
                      "logprobs": logprobs}
        return _event({"id": self.id, "object": self._object(), "created": self.created,
                       "model": self.served.model_id, "choices": [choice]})

    async def _log(self) -> None:
        folder = self.served.config.log_sessions
        if folder is None or not self.outcomes:
            return
        try:
            await asyncio.to_thread(write_session, folder, self.served.session_model(),
                                    self.endpoint, list(self.outcomes))
        except (TextgenError, OSError) as exc:
            log.warning("textgen api: could not log the session: %s", exc)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
