"""The one engine a `textgen serve` shares among its tabs: a `textgen api` child process.

It listens on a free loopback port and requires a random key, which travels to it and to the
tabs in the environment (never on a command line, where `ps` would show it). Each tab's TUI then
runs with `--model http://127.0.0.1:PORT/v1#NAME` (repl/engine/remote.py): no torch, no weights,
tens of MB a tab, and one model in memory however many tabs are open. The engine generates for
one tab at a time; the others wait in its queue.

A child process rather than a thread of the server: the engine's event loop (uvicorn) and its
compute never stall the server's websockets, and a crash of the engine leaves the server up to
say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import signal
import sys
from collections import deque

from repl.errors import TextgenError
from repl.serve.policy import ENV_VAR, ServedPolicy
from repl.serve.tab import die_with_parent

log = logging.getLogger("textgen.serve")

KEY_ENV = "TEXTGEN_API_KEY"  # what `textgen api` reads its key from
TAB_KEY_ENV = "OPENAI_API_KEY"  # what a URL model spec reads its key from
STOP_GRACE_S = 10.0  # for the engine to finish its shutdown before SIGKILL
_READY = re.compile(r"^textgen api: serving (?P<name>.+) at (?P<url>http://\S+/v1) \(")


def engine_command(model: str, flags: list[str], max_queue: int) -> list[str]:
    """`textgen api` for the served model on any free loopback port."""
    return [sys.executable, "-m", "repl", "api", "--host", "127.0.0.1", "--port", "0",
            "--model", model, "--max-queue", str(max_queue), *flags]


class SharedEngine:
    """Start with `await start()` (returns once the model has loaded and the engine listens),
    hand each tab `tab_env()` and `spec`, end with `await stop()` (or `kill()` from sync code).
    """

    def __init__(self, argv: list[str], policy: ServedPolicy) -> None:
        self.argv = argv
        self.policy = policy
        self.key = secrets.token_urlsafe(24)
        self.process: asyncio.subprocess.Process | None = None
        self.spec: str | None = None  # http://127.0.0.1:PORT/v1#NAME, once started
        self.name: str | None = None
        self._output: deque[str] = deque(maxlen=20)  # its last lines, for a failure's message
        self._drain: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Run the engine and wait for its ready line, however long the model takes to load on
        a busy machine; TextgenError with its own error line if it exits first."""
        self.process = process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, KEY_ENV: self.key},
            # Its own group: Ctrl+C in the terminal reaches the server, which stops it in turn;
            # and it dies with the server, even a SIGKILLed one.
            start_new_session=True, preexec_fn=die_with_parent)
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode("utf-8", "replace"):
            self._output.append(line.rstrip())
            if ready := _READY.match(line):
                self.name = ready["name"]
                self.spec = f"{ready['url']}#{self.name}"
                self._drain = asyncio.create_task(self._relay(process.stdout))
                return
        await process.wait()
        raise TextgenError(self._failure(process.returncode))

    def _failure(self, status: int | None) -> str:
        said = [line for line in self._output if line.startswith("textgen: error:")]
        if said:
            return said[-1].removeprefix("textgen: error: ")
        last = next((line for line in reversed(self._output) if line.strip()), "no output")
        return f"the shared engine (textgen api) exited with status {status}: {last}"

    async def _relay(self, stdout: asyncio.StreamReader) -> None:
        """The engine's later lines (warnings, its failure) go to the server's log; reading them
        also keeps its pipe from filling up."""
        while line := await stdout.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if text and not self._stopping:  # what it says while stopping is expected
                log.warning("engine: %s", text)

    def tab_env(self) -> dict[str, str]:
        """What a tab's app needs to use the engine: its key, and its policy naming the engine's
        URL as the one model the tab runs."""
        assert self.spec is not None, "the engine has not started"
        policy = dataclasses.replace(self.policy, model=self.spec, shared_engine=True)
        return {TAB_KEY_ENV: self.key, ENV_VAR: policy.to_env()}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        """SIGINT (uvicorn's graceful stop), then SIGKILL after STOP_GRACE_S."""
        process = self.process
        if process is None:
            return
        self._stopping = True
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("the engine did not stop; sending SIGKILL")
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._drain, 2.0)

    def kill(self) -> None:
        """From outside the event loop (the server has stopped): SIGKILL it if it still runs."""
        if self.process is not None and self.process.returncode is None:
            _signal_group(self.process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
