"""How a textgen process ends: on SIGTERM and SIGHUP as on Ctrl+C, and cleanly whatever threads
it still has.

SIGTERM (`kill`, a service manager) and SIGHUP (the terminal went away) stop the running
generation like Ctrl+C does, so its text is kept as `cancelled`, and then end the process with
status 128 + the signal's number. A face installs `on_exit_signals(handler)` around its work; the
handler decides whether to stop a generation first or raise `Terminated` at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

EXIT_SIGNALS: tuple[int, ...] = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                                      if hasattr(signal, name))


class Terminated(BaseException):
    """A signal asked the process to end: unwinds to the command's end, where the session is
    saved and the exit status is `128 + signum`. Not an error, so not an Exception."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def on_exit_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Call `handler(signum)` on SIGTERM or SIGHUP while inside; the previous handlers come
    back afterwards. A no-op outside the main thread (signals are delivered there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in EXIT_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def exit_now(status: int) -> None:
    """End the process with `status` after flushing stdout and stderr, without waiting for
    background threads. Interpreter shutdown with a daemon thread still inside torch (a model
    compile, a load) aborts with SIGABRT (status 134, "terminate called without an active
    exception"); everything worth keeping is written by the time a command returns."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
