"""SIGKILL, SIGTERM and SIGHUP at random moments of a generation, in real processes on a tiny
slowed model: no finished completion is ever lost, and for TERM and HUP the running one is kept
as `cancelled` and the process exits with 128 + the signal's number.

Each trial runs `textgen --plain` (or `generate`), lets 0-2 short completions finish, starts a
long one, waits for its first text, then a random 0-0.5 s more, and sends the signal. More
trials: TEXTGEN_SIGNAL_TRIALS=N (per signal; default 1, and 4 in the slow run).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from repl.session import load_session

ROOT = Path(__file__).resolve().parent.parent
SLOW = [sys.executable, str(ROOT / "tests" / "slow_textgen.py")]
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP}
WAIT_S = 600  # generous: a loaded machine may take minutes to import torch; never a failure


class Process:
    """A textgen process whose stdout bytes and stderr lines are read as they come."""

    def __init__(self, argv: list[str]) -> None:
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, cwd=ROOT)
        self.out = bytearray()
        self.err: list[str] = []
        self.changed = threading.Condition()
        for target in (self._read_out, self._read_err):
            threading.Thread(target=target, daemon=True).start()

    def _read_out(self) -> None:
        while chunk := self.popen.stdout.read1(4096):
            with self.changed:
                self.out += chunk
                self.changed.notify_all()

    def _read_err(self) -> None:
        for line in self.popen.stderr:
            with self.changed:
                self.err.append(line.decode("utf-8", "replace"))
                self.changed.notify_all()

    def wait_for(self, what: str, condition) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: condition() or self.popen.poll() is not None,
                                       timeout=WAIT_S)
        assert ok and condition(), f"waited for {what}; stderr: {''.join(self.err)}"

    def send(self, text: str) -> None:
        self.popen.stdin.write(text.encode())
        self.popen.stdin.flush()

    def finished(self) -> int:
        return sum(line.startswith("[") and "cancelled" not in line for line in self.err)


def trials(slow: bool) -> int:
    return int(os.environ.get("TEXTGEN_SIGNAL_TRIALS", "4" if slow else "1"))


def run_repl_trial(name: str, rng: random.Random, folder: Path, model: Path) -> tuple[int, int]:
    """One trial; returns (finished completions made, finished completions found after)."""
    folder.mkdir()
    signum = SIGNALS[name]
    short = rng.randint(0, 2)
    process = Process([*SLOW, "--plain", "--model", str(model), "--backend", "transformers",
                       "--sessions-dir", str(folder), "-n", "3", "--seed", "1"])
    try:
        for number in range(1, short + 1):
            process.send(f"short prompt {number}\n")
            process.wait_for(f"short completion {number}", lambda n=number: process.finished()
                             == n)
        process.send("/set max_new_tokens 240\nthe long one\n")
        shown = len(process.out)
        process.wait_for("the long one's first text", lambda: len(process.out) > shown)
        time.sleep(rng.uniform(0, 0.5))
        process.popen.send_signal(signum)
        status = process.popen.wait(timeout=WAIT_S)
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    turns = load_session(files[0]).turns if files else []
    kept = [c for t in turns for c in t.completions]
    finished = [c for c in kept if c.finish != "cancelled"]
    assert [t.prompt for t in turns[:short]] == [f"short prompt {n}" for n in range(1, short + 1)]
    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
        assert len(kept) == short  # the running one dies with the process, nothing else
    else:
        assert status == 128 + signum, "".join(process.err)
        assert "Traceback" not in "".join(process.err)
        running = kept[-1]
        assert turns[-1].prompt == "the long one" and running.finish == "cancelled"
        assert running.text and 0 < running.stats.new_tokens < 240
        assert f"stopped by SIG{name}" in "".join(process.err)
        assert [p.name for p in folder.iterdir()] == [files[0].name]  # no lock file left
    return short, len(finished)


def _signal_trials(name: str, count: int, tmp_path: Path, model: Path) -> None:
    rng = random.Random(f"{name}-{count}")
    made = found = 0
    for trial in range(count):
        short, kept = run_repl_trial(name, rng, tmp_path / f"trial-{trial}", model)
        made, found = made + short, found + kept
    print(f"\nSIG{name}: {count} trials, {made} finished completions, {made - found} lost")
    assert found == made


@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_mid_generation_loses_no_finished_turn(name, tmp_path, tiny_model_dir):
    _signal_trials(name, trials(slow=False), tmp_path, tiny_model_dir)


@pytest.mark.slow
# The suite's hang guard (300 s) is for one process; this runs `trials` of them, each taking
# a minute or more on a loaded machine.
@pytest.mark.timeout(300 * max(1, trials(slow=True)))
@pytest.mark.parametrize("name", list(SIGNALS))
def test_many_signals_at_random_moments(name, tmp_path, tiny_model_dir):
    _signal_trials(name, trials(slow=True), tmp_path, tiny_model_dir)


@pytest.mark.parametrize("name", ["TERM", "HUP"])
def test_generate_stops_on_a_signal_and_prints_what_it_has(name, tiny_model_dir):
    process = Process([*SLOW, "generate", "Hello", "--model", str(tiny_model_dir),
                       "--backend", "transformers", "-n", "240", "--seed", "1"])
    try:
        process.wait_for("the first text", lambda: len(process.out) > 0)
        process.popen.send_signal(SIGNALS[name])
        status = process.popen.wait(timeout=WAIT_S)
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
    err = "".join(process.err)
    assert status == 128 + SIGNALS[name], err
    assert "Traceback" not in err and f"stopped by SIG{name}" in err
    assert "cancelled" in err and process.out.strip()


def test_a_signal_while_waiting_for_input_ends_the_repl_cleanly(tmp_path, tiny_model_dir):
    """At the prompt (no generation), TERM ends the REPL at once and the session is saved."""
    process = Process([*SLOW, "--plain", "--model", str(tiny_model_dir), "--backend",
                       "transformers", "--sessions-dir", str(tmp_path), "-n", "3"])
    try:
        process.send("one prompt\n")
        process.wait_for("the completion", lambda: process.finished() == 1)
        process.popen.send_signal(signal.SIGTERM)
        status = process.popen.wait(timeout=WAIT_S)
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()
    assert status == 143, "".join(process.err)
    (saved,) = tmp_path.glob("*.json")
    assert [t.prompt for t in load_session(saved).turns] == ["one prompt"]
