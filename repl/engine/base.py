"""The backend interface: what every engine (transformers, llama.cpp, a remote server) offers.

A backend holds one model and runs one generation at a time. The faces only ever call what is
defined here, so they never know which backend runs:

    backend.info                  ModelInfo (name, context, backend, device, weight format)
    backend.stream(request)       Iterator[Notice | Progress | str | GenerationStats]
    backend.generate(request)     (text, stats), for callers that do not stream
    backend.cancel()              stop after the current token (or prefill chunk)
    backend.busy                  a generation is running
    backend.count_tokens(text)    for the context meter
    backend.encode(request)       the prompt's token ids, fitted to the context
    backend.tokenizer             decode(ids) / token text for inspect mode (F2/F3)

Prompt fitting (`encode`) and stop strings are shared here; a backend implements `_stream`.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from repl.engine.request import (
    GenerationRequest,
    GenerationStats,
    Message,
    Notice,
    StreamItem,
)
from repl.errors import TextgenError

if TYPE_CHECKING:
    from repl.models import ModelInfo
    from repl.params import SamplingParams


class Backend:
    """Shared behaviour of every backend; subclasses set `info`, `tokenizer` and `_stream`."""

    name = "backend"
    info: ModelInfo
    tokenizer: Any

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._busy = threading.Lock()

    def cancel(self) -> None:
        """Stop the running generation after the current token; its text so far is kept."""
        self._cancel.set()

    @property
    def busy(self) -> bool:
        return self._busy.locked()

    def close(self) -> None:
        """Free what the backend holds (a runtime's context); the default has nothing."""

    def clear_cache(self) -> None:
        """Forget any prefix cache, so the next prompt is prefilled whole (benchmarks)."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        """Yield Notices and Progress, then text chunks as they are generated, then one
        GenerationStats.

        Abandoning the iterator (break, an exception, Ctrl+C) cancels the generation, so no
        work outlives its stream.
        """
        if not self._busy.acquire(blocking=False):
            raise TextgenError("a generation is already running; stop it first.")
        try:
            self._cancel.clear()
            yield from self._stream(request)
        finally:
            self._busy.release()

    def _stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        raise NotImplementedError

    def generate(self, request: GenerationRequest) -> tuple[str, GenerationStats]:
        """The whole text and its stats, for callers that do not stream."""
        text: list[str] = []
        stats: GenerationStats | None = None
        for item in self.stream(request):
            if isinstance(item, str):
                text.append(item)
            elif isinstance(item, GenerationStats):
                stats = item
        assert stats is not None
        return "".join(text), stats

    # Prompt fitting, the same for every backend that has a tokenizer.

    def encode(self, request: GenerationRequest) -> tuple[list[int], int]:
        """Token ids of the request's full prompt, fitted to the context: (ids, tokens dropped).

        Completion prompts lose their oldest tokens; chat loses its oldest turns first (a system
        message stays), then oldest tokens, so the template stays well formed where it can.
        """
        params = request.params
        context = self.info.context_length
        params.check_fits(context)
        budget = None if context is None else context - params.max_new_tokens
        forced = list(request.forced_ids)
        if request.messages is None:
            ids = list(self.tokenizer(request.prompt).input_ids)
            if not ids and not forced:
                ids = start_ids(self.tokenizer)
            return trim_left(ids + forced, budget, self.tokenizer.bos_token_id)
        messages = list(request.messages)
        ids = self._chat_ids(messages)
        dropped = 0
        while budget is not None and len(ids) > budget and _droppable(messages):
            index = 1 if messages[0]["role"] == "system" else 0
            messages.pop(index)
            new_ids = self._chat_ids(messages)
            dropped += len(ids) - len(new_ids)
            ids = new_ids
        ids, trimmed = trim_left(ids + forced, budget, self.tokenizer.bos_token_id)
        return ids, dropped + trimmed

    def _chat_ids(self, messages: list[Message]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise TextgenError(
                f"{self.info.name} has no chat template, so it cannot chat; use completion mode."
            )
        continuing = bool(messages) and messages[-1].get("role") == "assistant"
        encoded = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=not continuing,
            continue_final_message=continuing,
            tokenize=True,
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)

    def trim_notice(self, trimmed: int, params: SamplingParams) -> Notice:
        return Notice(
            f"the prompt did not fit the {self.info.context_length}-token context with "
            f"{params.max_new_tokens} new tokens: dropped its first {trimmed} tokens."
        )


def draw_seed(params: SamplingParams) -> int:
    """The request's seed, or a fresh one that is recorded so the output can be reproduced."""
    return params.seed if params.seed is not None else secrets.randbelow(2**31)


def eos_ids(*sources: Any) -> set[int]:
    """The end-of-sequence ids named by a generation config or tokenizer (int, list or None)."""
    ids: set[int] = set()
    for source in sources:
        ids.update(source if isinstance(source, list | tuple | set) else [source])
    return ids - {None}


def start_ids(tokenizer: Any) -> list[int]:
    """An empty prompt starts from BOS (or EOS, GPT-2's document separator)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise TextgenError("the prompt is empty and this model has no start token; type a prompt.")
    return [token]


def trim_left(ids: list[int], budget: int | None, bos: int | None) -> tuple[list[int], int]:
    """Keep the last `budget` tokens (and a leading BOS); return (ids, tokens dropped)."""
    if budget is None or len(ids) <= budget:
        return ids, 0
    keep_bos = bos is not None and ids[0] == bos
    kept = ids[len(ids) - budget + keep_bos:]
    return ([bos] if keep_bos else []) + kept, len(ids) - budget


def _droppable(messages: list[Message]) -> bool:
    """More than the last message is left beside an optional system message."""
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    return len(rest) > 1
