"""End to end in a real terminal: tmux runs `textgen` on the default model; the test types a
prompt, regenerates, stops with Esc and quits, reading the screen with capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from repl.session import load_session

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None,
                       reason="tmux is not installed (apt-get install -y tmux); the TUI's "
                              "end-to-end terminal test needs it"),
]

TEXTGEN = Path(sys.executable).parent / "textgen"


class Tmux:
    """One tmux server of our own (its own socket), so a user's tmux is never touched."""

    def __init__(self, name: str) -> None:
        self.socket = f"textgen-test-{os.getpid()}-{name}"
        self.target = name

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=30)

    def start(self, command: str, width: int = 120, height: int = 35) -> None:
        self.tmux("new-session", "-d", "-s", self.target, "-x", str(width), "-y", str(height),
                  command).check_returncode()

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", self.target, *(["-l"] if literal else []), *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.target).stdout

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", self.target).returncode == 0

    def wait_for(self, condition: Callable[[str], bool], what: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")
            time.sleep(0.2)

    def kill(self) -> None:
        self.tmux("kill-server")


def status_line(screen: str) -> str:
    return next((line for line in screen.splitlines() if "tok/s" in line), "")


def test_textgen_in_tmux_prompt_regenerate_stop_quit(tmp_path):
    term = Tmux("tui")
    command = (f"env TEXTGEN_SESSIONS_DIR={tmp_path} TERM=xterm-256color "
               f"{TEXTGEN} --max-new-tokens 400 --seed 1")
    term.start(command)
    try:
        term.wait_for(lambda s: "SmolLM2-135M-Instruct" in status_line(s), "the model to load")
        term.keys("The history of climate change research began", literal=True)
        time.sleep(0.3)
        term.keys("Enter")
        term.wait_for(lambda s: "generating" in s and "research began " in s.replace("\n", " ")
                      and "tok/s" in status_line(s) and "– tok/s" not in status_line(s),
                      "tokens to stream")
        term.keys("Escape")
        term.wait_for(lambda s: "last: cancelled" in status_line(s), "Esc to stop it")
        term.keys("C-r")
        term.wait_for(lambda s: "generating alternative 2" in s and "tok/s" in status_line(s)
                      and "– tok/s" not in status_line(s), "the regeneration's tokens")
        term.keys("Escape")
        # (the prompt itself may have scrolled away by now: the saved session is checked below)
        term.wait_for(lambda s: "‹ 2/2 ›" in s and "last: cancelled" in status_line(s),
                      "the second alternative to stop")
        term.keys("M-Left")
        term.wait_for(lambda s: "‹ 1/2 ›" in s, "paging to the first alternative")
        term.keys("C-q")
        deadline = time.monotonic() + 120  # saving and exiting, on a loaded machine
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not term.alive(), "textgen did not quit on Ctrl+Q"
    finally:
        term.kill()
    [path] = tmp_path.glob("*.json")
    turn = load_session(path).turns[0]
    assert turn.prompt == "The history of climate change research began"
    assert [c.finish for c in turn.completions] == ["cancelled", "cancelled"]
    assert turn.selected == 0 and all(c.text for c in turn.completions)
