"""Text that a worker thread writes while the UI thread shows it: the one buffer behind a
streaming chat turn and each side of a comparison. The worker appends; the UI takes what has
accumulated at a fixed frame rate, so a fast stream costs one repaint per frame, not one per
token. No Textual here: the controller (repl/tui/controller.py) fills it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from repl.engine import GenerationStats, Progress


@dataclass(eq=False)
class LiveText:
    title: str = ""  # what the text belongs to, for a pane that shows it (compare)
    meta: str = "waiting"  # one line of state under the text (compare)
    text: str = ""  # everything generated so far (worker side)
    started: float = field(default_factory=time.perf_counter)
    first_chunk_at: float | None = None
    live_tokens: int = 0  # chunks received so far (about one per token; final stats are exact)
    prompt_tokens: int = 0  # an estimate until the final stats arrive
    prefill: Progress | None = None  # while a long prompt is prefilled
    stats: GenerationStats | None = None
    error: str | None = None
    cancel_requested: bool = False
    _pending: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, chunk: str) -> None:
        """Worker thread: a chunk arrived (about one token: the streamer sends whole
        characters as soon as a token completes them)."""
        with self._lock:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            self._pending.append(chunk)
            self.text += chunk
            self.live_tokens += 1

    def take(self) -> str:
        """UI thread: the text that arrived since the last call."""
        with self._lock:
            out = "".join(self._pending)
            self._pending.clear()
            return out

    def read(self) -> tuple[str, str, str]:
        """UI thread: title, all the text so far, and the state line, consistent together."""
        with self._lock:
            return self.title, self.text, self.meta

    def live_rate(self) -> float | None:
        """Tokens per second since the first chunk, while generating."""
        if self.first_chunk_at is None or self.live_tokens < 2:
            return None
        elapsed = time.perf_counter() - self.first_chunk_at
        return (self.live_tokens - 1) / elapsed if elapsed > 0 else None
