"""Waiting in tests: on an event or a condition, never for a fixed time, with limits generous
enough that a correct program on a machine loaded by another full test run (a load average of
5-7 on 2 cores, where importing torch or loading a model can take minutes) is never failed; a
limit that is reached says what was being waited for."""

from __future__ import annotations

import time
from collections.abc import Callable

LIMIT_S = 600.0


def describe(condition: Callable[[], object]) -> str:
    """Where the condition is written (file:line), to name it in a failure."""
    code = getattr(condition, "__code__", None)
    if code is None:
        return repr(condition)
    return f"the condition at {code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno}"


def timed_out(what: str, limit_s: float) -> str:
    return f"timed out after {limit_s:.0f} s waiting for {what}"


def wait_until(condition: Callable[[], object], what: str | None = None,
               limit_s: float = LIMIT_S, poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, timed_out(what or describe(condition), limit_s)
        time.sleep(poll_s)


async def until(pilot, condition: Callable[[], object], timeout: float = LIMIT_S,
                what: str | None = None) -> None:
    """A pilot test's wait: the app runs (pilot.pause) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, timed_out(
            what or f"the app: {describe(condition)}", timeout)
        await pilot.pause(0.02)
