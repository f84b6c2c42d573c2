"""The remote backend: an OpenAI-compatible server (textgen api, vLLM, llama.cpp's server,
ollama) driven through the official `openai` client.

A model spec `http://HOST:PORT/v1` (or `...#MODEL`) picks it. Completion mode uses
`/v1/completions`, chat mode `/v1/chat/completions`, both streamed; stop strings, the seed and
textgen's own knobs (top_k, min_p, repetition_penalty, as extra body fields) go to the server,
and stop strings are also applied here, in case the server ignores them. Inspect mode asks for
`logprobs`; the token texts the server returns are given small ids here (`RemoteTokenizer`), so
F2/F3 work on them as on a local model's tokens. Every failure (refused connection, 401, a
timeout, a server that dies mid-stream) is one TextgenError line; the text streamed so far has
already reached the caller, which keeps it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from repl.engine.base import Backend, draw_seed
from repl.engine.request import (
    FinishReason,
    GenerationRequest,
    GenerationStats,
    Message,
    Notice,
    StopMatcher,
    StreamItem,
)
from repl.errors import TextgenError
from repl.models import ModelInfo
from repl.token_probs import TokenStep

KEY_ENV = "OPENAI_API_KEY"
CONNECT_TIMEOUT_S = 10.0
# Between two chunks of a stream: a busy server may queue the request for a while first.
READ_TIMEOUT_S = 600.0
COMPLETION_TOP_LOGPROBS = 5  # OpenAI's limit for /v1/completions
NO_PROBS = "this server returns no token probabilities, so inspect mode has nothing to show."


def is_url_spec(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


class RemoteTokenizer:
    """The token texts a server has returned, each given a small id, so the inspect view can
    decode them like a local tokenizer's ids. It cannot tokenize: `count_tokens` estimates."""

    bos_token_id = None
    eos_token_id = None

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._ids: dict[str, int] = {}

    def id_of(self, text: str) -> int:
        if text not in self._ids:
            self._ids[text] = len(self._texts)
            self._texts.append(text)
        return self._ids[text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False, **_: Any) -> str:
        return "".join(self._texts[i] for i in ids if 0 <= i < len(self._texts))


class RemoteBackend(Backend):
    name = "remote"

    def __init__(self, client: Any, model: str, info: ModelInfo) -> None:
        super().__init__()
        self.client = client
        self.model = model
        self.info = info
        self.tokenizer = RemoteTokenizer()
        self.where = info.device

    @classmethod
    def open(cls, spec: str, api_key: str | None = None) -> RemoteBackend:
        """Connect to the server of `spec` and pick its model (the named one, else the first
        it lists); TextgenError when it cannot be reached or refuses the key."""
        from openai import OpenAI, Timeout

        url, _, wanted = spec.partition("#")
        parts = urlsplit(url)
        if not parts.netloc:
            raise TextgenError(f"{spec!r} is not a server URL; write http://HOST:PORT/v1.")
        where = parts.netloc
        client = OpenAI(base_url=url.rstrip("/"), api_key=api_key or os.environ.get(KEY_ENV)
                        or "none", max_retries=0,
                        timeout=Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
        try:
            cards = list(client.models.list())
        except Exception as exc:
            raise _one_line(exc, where, connected=False) from None
        ids = [card.id for card in cards]
        if wanted and ids and wanted not in ids:
            raise TextgenError(f"the server at {where} has no model {wanted!r}; it has "
                               f"{', '.join(ids)}.")
        if not wanted and not ids:
            raise TextgenError(f"the server at {where} lists no models; name one: {url}#MODEL.")
        model = wanted or ids[0]
        card = next((c for c in cards if c.id == model), None)
        extra = dict(card.model_extra or {}) if card is not None else {}
        context = extra.get("context_length") or extra.get("max_model_len")
        info = ModelInfo(
            spec=spec, name=model, parameters=int(extra.get("parameters") or 0),
            context_length=int(context) if context else None, device=where, dtype="remote",
            has_chat_template=bool(extra.get("has_chat_template", True)), backend="remote")
        return cls(client, model, info)

    def count_tokens(self, text: str) -> int:
        """An estimate (about four characters a token): the protocol has no tokenizer."""
        return math.ceil(len(text) / 4)

    def close(self) -> None:
        self.client.close()

    def _stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        params = request.params
        seed = draw_seed(params)
        started = time.perf_counter()
        forced = self.tokenizer.decode(request.forced_ids)
        arguments = self._arguments(request, seed)
        chat = request.messages is not None
        trace = request.trace
        if chat:
            arguments["messages"] = _with_forced(list(request.messages or ()), forced)
            if trace is not None:
                arguments.update(logprobs=True, top_logprobs=min(trace.top, 20))
            create = self.client.chat.completions.create
        else:
            arguments["prompt"] = request.prompt + forced
            if trace is not None:
                arguments["logprobs"] = min(trace.top, COMPLETION_TOP_LOGPROBS)
            create = self.client.completions.create
        stops = StopMatcher(params.stop)
        new_tokens = prompt_tokens = 0
        first: float | None = None
        finish: FinishReason | None = None
        server_finish: str | None = None
        got_probs = False
        try:
            stream = create(**arguments)
            try:
                for chunk in stream:
                    if chunk.usage is not None:
                        prompt_tokens = chunk.usage.prompt_tokens or 0
                        new_tokens = chunk.usage.completion_tokens or new_tokens
                    for choice in chunk.choices:
                        text = (choice.delta.content if chat else choice.text) or ""
                        if trace is not None and choice.logprobs is not None:
                            got_probs |= self._record(trace, choice.logprobs, chat)
                        if choice.finish_reason:
                            server_finish = choice.finish_reason
                        if not text:
                            continue
                        if first is None:
                            first = time.perf_counter()
                        if chunk.usage is None:
                            new_tokens += 1
                        ready, matched = stops.feed(text)
                        if ready:
                            yield ready
                        if matched:
                            finish = "stop"
                            break
                    if finish is not None or self._cancel.is_set():
                        break
                else:
                    if tail := stops.flush():
                        yield tail
            finally:
                stream.close()  # the server sees the connection close and stops generating
        except TextgenError:
            raise
        except Exception as exc:
            raise _one_line(exc, self.where, connected=first is not None) from None
        if self._cancel.is_set() and finish is None:
            finish = "cancelled"
        if trace is not None and not got_probs:
            yield Notice(NO_PROBS)
        finished = time.perf_counter()
        yield GenerationStats(
            prompt_tokens=prompt_tokens, new_tokens=new_tokens,
            ttft_s=first - started if first is not None else None,
            tokens_per_s=(new_tokens - 1) / (finished - first)
            if first is not None and new_tokens > 1 and finished > first else None,
            total_s=finished - started,
            finish_reason=finish or _finish(server_finish, params.stop),
            seed=seed, engine=self.name, weights=f"remote {self.model}")

    def _arguments(self, request: GenerationRequest, seed: int) -> dict[str, Any]:
        params = request.params
        arguments: dict[str, Any] = {
            "model": self.model, "max_tokens": params.max_new_tokens, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True},
            "temperature": 0.0 if params.greedy else params.temperature,
        }
        if params.stop:
            arguments["stop"] = list(params.stop)
        extra: dict[str, Any] = {}
        if not params.greedy:
            arguments["top_p"] = params.top_p
            if params.top_k:
                extra["top_k"] = params.top_k
            if params.min_p:
                extra["min_p"] = params.min_p
        if params.repetition_penalty != 1.0:
            # textgen and vLLM say repetition_penalty, llama.cpp's server repeat_penalty.
            extra["repetition_penalty"] = extra["repeat_penalty"] = params.repetition_penalty
        if params.no_repeat_ngram_size:
            extra["no_repeat_ngram_size"] = params.no_repeat_ngram_size
        if extra:
            arguments["extra_body"] = extra
        return arguments

    def _record(self, trace: Any, logprobs: Any, chat: bool) -> bool:
        """Put the chunk's token probabilities into `trace`; whether there were any."""
        steps: list[TokenStep] = []
        if chat:
            for entry in logprobs.content or ():
                tops = [(self.tokenizer.id_of(t.token), _prob(t.logprob))
                        for t in entry.top_logprobs or ()]
                steps.append(self._step(entry.token, entry.logprob, tops))
        else:
            tokens = logprobs.tokens or []
            values = logprobs.token_logprobs or []
            tops_list = logprobs.top_logprobs or []
            for i, token in enumerate(tokens):
                top = tops_list[i] if i < len(tops_list) and tops_list[i] else {}
                tops = [(self.tokenizer.id_of(t), _prob(lp)) for t, lp in top.items()]
                value = values[i] if i < len(values) else None
                steps.append(self._step(token, value, tops))
        for step in steps:
            trace.add(step)
        return bool(steps)

    def _step(self, token: str, logprob: float | None, tops: list[tuple[int, float]]
              ) -> TokenStep:
        tops.sort(key=lambda pair: -pair[1])
        return TokenStep(self.tokenizer.id_of(token), _prob(logprob),
                         tuple(i for i, _ in tops), tuple(p for _, p in tops))


def _with_forced(messages: list[Message], forced: str) -> list[Message]:
    """A forced token (inspect mode) continues the reply: the last assistant message."""
    if not forced:
        return messages
    if messages and messages[-1]["role"] == "assistant":
        return [*messages[:-1], {"role": "assistant",
                                 "content": messages[-1]["content"] + forced}]
    return [*messages, {"role": "assistant", "content": forced}]


def _prob(logprob: float | None) -> float:
    return math.exp(logprob) if logprob is not None and logprob > -9999 else 0.0


def _finish(reason: str | None, stops: Sequence[str]) -> FinishReason:
    """OpenAI's `stop` covers both the model's end and a stop string; `length` is the limit."""
    if reason == "length":
        return "length"
    return "stop" if reason == "stop" and stops else "eos"


def _one_line(exc: BaseException, where: str, connected: bool) -> TextgenError:
    """What went wrong talking to the server, as one line for the user; `connected`: text had
    started to arrive (so the server died or dropped the stream, rather than never answered)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return TextgenError(f"the server at {where} did not answer in time (timed out).")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({_first_line(cause)})" if cause is not None else ""
        if connected:
            return TextgenError(f"lost the connection to the server at {where} in the middle "
                                f"of the reply{detail}; the text so far is kept.")
        return TextgenError(f"cannot reach the server at {where}{detail}.")
    if isinstance(exc, openai.AuthenticationError):
        return TextgenError(f"the server at {where} refused the API key (401): give the right "
                            f"one with --api-key or ${KEY_ENV}.")
    if isinstance(exc, openai.APIStatusError):
        return TextgenError(f"the server at {where} answered {exc.status_code}: "
                            f"{_message(exc)}")
    if isinstance(exc, openai.APIError):
        return TextgenError(f"the server at {where} failed: {_message(exc)}")
    return TextgenError(f"talking to the server at {where} failed: {_first_line(exc)}")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _first_line(error["message"])
    return _first_line(getattr(exc, "message", None) or exc)


def _first_line(value: Any) -> str:
    text = str(value).strip().splitlines()
    return text[0][:300] if text else type(value).__name__
