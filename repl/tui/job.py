"""One running generation, shared by the worker thread that reads the stream and the UI thread
that shows it. The worker appends text; the UI takes what has accumulated at a fixed frame rate,
so a fast stream costs one repaint per frame, not one per token."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from repl.engine import GenerationStats, Progress

if TYPE_CHECKING:
    from repl.tui.transcript import TurnView


@dataclass(eq=False)
class Job:
    kind: str  # submit | regenerate | continue
    view: TurnView
    started: float = field(default_factory=time.perf_counter)
    text: str = ""  # everything generated so far (worker side)
    first_chunk_at: float | None = None
    live_tokens: int = 0  # chunks received so far (about one per token; final stats are exact)
    prompt_tokens: int = 0  # an estimate until the final stats arrive
    prefill: Progress | None = None  # while a long prompt is prefilled
    stats: GenerationStats | None = None
    error: str | None = None
    notices: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    _pending: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, chunk: str) -> None:
        """Worker thread: a chunk arrived."""
        with self._lock:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            self._pending.append(chunk)
            self.text += chunk

    def take(self) -> str:
        """UI thread: the text that arrived since the last call."""
        with self._lock:
            out = "".join(self._pending)
            self._pending.clear()
            return out

    def live_rate(self) -> float | None:
        """Tokens per second since the first chunk, while generating."""
        if self.first_chunk_at is None or self.live_tokens < 2:
            return None
        elapsed = time.perf_counter() - self.first_chunk_at
        return (self.live_tokens - 1) / elapsed if elapsed > 0 else None
