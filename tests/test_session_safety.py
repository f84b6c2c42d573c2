"""Sessions that are impossible to lose: a second process on the same file, a full disk, and
the TUI's side of both."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import repl.session
from repl.cli import main
from repl.conversation import Conversation
from repl.errors import TextgenError
from repl.session import Session, SessionBusy, SessionLock, load_session, save_session
from tests.session_factories import sample_session

ROOT = Path(__file__).resolve().parent.parent


def complete_session() -> Session:
    session = sample_session()
    for turn in session.turns:
        turn.mode = "complete"
    return session


# --- two processes, one file ---------------------------------------------------------------------

def test_a_lock_is_shared_within_a_process_and_removed_on_release(tmp_path):
    path = tmp_path / "s.json"
    first = SessionLock.acquire(path)
    second = SessionLock.acquire(path)
    assert first is second and (tmp_path / ".s.json.lock").read_text().strip() == str(
        os.getpid())
    first.release()
    assert (tmp_path / ".s.json.lock").exists()  # one user left
    second.release()
    assert not (tmp_path / ".s.json.lock").exists()


def test_a_lock_held_by_another_process_names_its_pid(tmp_path):
    path = tmp_path / "s.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from repl.session import SessionLock; lock = SessionLock.acquire(Path(sys.argv[1])); "
         "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SessionBusy, match=f"open in another textgen process .pid "
                                              f"{holder.pid}."):
            SessionLock.acquire(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    SessionLock.acquire(path).release()  # its death freed the lock


def test_a_second_repl_on_the_same_file_works_on_a_copy_and_loses_no_turn(tmp_path,
                                                                          tiny_model_dir,
                                                                          monkeypatch, capsys):
    """A keeps the file; B says who holds it and saves its turn to a copy beside it: both of
    A's turns and B's turn survive (the last writer no longer wins)."""
    path = tmp_path / "shared.json"
    save_session(complete_session(), path)
    a = subprocess.Popen(
        [sys.executable, "-m", "repl", "--plain", "--session", str(path), "--model",
         str(tiny_model_dir), "-n", "3", "--seed", "1"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        cwd=ROOT)
    lines: list[str] = []
    finished = threading.Semaphore(0)

    def read() -> None:
        for line in a.stderr:
            lines.append(line)
            if line.startswith("["):  # the stats line of a finished generation
                finished.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        a.stdin.write("first from A\n")
        a.stdin.flush()
        assert finished.acquire(timeout=300), "".join(lines)
        before = path.read_bytes()
        monkeypatch.setattr(sys, "stdin", io.StringIO("from B\n"))
        assert main(["--plain", "--session", str(path), "--model", str(tiny_model_dir),
                     "-n", "3"]) == 0
        err = capsys.readouterr().err
        assert f"is open in another textgen process (pid {a.pid}); continuing in a copy" in err
        assert path.read_bytes() == before  # B never wrote A's file
        a.stdin.write("second from A\n/quit\n")
        a.stdin.flush()
        assert a.wait(timeout=300) == 0, "".join(lines)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    reader.join(timeout=60)
    prompts = [t.prompt for t in load_session(path).turns]
    assert prompts[-2:] == ["first from A", "second from A"]
    (copy,) = tmp_path.glob("shared-copy-*.json")
    copied = load_session(copy)
    assert [t.prompt for t in copied.turns][-2:] == ["first from A", "from B"]
    assert copied.id != load_session(path).id
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shared.json", copy.name])


# --- a full disk ---------------------------------------------------------------------------------

@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """Every save under tmp_path/full fails with ENOSPC, as on a full disk; elsewhere works."""
    full = tmp_path / "full"
    full.mkdir()
    real = repl.session.write_atomically

    def write(path: Path, data: bytes) -> None:
        if full in path.parents:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(repl.session, "write_atomically", write)
    return full


def test_a_full_disk_keeps_the_turns_refuses_new_and_load_and_exits_non_zero(
        full_disk, tmp_path, tiny_model_dir, monkeypatch, capsys):
    other = tmp_path / "other.json"
    save_session(complete_session(), other)
    script = f"Hello\n/new\n/load {other}\nStill here\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    status = main(["--plain", "--model", str(tiny_model_dir), "--sessions-dir", str(full_disk),
                   "-n", "3"])
    err = capsys.readouterr().err
    assert status == 1
    assert "No space left on device" in err
    assert err.count("the current session is not saved") == 2  # /new and /load refused
    assert "new session" not in err and "loaded" not in err
    assert "textgen: the session could NOT be saved" in err and "session saved" not in err
    assert list(full_disk.iterdir()) == []  # nothing half-written either


def test_a_full_disk_session_can_be_written_elsewhere_on_request(full_disk, tmp_path,
                                                                 tiny_model_dir, monkeypatch,
                                                                 capsys):
    elsewhere = tmp_path / "elsewhere.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Hello\n/save {elsewhere}\nAgain\n/new\n"))
    status = main(["--plain", "--model", str(tiny_model_dir), "--sessions-dir", str(full_disk),
                   "-n", "3"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert f"saved to {elsewhere}" in err and "new session" in err
    assert [t.prompt for t in load_session(elsewhere).turns] == ["Hello", "Again"]


def test_a_real_full_tmpfs(tmp_path, tiny_model_dir):
    """The same on a real 64 KiB tmpfs filled to the brim (needs root and mount)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        result = subprocess.run(
            [sys.executable, "-m", "repl", "--plain", "--model", str(tiny_model_dir),
             "--sessions-dir", str(mount), "-n", "3"],
            input="Hello\n/new\n", capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 1, result.stderr
        assert "No space left on device" in result.stderr
        assert "the current session is not saved" in result.stderr
        assert "Traceback" not in result.stderr
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_conversation_open_keeps_an_unsaved_session(full_disk, tiny_generator):
    conversation = Conversation(complete_session(), tiny_generator, path=full_disk / "s.json")
    list(conversation.submit("Hi"))
    assert conversation.save_error
    with pytest.raises(TextgenError, match="the current session is not saved"):
        conversation.open(Session(model={"spec": "x", "name": "x"}), None)
    assert conversation.session.turns[-1].prompt == "Hi"
    conversation.close()


# --- the TUI --------------------------------------------------------------------------------------

@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_tui_ctrl_n_on_a_full_disk_keeps_the_session(full_disk, tiny_loaded):
    from repl.params import SamplingParams
    from repl.tui.app import TextgenApp, _exit_status

    app = TextgenApp(tiny_loaded.info.spec, loaded=tiny_loaded, sessions_dir=full_disk,
                     params=SamplingParams(max_new_tokens=4, seed=1))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press(*"Hello", "enter")
        while not (app.conversation.session.turns and app.job is None
                   and app.conversation.session.turns[0].completions):
            await pilot.pause(0.05)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert [t.prompt for t in app.conversation.session.turns] == ["Hello"]
    assert _exit_status(app, 0) == 1  # could not be saved: a non-zero exit


@pytest.mark.anyio
async def test_tui_sigterm_mid_generation_keeps_the_turn_as_cancelled(tmp_path, tiny_model_dir):
    import signal
    import time

    from repl.models import load_model
    from repl.params import SamplingParams
    from repl.tui.app import TextgenApp, _exit_status

    loaded = load_model(str(tiny_model_dir), device="cpu")
    loaded.model.register_forward_hook(lambda *args: time.sleep(0.01))
    app = TextgenApp(loaded.info.spec, loaded=loaded, sessions_dir=tmp_path,
                     params=SamplingParams(max_new_tokens=240, seed=1))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press(*"Hello", "enter")
        while app.job is None or not app.job.text:
            await pilot.pause(0.02)
        # Only with the app's handler installed: the default action would end pytest.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        os.kill(os.getpid(), signal.SIGTERM)
        while app.return_code is None:
            await pilot.pause(0.05)
    assert app.exit_signal == signal.SIGTERM
    assert _exit_status(app, 0) == 143
    (saved,) = tmp_path.glob("*.json")
    completion = load_session(saved).turns[0].completions[0]
    assert completion.finish == "cancelled" and 0 < completion.stats.new_tokens < 240
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the app's handler is gone
