"""The OpenAI request bodies `textgen api` accepts, and how they become textgen requests.

pydantic checks the shapes (a string where a string belongs); `SamplingParams` checks the
values, with the same rules and messages as the TUI and the command line. Anything refused
becomes an `ApiError`, which the app answers in OpenAI's error JSON.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from repl.engine.request import GenerationRequest, Message
from repl.params import SamplingParams

MAX_CHOICES = 8  # n: each choice is one more full generation on a one-at-a-time engine
MAX_TOP_LOGPROBS = 20  # OpenAI's own limit for chat; completions allow 5, we allow 20 too
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request refused, with its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields both endpoints share; textgen's own knobs ride along as extra body fields."""

    # Unknown fields (user, logit_bias, a client's own additions) are accepted and ignored, as
    # the servers clients are written for do.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # textgen's own parameters
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None

    def params(self, base: SamplingParams) -> SamplingParams:
        """The server's defaults with this request's choices on top; ApiError when invalid."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported by textgen; use "
                                    "repetition_penalty or no_repeat_ngram_size.", param=name)
        if not 1 <= self.n <= MAX_CHOICES:
            raise ApiError(400, f"n must be from 1 to {MAX_CHOICES}.", param="n")
        changes: dict[str, Any] = {
            name: value for name, value in (
                ("max_new_tokens", self.max_new_tokens()), ("temperature", self.temperature),
                ("top_p", self.top_p), ("top_k", self.top_k), ("min_p", self.min_p),
                ("repetition_penalty", self.repetition_penalty),
                ("no_repeat_ngram_size", self.no_repeat_ngram_size), ("seed", self.seed))
            if value is not None
        }
        if self.stop is not None:
            changes["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if self.temperature is not None:
            changes["do_sample"] = self.temperature > 0
        try:
            return base.replace(**changes)
        except ValueError as exc:
            raise ApiError(400, str(exc), param=_param_of(str(exc))) from None

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def wants_usage_chunk(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionBody(_Sampling):
    prompt: str | list[str] = ""
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None

    def prompts(self) -> list[str]:
        if self.echo:
            raise ApiError(400, "echo is not supported.", param="echo")
        if self.suffix:
            raise ApiError(400, "suffix (fill in the middle) is not supported.", param="suffix")
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise ApiError(400, "prompt is an empty list.", param="prompt")
        return prompts

    def top_logprobs(self) -> int | None:
        return self.logprobs


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def to_message(self, index: int) -> Message:
        role = ROLES.get(self.role)
        if role is None:
            raise ApiError(400, f"messages[{index}]: role {self.role!r} is not supported; use "
                                "system, user or assistant.", param="messages")
        if isinstance(self.content, list):
            if any(part.type != "text" for part in self.content):
                raise ApiError(400, f"messages[{index}]: only text content is supported.",
                               param="messages")
            text = "".join(part.text or "" for part in self.content)
        else:
            text = self.content or ""
        return {"role": role, "content": text}


class ChatBody(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def chat_messages(self) -> list[Message]:
        if not self.messages:
            raise ApiError(400, "messages must hold at least one message.", param="messages")
        return [m.to_message(i) for i, m in enumerate(self.messages)]

    def top_logprobs_count(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0


def requests_for(body: CompletionBody | ChatBody, params: SamplingParams
                 ) -> list[GenerationRequest]:
    """One GenerationRequest per choice (prompts x n); choice i of a seeded request gets
    seed + i, so every choice differs and the whole answer still reproduces."""
    if isinstance(body, ChatBody):
        bases = [GenerationRequest.chat(body.chat_messages(), params)]
    else:
        bases = [GenerationRequest(prompt=p, params=params) for p in body.prompts()]
    requests = []
    for base in bases:
        for i in range(body.n):
            choice_params = base.params
            if choice_params.seed is not None and i:
                choice_params = choice_params.replace(seed=(choice_params.seed + i) % 2**32)
            requests.append(GenerationRequest(prompt=base.prompt, params=choice_params,
                                              messages=base.messages))
    return requests


def finish_reason(reason: str) -> Literal["stop", "length"]:
    """textgen's finish reasons in OpenAI's words: a stop string, EOS or a cancel are `stop`."""
    return "length" if reason == "length" else "stop"


def _param_of(message: str) -> str | None:
    """The parameter an error message of SamplingParams is about, in OpenAI's name."""
    word = message.split(" ", 1)[0]
    return {"max_new_tokens": "max_tokens", "stop": "stop"}.get(word, word) if word else None
