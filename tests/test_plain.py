"""The plain REPL: through a pipe (a real subprocess and in-process), through prompt_toolkit's
test input, Ctrl+C mid-generation, and kill -9 mid-generation."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from repl.cli import build_parser, main
from repl.session import load_session
from tests import waiting

ROOT = Path(__file__).resolve().parent.parent


def only_session(folder: Path):
    files = [p for p in folder.glob("*.json") if not p.name.startswith(".")]
    assert len(files) == 1, files
    return files[0], load_session(files[0])


@pytest.mark.slow
def test_a_pipe_of_prompts_and_commands(tiny_model_dir, tmp_path):
    script = ("Hello there\n/regen\n/alt 1\n/continue\n/replay\n/set top_k 7\n/nonsense\n/quit\n"
              "ignored\n")
    result = subprocess.run(
        [sys.executable, "-m", "repl", "--plain", "--model", str(tiny_model_dir),
         "--sessions-dir", str(tmp_path), "-n", "6", "--seed", "3"],
        input=script, capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("loading model...\n")
    assert "textgen: error: unknown command /nonsense" in result.stderr
    assert "[replay of alternative 1: identical to the stored text]" in result.stderr
    assert "Traceback" not in result.stderr
    path, session = only_session(tmp_path)
    assert f"session saved to {path}" in result.stderr
    (turn,) = session.turns
    first, second = turn.completions
    assert turn.prompt == "Hello there" and turn.selected == 0
    assert [first.seed, second.seed] == [3, 4]
    assert len(first.continuations) == 1 and session.params.top_k == 7
    # stdout holds the model's text only: answer, alternative, the reshown first, continuation,
    # and the replay of the whole first alternative
    start = first.continuations[0].start
    assert result.stdout == (f"{first.text[:start]}\n{second.text}\n{first.text[:start]}\n"
                             f"{first.text[start:]}\n{first.text}\n")


def test_resume_a_saved_session_and_export_it(tiny_model_dir, tmp_path, monkeypatch, capsys):
    def repl(lines, *argv):
        monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
        assert main(["--plain", "--model", str(tiny_model_dir), "--sessions-dir", str(tmp_path),
                     *argv]) == 0
        return capsys.readouterr()

    repl("First prompt\n/regen\n/preset precise\n", "-n", "5")
    path, saved = only_session(tmp_path)
    assert saved.params.temperature == 0.3 and saved.params.max_new_tokens == 200

    out = repl("/params\n/alt 1\n/regen\n/export md\n", "--session", str(path), "-n", "4")
    session = load_session(path)
    turn = session.turns[0]
    assert [len(c.text) > 0 for c in turn.completions] == [True, True, True]
    assert turn.selected == 2 and turn.completions[2].params.max_new_tokens == 4
    assert turn.completions[2].params.temperature == 0.3  # the session's params came back
    assert "temperature            0.3" in out.out and "resumed 1 turn from" in out.err
    markdown = path.with_suffix(".md").read_text("utf-8")
    assert "Alternative 3 of 3 · selected" in markdown and "First prompt" in markdown

    out = repl("/load nowhere.json\n/save\n/save " + str(path) + "\n/mode chat\nHi\n")
    assert "textgen: error: nowhere.json: cannot read" in out.err
    assert "textgen: error: nothing to save yet" in out.err
    assert f"textgen: error: {path} already exists" in out.err
    assert "has no chat template" in out.err
    assert load_session(path) == session  # untouched by the other sessions


def test_prompt_toolkit_input_with_history_across_runs(tiny_model_dir, tmp_path, capsys):
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from repl import plain

    def repl(keys: str) -> None:
        args = build_parser().parse_args(["--plain", "--model", str(tiny_model_dir),
                                          "--sessions-dir", str(tmp_path), "-n", "4"])
        with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
            pipe.send_text(keys)
            pipe.close()
            assert plain.run(args, interactive=True) == 0

    # Esc Enter inserts a newline; Ctrl+C at the prompt only clears the line.
    repl("Two\x1b\rlines\rhalf typed\x03/alt\r/quit\r")
    path, session = only_session(tmp_path)
    assert [t.prompt for t in session.turns] == ["Two\nlines"]
    assert "* 1: " in capsys.readouterr().out
    assert (tmp_path / plain.HISTORY_FILE).is_file()
    path.unlink()

    repl("\x1b[A" * 3 + "\r")  # a new run: Up, Up, Up brings back the prompt before /alt, /quit
    _, session = only_session(tmp_path)
    assert [t.prompt for t in session.turns] == ["Two\nlines"]


class Reader:
    """Collects a pipe's bytes in a thread, so a test can wait for output to grow."""

    def __init__(self, stream) -> None:
        self.data = b""
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        while chunk := stream.read1(4096):
            self.data += chunk

    def wait_for(self, condition, timeout: float = waiting.LIMIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.data):
            assert time.monotonic() < deadline, waiting.timed_out(
                f"{waiting.describe(condition)}; the output ends {self.data[-500:]!r}", timeout)
            time.sleep(0.005)


wait_until = waiting.wait_until


def saved_turns(folder: Path) -> int:
    try:
        return len(only_session(folder)[1].turns)
    except AssertionError:
        return 0


@pytest.mark.slow
def test_ctrl_c_stops_a_generation_and_kill_9_loses_nothing_saved(tiny_model_dir, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "repl", "--plain", "--model", str(tiny_model_dir),
         "--sessions-dir", str(tmp_path), "-n", "240"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, err = Reader(proc.stdout), Reader(proc.stderr)
    try:
        proc.stdin.write(b"Interrupt me\n")
        proc.stdin.flush()
        out.wait_for(lambda data: len(data) > 0)
        proc.send_signal(signal.SIGINT)  # Ctrl+C: stops this generation only
        err.wait_for(lambda data: b"(stopped)" in data)
        proc.stdin.write(b"/set max_new_tokens 10\nStill here\n/set max_new_tokens 240\n")
        proc.stdin.flush()
        wait_until(lambda: saved_turns(tmp_path) == 2)
        size = len(out.data)
        proc.stdin.write(b"Kill me\n")
        proc.stdin.flush()
        out.wait_for(lambda data: len(data) > size)
        proc.send_signal(signal.SIGKILL)  # mid-generation
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert b"Traceback" not in err.data
    _, session = only_session(tmp_path)
    interrupted, after = session.turns[:2]
    assert interrupted.completion.finish == "cancelled"
    assert 0 < interrupted.completion.stats.new_tokens < 240
    assert out.data.decode("utf-8", "replace").startswith(interrupted.completion.text)
    assert after.prompt == "Still here" and after.completion.finish == "length"
    assert len(session.turns) == 2  # the killed generation never finished, so never saved


def test_an_unwritable_sessions_folder_is_reported_and_save_elsewhere_works(
        tiny_model_dir, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    elsewhere = tmp_path / "elsewhere.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Hello\n/regen\n/save {elsewhere}\n"))
    assert main(["--plain", "--model", str(tiny_model_dir), "--sessions-dir",
                 str(blocker / "sessions"), "-n", "3"]) == 0
    err = capsys.readouterr().err
    assert err.count("textgen: note: could not save to") == 2  # after each generation
    assert "Not a directory; the session is kept in memory" in err
    assert f"saved to {elsewhere}" in err and "could NOT be saved" not in err
    assert len(load_session(elsewhere).turns[0].completions) == 2


def test_edit_makes_a_branch_and_export_shows_the_new_one(tiny_model_dir, tmp_path,
                                                          monkeypatch, capsys):
    """The issue's check: A, B, `/edit 1 C` leaves a file holding A, B and C; the export of it
    shows C, not B; /branch lists both and switches back."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("A\nB\n/edit 1 C\n/branch\n/edit 9 X\n"))
    assert main(["--plain", "--model", str(tiny_model_dir), "--sessions-dir", str(tmp_path),
                 "-n", "3", "--seed", "2"]) == 0
    out = capsys.readouterr()
    assert "[turn 1 is now branch 2/2; /branch lists them]" in out.err
    assert "  1: A → B\n* 2: C\n" in out.out
    assert "textgen: error: there is no turn 9; this branch has 1." in out.err
    path, session = only_session(tmp_path)
    assert sorted(t.prompt for t in session.all_turns()) == ["A", "B", "C"]
    assert main(["export", str(path), "--format", "md"]) == 0
    markdown = capsys.readouterr().out
    assert "```text\nC\n```" in markdown and "```text\nB\n```" not in markdown

    monkeypatch.setattr(sys, "stdin", io.StringIO("/branch 1\n/branch x\n"))
    assert main(["--plain", "--model", str(tiny_model_dir), "--session", str(path)]) == 0
    out = capsys.readouterr()
    assert "[branch 1/2: 2 turns]" in out.err and "/branch takes a branch number" in out.err
    assert "(branch 2 of 2; /branch lists them)" in out.err  # where the file left off
    assert [t.prompt for t in load_session(path).turns] == ["A", "B"]
