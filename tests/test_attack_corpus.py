"""The attack corpus (issue 15) as data: every input that once gave a traceback, hung, read
without end, or changed a file is replayed here.

Each case is a command line (and its stdin) run through `textgen`'s own `main`; what must come
back is a non-zero exit and one clear `textgen: error: ...` line (or, for the REPL, that line
and a REPL that carries on), and no file in the corpus folder may change: the hashes of every
file are compared before and after each case. The counts are printed for the issue's note.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from repl.cli import main
from repl.session import Session, Turn, load_session, save_session
from tests.session_factories import sample_session

ROOT = Path(__file__).resolve().parent.parent
OSC52 = "\x1b]52;c;SGVsbG8=\x07"  # writes "Hello" to the clipboard
OSC8 = "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\"
CLEAR = "\x1b[2J"


@dataclass
class Case:
    name: str
    argv: list[str]  # {tiny}, {dir}... are filled in from the corpus folder
    error: str  # a piece of the one error line
    stdin: bytes = b""
    status: int = 2  # the exit status expected
    repl: bool = False  # the REPL reports the error and goes on: other lines on stderr
    tags: list[str] = field(default_factory=list)


GENERATE = ["generate", "x", "--model", "{tiny}", "-n", "2"]

CASES: list[Case] = [
    # Parameters: each was a traceback, or accepted and then sampled inf/nan.
    Case("device-unknown", [*GENERATE, "--device", "nodevice"], "unknown device 'nodevice'"),
    Case("device-cuda-missing", [*GENERATE, "--device", "cuda"], "CUDA is not available"),
    Case("device-cuda-index", [*GENERATE, "--device", "cuda:7"], "CUDA is not available"),
    Case("repetition-penalty-tiny", [*GENERATE, "--repetition-penalty", "1e-300"],
         "repetition_penalty must be from 0.05 to 20"),
    Case("temperature-tiny", [*GENERATE, "--temperature", "1e-40"],
         "temperature must be 0 (greedy) or at least 0.01"),
    Case("repetition-penalty-inf", [*GENERATE, "--repetition-penalty", "inf"],
         "repetition_penalty must be from"),
    Case("temperature-nan", [*GENERATE, "--temperature", "nan"], "temperature must be a number"),
    Case("top-p-minus-inf", [*GENERATE, "--top-p=-inf"], "top_p must be more than 0"),
    Case("top-k-huge", [*GENERATE, "--top-k", str(10**30)], "top_k must be a whole number from"),
    Case("no-repeat-ngram-huge", [*GENERATE, "--no-repeat-ngram-size", str(10**30)],
         "no_repeat_ngram_size must be a whole number from"),
    Case("max-new-tokens-huge", [*GENERATE[:-2], "-n", str(10**30)],
         "max_new_tokens must be at most"),
    # Inputs.
    Case("stdin-not-utf8", ["generate", "-", "--model", "{tiny}"], "stdin is not UTF-8 text",
         stdin=b"caf\xe9 \xff\xfe"),
    Case("stdin-empty", ["generate", "-", "--model", "{tiny}"], "the prompt on stdin is empty"),
    Case("stdin-blank", ["generate", "-", "--model", "{tiny}"], "the prompt on stdin is empty",
         stdin=b" \n\n"),
    Case("gguf-malformed", ["generate", "x", "--model", "{bad_gguf}"], "bad.gguf"),
    Case("gguf-truncated", ["generate", "x", "--model", "{truncated_gguf}"], "truncated.gguf"),
    Case("pickle-checkpoint", ["generate", "x", "--model", "{pickled}"],
         "refused for safety"),
    # Special files: none may hang or read without end.
    Case("session-fifo", ["--plain", "--session", "{dir}/x.json", "--model", "{tiny}"],
         "not a regular file (a named pipe)"),
    Case("session-dev-zero", ["--plain", "--session", "{dir}/zero.json", "--model", "{tiny}"],
         "not a regular file (a device)"),
    Case("session-directory", ["--plain", "--session", "{dir}/folder.json"],
         "not a regular file (a directory)"),
    Case("export-fifo", ["export", "{dir}/x.json"], "not a regular file (a named pipe)"),
    Case("export-dev-zero", ["export", "{dir}/zero.json"], "not a regular file (a device)"),
    # Numbers JSON does not have.
    Case("session-infinity", ["export", "{dir}/infinity.json"], "Infinity is not a JSON number"),
    Case("session-nan", ["export", "{dir}/nan.json"], "NaN is not a JSON number"),
    Case("session-1e999", ["export", "{dir}/huge-float.json"], "too large for a number"),
    # The REPL: one error line, and it carries on.
    Case("repl-not-utf8", ["--plain", "--model", "{tiny}", "--sessions-dir", "{empty}"],
         "input line 1 is not UTF-8 text", stdin=b"\xff\xfe\n/params\n", status=1, repl=True),
    Case("repl-model-malformed-gguf", ["--plain", "--model", "{tiny}", "--sessions-dir",
                                       "{empty}"],
         "bad.gguf", stdin=b"/model {bad_gguf}\n/params\n", status=0, repl=True),
    Case("repl-model-pickle", ["--plain", "--model", "{tiny}", "--sessions-dir", "{empty}"],
         "refused for safety", stdin=b"/model {pickled}\n/params\n", status=0, repl=True),
    Case("repl-set-inf", ["--plain", "--model", "{tiny}", "--sessions-dir", "{empty}"],
         "repetition_penalty must be a number, not 'inf'",
         stdin=b"/set repetition_penalty inf\n/params\n", status=0, repl=True),
    Case("repl-set-tiny-temperature", ["--plain", "--model", "{tiny}", "--sessions-dir",
                                       "{empty}"],
         "temperature must be 0 (greedy) or at least 0.01",
         stdin=b"/set temperature 1e-40\n/params\n", status=0, repl=True),
    Case("repl-load-fifo", ["--plain", "--model", "{tiny}", "--sessions-dir", "{empty}"],
         "not a regular file (a named pipe)", stdin=b"/load {dir}/x.json\n/params\n",
         status=0, repl=True),
    # A session whose model is a broken gguf: a note, and the model asked for instead.
    Case("session-names-malformed-gguf", ["--plain", "--session", "{dir}/broken-model.json"],
         "cannot load the session's model", status=0, repl=True),
]


def _fill(text: str, where: dict[str, str]) -> str:
    for key, value in where.items():
        text = text.replace("{" + key + "}", value)
    return text


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every regular file under `folder` (not following links, not opening FIFOs)."""
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                found[str(path)] = "special"
                continue
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _session_json(session: Session) -> dict:
    return session.to_dict()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    """The folder of hostile files every case runs against."""
    import shutil

    base = tmp_path_factory.mktemp("corpus")
    files = base / "files"
    files.mkdir()
    (base / "empty").mkdir()
    os.mkfifo(files / "x.json")
    (files / "zero.json").symlink_to("/dev/zero")
    (files / "folder.json").mkdir()
    good = _session_json(sample_session())
    for name, constant in (("infinity", "Infinity"), ("nan", "NaN"), ("huge-float", "1e999")):
        good["params"]["temperature"] = "PLACEHOLDER"
        text = json.dumps(good, indent=1).replace('"PLACEHOLDER"', constant)
        (files / f"{name}.json").write_text(text, "utf-8")
    models = base / "models"
    models.mkdir()
    (models / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    (models / "truncated.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 5) + b"\x05\x00")
    pickled = models / "pickled"
    pickled.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, pickled / item.name)
    _write_hostile_pickle(tiny_model_dir / "model.safetensors", pickled / "pytorch_model.bin")
    broken = sample_session()
    broken.model = {"spec": str(models / "bad.gguf"), "name": "bad"}
    save_session(broken, files / "broken-model.json")
    return {"dir": str(files), "empty": str(base / "empty"), "tiny": str(tiny_model_dir),
            "bad_gguf": str(models / "bad.gguf"), "truncated_gguf": str(models / "truncated.gguf"),
            "pickled": str(pickled), "base": str(base)}


class _Payload:
    """Not weights: torch's weights_only unpickler refuses it (and would run it otherwise)."""

    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


def _write_hostile_pickle(safetensors_file: Path, target: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = dict(load_file(safetensors_file))
    state["_extra"] = _Payload()
    torch.save(state, target)


def _run(case: Case, corpus: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    argv = [_fill(a, corpus) for a in case.argv]
    data = _fill(case.stdin.decode("latin-1"), corpus).encode("latin-1")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    monkeypatch.setenv("TEXTGEN_SESSIONS_DIR", corpus["empty"])
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


RESULTS: dict[str, bool] = {}  # case -> a clean error
CHANGED: dict[str, int] = {}  # case -> files added, removed or changed


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_attack_gives_one_clear_line_and_changes_no_file(case, corpus, monkeypatch, capsys):
    before = _hashes(Path(corpus["base"]))
    status, _, err = _run(case, corpus, monkeypatch, capsys)
    after = _hashes(Path(corpus["base"]))
    RESULTS[case.name] = False
    CHANGED[case.name] = sum(after.get(k) != before.get(k) for k in before.keys() | after.keys())
    assert "Traceback" not in err
    assert status == case.status, err
    errors = [line for line in err.splitlines() if line.startswith("textgen: error:")]
    if case.repl:
        assert case.error in err, err
        assert "usage: /" not in err
    else:
        assert len(err.strip().splitlines()) == 1, err
        assert len(errors) == 1 and case.error in errors[0], err
    assert after == before, "a file changed"
    RESULTS[case.name] = True


def test_the_counts():
    """For the issue's note: inputs tried, clean errors, files changed (this runs last)."""
    if len(RESULTS) < len(CASES):
        pytest.skip("run with the whole corpus to count")
    print(f"\nattack corpus: {len(CASES)} inputs tried, {sum(RESULTS.values())} clean errors, "
          f"{sum(CHANGED.values())} files changed")
    assert all(RESULTS.values()) and not any(CHANGED.values())


# --- what must not change, shown or hidden -------------------------------------------------------

def _hostile_session(folder: Path, title: str) -> Path:
    session = sample_session()
    session.turns[0].prompt = title
    for turn in session.turns:
        for completion in turn.completions:
            completion.text = f"text {OSC52}{OSC8}{CLEAR} end"
            completion.continuations = []
    path = folder / f"{title.encode('utf-8', 'backslashreplace').hex()[:12]}.json"
    save_session(session, path)
    return path


def test_sessions_list_and_search_show_escapes_and_list_past_a_bad_title(tmp_path):
    """A lone surrogate in one title and escape sequences in another: every file is listed,
    no control character reaches the terminal, also with PYTHONIOENCODING=utf-8."""
    _hostile_session(tmp_path, "alpha \ud800 surrogate")
    _hostile_session(tmp_path, f"beta {OSC52} clipboard")
    _hostile_session(tmp_path, "gamma plain")
    for env in ({}, {"PYTHONIOENCODING": "utf-8"}, {"PYTHONIOENCODING": "ascii"}):
        for command in (["sessions", "list"], ["sessions", "search", "text"]):
            result = subprocess.run(
                [sys.executable, "-m", "repl", *command, "--sessions-dir", str(tmp_path)],
                capture_output=True, cwd=ROOT, timeout=600, env={**os.environ, **env})
            assert result.returncode == 0, result.stderr
            assert b"Traceback" not in result.stderr
            lines = result.stdout.splitlines()
            # Each of the three files is listed (search shows each hit, prompt and text).
            assert len({line.split()[0] for line in lines}) == 3, (env, command, result.stdout)
            assert b"\x1b" not in result.stdout and b"\x07" not in result.stdout
    # The files keep their exact text.
    texts = [load_session(p).turns[0].completions[0].text for p in tmp_path.glob("*.json")]
    assert all(OSC52 in t and CLEAR in t for t in texts)


def test_export_to_a_terminal_shows_escapes_and_to_a_pipe_keeps_them(tmp_path):
    import pty

    path = _hostile_session(tmp_path, "title")
    piped = subprocess.run([sys.executable, "-m", "repl", "export", str(path)],
                           capture_output=True, cwd=ROOT, timeout=600)
    assert piped.returncode == 0 and OSC52.encode() in piped.stdout  # files keep the exact text
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "repl", "export", str(path)],
                                   stdout=follower, stderr=subprocess.PIPE, cwd=ROOT)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the writer closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=600) == 0
    finally:
        os.close(leader)
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert "␛]52;c;SGVsbG8=␇".encode() in shown  # shown, not obeyed


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_repl_shows_escapes_on_a_terminal_in_alt_and_load(tmp_path, tiny_generator):
    from repl.conversation import Conversation
    from repl.plain import PlainRepl

    path = _hostile_session(tmp_path, "title")
    session = load_session(path)
    conversation = Conversation(Session(model={"spec": "x", "name": "x"}), tiny_generator,
                                sessions_dir=tmp_path)
    out = _Terminal()
    repl = PlainRepl(conversation, tmp_path, interactive=False, out=out)
    repl.handle(f"/load {path}")
    repl.handle("/alt")
    repl.handle("/alt 1")
    conversation.close()
    shown = out.getvalue()
    assert "\x1b" not in shown and "\x07" not in shown
    assert shown.count("␛]52;c;SGVsbG8=␇") == 3
    assert load_session(path).turns == session.turns  # nothing written back


def test_generate_on_a_terminal_shows_escapes_a_model_writes(monkeypatch, capsys):
    """`generate` to a terminal neutralises what the model writes; --json keeps it exact."""
    import repl.engine
    from tests.fake_backend import FakeBackend

    monkeypatch.setattr(repl.engine, "open_backend",
                        lambda spec, **options: FakeBackend([f"a{OSC52}b", CLEAR]))
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert main(["generate", "x"]) == 0
    shown = sys.stdout.getvalue()
    assert "\x1b" not in shown and "a␛]52;c;SGVsbG8=␇b␛[2J" in shown
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["generate", "x", "--json"]) == 0
    assert json.loads(sys.stdout.getvalue())["text"] == f"a{OSC52}b{CLEAR}"


def test_a_session_with_unknown_fields_and_a_turn_survives_a_resume(tmp_path, tiny_model_dir,
                                                                     monkeypatch, capsys):
    """Top-level `tags`, a turn's `note`, a completion's `rating` are kept by the next save."""
    data = sample_session().to_dict()
    data["tags"] = ["keep", "me"]
    data["turns"][0]["note"] = "a user's note"
    data["turns"][0]["completions"][0]["rating"] = 5
    data["model"]["revision"] = "abc"
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(data), "utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO("/mode complete\nOne more prompt\n"))
    assert main(["--plain", "--session", str(path), "--model", str(tiny_model_dir),
                 "-n", "3"]) == 0
    saved = json.loads(path.read_text("utf-8"))
    assert saved["tags"] == ["keep", "me"]
    assert saved["turns"][0]["note"] == "a user's note"
    assert saved["turns"][0]["completions"][0]["rating"] == 5
    assert len(saved["turns"]) == len(data["turns"]) + 1


def test_a_valid_session_from_dev_null_exits_cleanly(tmp_path, tiny_model_dir):
    """`--session F </dev/null` ends with 0, whatever threads are still running (it was 134)."""
    path = tmp_path / "s.json"
    save_session(sample_session(), path)
    before = path.read_bytes()
    result = subprocess.run([sys.executable, "-m", "repl", "--plain", "--session", str(path),
                             "--model", str(tiny_model_dir)],
                            stdin=subprocess.DEVNULL, capture_output=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no lock file left behind


def test_a_fifo_session_does_not_hang_a_real_process(tmp_path):
    os.mkfifo(tmp_path / "x.json")
    for argv in (["--plain", "--session", str(tmp_path / "x.json")],
                 ["export", str(tmp_path / "x.json")]):
        result = subprocess.run([sys.executable, "-m", "repl", *argv], capture_output=True,
                                text=True, cwd=ROOT, timeout=600, stdin=subprocess.DEVNULL)
        assert result.returncode == 2
        assert result.stderr.strip().endswith("not a regular file (a named pipe); a session is "
                                              "a plain file")


def test_turn_placeholder_is_a_valid_session():
    """A prompt whose generation never started (a signal at that moment) still saves."""
    session = sample_session()
    session.turns.append(Turn(mode="complete", prompt="never answered"))
    assert Session.from_dict(json.loads(json.dumps(session.to_dict()))).turns[-1].prompt == (
        "never answered")
