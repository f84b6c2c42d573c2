"""One browser tab's app process: started without a shell in its own process group, fed from a
queue, and ended within seconds of its websocket closing, whatever it is doing.

textual-serve's own AppService asks the app to quit and then waits for it for ever; an app that is
busy (a long generation, or a giant redraw) never reads the request, and lives on. Here the app
gets QUIT_GRACE_S to quit, then SIGTERM, then SIGKILL, sent to its whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from asyncio.subprocess import Process
from pathlib import Path

from textual_serve.app_service import AppService

log = logging.getLogger("textgen.serve")

QUIT_GRACE_S = 3.0  # for the app to save its session and exit on its own
TERM_GRACE_S = 2.0  # after SIGTERM, before SIGKILL
MAX_QUEUED = 1024  # input packets waiting for an app that does not read them
# A terminal's size in cells: more only grows the app's screen buffers (one tab asked for
# 100000x100000 and the app grew to 6.6 GB).
MAX_WIDTH, MAX_HEIGHT = 500, 200


def clamp_size(width: object, height: object) -> tuple[int, int]:
    """A terminal size the app can afford, from whatever the browser sent."""
    def cells(value: object, default: int, top: int) -> int:
        try:
            number = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            number = default
        return max(1, min(number, top))

    return cells(width, 80, MAX_WIDTH), cells(height, 24, MAX_HEIGHT)


class TabProcess(AppService):
    """AppService for one tab: `argv` run directly, with `env` added to the environment."""

    def __init__(self, argv: list[str], env: dict[str, str], **kwargs) -> None:
        super().__init__(" ".join(argv), **kwargs)
        self.argv = argv
        self.extra_env = env
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(MAX_QUEUED)
        self._writer: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    @property
    def process(self) -> Process | None:
        return self._process

    async def _open_app_process(self, width: int = 80, height: int = 24) -> Process:
        environment = self._build_environment(width=width, height=height)
        environment.update(self.extra_env)
        self._process = process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=environment,
            start_new_session=True,  # its own group: the signals reach its children too
            preexec_fn=die_with_parent,
        )
        assert process.stdin is not None
        self._stdin = process.stdin
        self._writer = asyncio.create_task(self._write_queued())
        return process

    async def start(self, width: int, height: int) -> None:
        await super().start(*clamp_size(width, height))

    # Input is queued rather than written in the websocket's loop, so an app that stops reading
    # its stdin cannot stall that loop: the server still sees the websocket close.
    def _post(self, packet: bytes) -> bool:
        try:
            self._queue.put_nowait(packet)
        except asyncio.QueueFull:
            return False
        return True

    def post_keys(self, text: str) -> bool:
        """Queue keyboard input; False when the app has stopped reading (the queue is full)."""
        return self._post(self.encode_packet(b"D", text.encode("utf-8", "replace")))

    def post_meta(self, data: dict[str, object]) -> bool:
        import json

        return self._post(self.encode_packet(b"M", json.dumps(data).encode("utf-8")))

    def post_resize(self, width: object, height: object) -> bool:
        width, height = clamp_size(width, height)
        return self.post_meta({"type": "resize", "width": width, "height": height})

    async def _write_queued(self) -> None:
        stdin = self.stdin
        while (packet := await self._queue.get()) is not None:
            try:
                stdin.write(packet)
                await stdin.drain()
            except (ConnectionError, RuntimeError):
                return

    async def stop(self) -> None:
        """Ask the app to quit; TERM, then KILL, its process group if it does not. Every caller
        (the tab's handler, the server's shutdown) waits for the same ending."""
        await asyncio.shield(self.stop_soon())

    def stop_soon(self) -> asyncio.Future[None]:
        """Start ending the app (once); the future is done when it and its group are gone."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._end())
        return self._stopping

    async def _end(self) -> None:
        if self._task is None:
            return
        task, self._task = self._task, None
        await self._download_manager.cancel_app_downloads(app_service_id=self.app_service_id)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(self.encode_packet(b"M", b'{"type": "quit"}'))
        process = self._process
        assert process is not None
        pid = process.pid  # also its process group's id
        if not await _until(lambda: process.returncode is not None, QUIT_GRACE_S):
            log.warning("tab app %s did not quit; sending SIGTERM", pid)
            _signal_group(pid, signal.SIGTERM)
            if not await _until(lambda: process.returncode is not None, TERM_GRACE_S):
                log.warning("tab app %s ignored SIGTERM; sending SIGKILL", pid)
                _signal_group(pid, signal.SIGKILL)
        # What the app left running in its group (a trainer, say) gets the same sequence.
        if not _group_empty(pid):
            _signal_group(pid, signal.SIGTERM)
            if not await _until(lambda: _group_empty(pid), TERM_GRACE_S):
                _signal_group(pid, signal.SIGKILL)
        if self._writer is not None:
            self._writer.cancel()
        self.stdin.close()
        # The reader ends when the app's pipes close; a process outside the group (one that
        # left it) could hold them open, so it is not waited for long.
        if not (await asyncio.wait({task}, timeout=2.0))[0]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 2.0)


async def _until(condition, timeout: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _group_empty(pgid: int) -> bool:
    """No live process in the group (zombies waiting for a slow init to reap them are dead)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended while we looked
        if fields[0] != "Z" and fields[2] == str(pgid):
            return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the server dies (even by SIGKILL); Linux only."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
