"""One backend shared by many HTTP requests: one generation at a time, a bounded FIFO queue.

A backend's `stream` is a blocking iterator, so each generation runs in a worker thread that
hands its items to the event loop. The engine slot is freed by that thread when the backend is
really idle again, never earlier, so the next request can never find it busy. A consumer that
goes away (a client that disconnected) cancels its generation: the backend stops after the
current token and the slot passes to the next request in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from repl.engine.base import Backend
from repl.engine.request import GenerationRequest, StreamItem


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class Ticket:
    """A place in the queue, taken before the response starts so a full queue can say 429."""

    def __init__(self, runner: EngineRunner) -> None:
        self._runner: EngineRunner | None = runner

    def leave(self) -> None:
        """Stop waiting (the slot was taken, or the client went away); idempotent."""
        if self._runner is not None:
            self._runner.waiting -= 1
            self._runner = None


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class EngineRunner:
    def __init__(self, backend: Backend, max_waiting: int) -> None:
        self.backend = backend
        self.max_waiting = max_waiting
        self.waiting = 0
        self.running = 0
        self._slot = asyncio.Semaphore(1)
        self._job_lock = threading.Lock()
        self._job: object | None = None  # the generation the backend runs now
        self._durations: deque[float] = deque(maxlen=16)

    def reserve(self, queue_full_ok: bool = False) -> Ticket:
        """A place in the queue, or QueueFull (with how long to wait) when none is left.
        `queue_full_ok`: the next choice of a request already admitted, never refused."""
        if not queue_full_ok and self.running and self.waiting >= self.max_waiting:
            raise QueueFull(self.retry_after())
        self.waiting += 1
        return Ticket(self)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: recent generations' mean time per request."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean))

    async def stream(self, ticket: Ticket, request: GenerationRequest
                     ) -> AsyncIterator[StreamItem]:
        """The backend's stream for `request`, once its turn comes."""
        try:
            await self._slot.acquire()
        finally:
            ticket.leave()
        self.running += 1
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        job = object()
        started = time.monotonic()

        def hand(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop has closed: the server is gone
                stop.set()

        def work() -> None:
            try:
                for item in self.backend.stream(request):
                    hand(item)
                    if stop.is_set():
                        break
            except BaseException as exc:  # handed to the consumer below
                hand(_Failed(exc))
            finally:
                with self._job_lock:
                    self._job = None
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._free, started)
                hand(_END)

        with self._job_lock:
            self._job = job
        threading.Thread(target=work, name="textgen-api-generate", daemon=True).start()
        try:
            while (item := await items.get()) is not _END:
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            stop.set()
            with self._job_lock:
                if self._job is job:  # still ours: stop it after the current token
                    self.backend.cancel()

    def _free(self, started: float) -> None:
        self._durations.append(time.monotonic() - started)
        self.running -= 1
        self._slot.release()
