"""The streamer the engine reads from. Imported lazily: it pulls in transformers and torch."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from transformers import StoppingCriteria, TextIteratorStreamer


class CountingStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that notes when the first new token arrived, whose reader
    notices a dead worker instead of waiting forever, and that decodes incrementally.

    transformers' streamer re-decodes every token since the last newline on each new token
    (O(n^2) over a long line: ~0.3 ms a token by 400 tokens) and holds back partial words.
    Here each token decodes a short window instead: the text of tokens [prefix:] minus that of
    [prefix:read], emitted as soon as it is whole characters (the prefix keeps the tokenizer's
    word-boundary handling the same as decoding everything at once)."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.first_token_at: float | None = None
        self._ended = False
        self._prefix = 0  # token_cache[_prefix:_read] is context already emitted
        self._read = 0

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.token_cache.extend(value.tolist())
        seen = self._decode(self._prefix, self._read)
        text = self._decode(self._prefix, len(self.token_cache))
        if len(text) > len(seen) and not text.endswith("\ufffd"):  # no half a character
            self.on_finalized_text(text[len(seen):])
            self._prefix, self._read = self._read, len(self.token_cache)

    def end(self) -> None:
        self._ended = True
        seen = self._decode(self._prefix, self._read)
        rest = self._decode(self._prefix, len(self.token_cache))[len(seen):]
        self.token_cache, self._prefix, self._read = [], 0, 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(rest, stream_end=True)

    def _decode(self, start: int, stop: int) -> str:
        if start >= stop:
            return ""
        return self.tokenizer.decode(self.token_cache[start:stop], **self.decode_kwargs)

    def end_once(self) -> None:
        if not self._ended:
            self.end()

    def chunks(self, worker: threading.Thread) -> Iterator[str]:
        """Text as it is decoded, until the stream ends or the worker is gone."""
        while True:
            try:
                value = self.text_queue.get(timeout=0.2)
            except queue.Empty:
                if not worker.is_alive() and self.text_queue.empty():
                    return
                continue
            if value is self.stop_signal:
                return
            if value:
                yield value


class EventCriteria(StoppingCriteria):
    """Ends generation after the current token once any of its events is set."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
                 ) -> torch.Tensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
