"""A backend that streams given text chunks, for tests of what the faces do with model output
(no model, no torch): it has the part of `repl.engine.base.Backend` that `generate` uses."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from repl.engine import GenerationRequest, GenerationStats, StreamItem
from repl.models import ModelInfo


class FakeBackend:
    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks
        self.info = ModelInfo(spec="fake", name="fake", parameters=0, context_length=1024,
                              device="cpu", dtype="none", has_chat_template=False)
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def busy(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def stream(self, request: GenerationRequest) -> Iterator[StreamItem]:
        yield from self.chunks
        yield GenerationStats(prompt_tokens=1, new_tokens=len(self.chunks), ttft_s=0.0,
                              tokens_per_s=None, total_s=0.0, finish_reason="length",
                              seed=request.params.seed or 0)
