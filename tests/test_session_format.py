"""The session file format: round trips, atomic writes, and clean errors for broken files."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from repl.errors import TextgenError
from repl.export import to_jsonl, to_markdown
from repl.session import (
    VERSION,
    Session,
    atomic_write,
    encode_session,
    load_session,
    save_session,
    session_filename,
)
from tests.session_factories import (
    sample_session,
    sample_session_v2,
    sample_session_v3,
    sessions,
)

# --- round trips ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions)
def test_any_session_survives_json(session):
    assert Session.from_dict(json.loads(encode_session(session))) == session


@settings(max_examples=40, deadline=None)
@given(sessions)
def test_any_session_survives_a_file_and_gets_a_safe_name(session):
    with tempfile.TemporaryDirectory() as tmp:
        name = session_filename(session)
        assert "/" not in name and name.endswith(".json") and not name.startswith(".")
        path = Path(tmp) / name
        save_session(session, path)
        assert load_session(path) == session
        assert sorted(os.listdir(tmp)) == [name]  # no temp file left behind


def test_sample_session_file_is_readable_json(tmp_path):
    path = tmp_path / "s.json"
    save_session(sample_session(), path)
    data = json.loads(path.read_text("utf-8"))
    assert data["format"] == "textgen-session" and data["version"] == VERSION
    assert data["turns"][0]["selected"] == 1
    assert data["turns"][0]["completions"][0]["continuations"][0]["start"] == 27
    assert "“" not in path.read_text("utf-8")  # plain UTF-8 JSON, no pickles or escapes needed


def test_recorded_chat_context_round_trips_and_rebuilds_the_messages():
    session = sample_session_v2()
    again = Session.from_dict(json.loads(encode_session(session)))
    assert again == session
    completion = again.turns[3].completions[0]
    assert completion.history == [(1, 0, 10)] == completion.continuations[0].history
    assert again.messages_from(completion.history) == [
        {"role": "user", "content": "How do I *print* in Python?"},
        {"role": "assistant", "content": "# Not a he"}]
    assert again.history_refs(3) == [(1, 0, len(again.turns[1].completions[0].text))]


# --- versions 1 and 2 load unchanged; version 3 keeps the tree -----------------------------------

V1_FILE = {  # as textgen 0.1 wrote it: no compare, forced, history or branches
    "format": "textgen-session", "version": 1, "id": "0123456789ab",
    "created": "2026-01-02T03:04:05+00:00", "model": {"spec": "default", "name": "SmolLM2"},
    "params": {"temperature": 0.7, "seed": 5}, "tags": ["kept"],
    "turns": [
        {"mode": "complete", "prompt": "Once", "selected": 1, "colour": "blue",
         "completions": [
             {"text": " upon", "params": {"seed": 5}, "seed": 5, "stats": None,
              "finish": "length", "model": "default", "created": "2026-01-02T03:04:06+00:00",
              "continuations": []},
             {"text": " more", "params": {"seed": 6}, "seed": 6, "stats": None,
              "finish": "eos", "model": "default", "created": "2026-01-02T03:04:07+00:00",
              "continuations": []}]},
        {"mode": "chat", "prompt": "Hi", "selected": 0,
         "completions": [
             {"text": "Hello!", "params": {}, "seed": 1, "stats": None, "finish": "eos",
              "model": "default", "created": "2026-01-02T03:05:00+00:00",
              "continuations": []}]},
    ],
}


def _v2_file() -> dict:
    data = json.loads(encode_session(sample_session_v2()))
    data["version"] = 2
    return data


@pytest.mark.parametrize("data", [V1_FILE, _v2_file()], ids=["v1", "v2"])
def test_version_1_and_2_files_load_unchanged_and_save_as_a_tree_of_one_branch(data, tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    session = load_session(path)
    assert [t.prompt for t in session.turns] == [t["prompt"] for t in data["turns"]]
    assert [t.selected for t in session.turns] == [t["selected"] for t in data["turns"]]
    assert all(t.branches == [] and t.branch == 0 for t in session.turns)
    assert [[c.text for c in t.completions] for t in session.turns] == [
        [c["text"] for c in t["completions"]] for t in data["turns"]]
    assert len(session.branches()) == 1 and session.branches()[0].current
    save_session(session, path)
    again = json.loads(path.read_text("utf-8"))
    assert again["version"] == VERSION == 3
    # The same fields, unknown ones included; nothing about branches where there are none.
    assert set(again) == set(data) and again.get("tags") == data.get("tags")
    assert [set(t) for t in again["turns"]] == [set(t) for t in data["turns"]]
    assert load_session(path) == session


def test_version_3_keeps_the_tree_and_each_branch_has_its_own_context(tmp_path):
    session = sample_session_v3()
    path = tmp_path / "tree.json"
    save_session(session, path)
    data = json.loads(path.read_text("utf-8"))
    shown = data["turns"][1]
    assert shown["branch"] == 0 and [t["prompt"] for t in shown["branches"][0]] == [
        "How do I print in Rust?", "Shorter?"]
    assert "branches" not in data["turns"][0]  # only where there are some
    again = load_session(path)
    assert again == session
    assert [[t.prompt for t in b.turns] for b in again.branches()] == [
        ["It", "How do I *print* in Python?", "Compare", "Shorter?"],
        ["It", "How do I print in Rust?", "Shorter?"]]
    again.switch_branch(1, 1)
    follow = again.turns[2].completions[0]
    assert again.messages_from(follow.history) == [
        {"role": "user", "content": "How do I print in Rust?"},
        {"role": "assistant", "content": "print"}]
    again.switch_branch(1, 0)
    assert again == session  # switching back restores the file's tree exactly


def test_filename_sorts_by_time_and_says_what_it_is_about():
    session = sample_session()
    assert session_filename(session) == "20261123-100000-it-abc1.json"


# --- atomic writes and failures -----------------------------------------------------------------


def test_crash_before_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    save_session(sample_session(), path)
    before = path.read_bytes()
    changed = sample_session()
    changed.turns.pop()

    def die(*args):
        raise KeyboardInterrupt  # the process dies between writing the temp file and renaming

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        save_session(changed, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.json"]


def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    save_session(sample_session(), path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(TextgenError, match="could not save to .*s.json: No space left on device; "
                                           "the session is kept in memory"):
        save_session(sample_session(), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.json"]


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(TextgenError, match="could not save to .*: Not a directory"):
        save_session(sample_session(), blocker / "sessions" / "s.json")


def test_existing_permissions_are_kept(tmp_path):
    path = tmp_path / "s.json"
    atomic_write(path, b"one")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    path.chmod(0o640)
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o640


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_kill_9_while_saving_in_a_loop_always_leaves_a_loadable_file(tmp_path):
    """A process rewrites a growing session as fast as it can; kill -9 at random moments."""
    path = tmp_path / "s.json"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tests.session_factories import sample_session
        from repl.session import save_session
        session = sample_session()
        path = Path({str(path)!r})
        save_session(session, path)
        print("ready", flush=True)
        while True:
            session.turns[0].completions[0].text += " more words" * 50
            save_session(session, path)
    """)
    rng = random.Random(0)
    sizes = set()
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                cwd=Path(__file__).parent.parent)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.02, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        session = load_session(path)  # never torn
        sizes.add(len(session.turns[0].completions[0].text))
    assert len(sizes) > 1  # the kills landed at different points


# --- broken files: one precise line, the file untouched ------------------------------------------

WRONG_VALUES = [None, True, 0, -1, 1.5, "", "x", [], {}, [1], {"a": 1}, 2**40]


def _paths(node, prefix=()):
    """Every (path, value) in a JSON tree."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _with(data, path, value=..., delete=False):
    copy = json.loads(json.dumps(data))
    if not path:
        return value
    node = copy
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return copy


def broken_files() -> list[tuple[str, bytes]]:
    good = encode_session(sample_session_v3())
    data = json.loads(good)
    rng = random.Random(1234)
    cases: list[tuple[str, bytes]] = []
    cases += [(f"truncated at {n}", good[:n]) for n in range(0, len(good) - 1, 5)]
    for i in range(400):
        at = rng.randrange(len(good))
        flipped = bytearray(good)
        flipped[at] ^= rng.randrange(1, 256)
        cases.append((f"byte flip {i} at {at}", bytes(flipped)))
    for path, value in list(_paths(data)):
        for wrong in WRONG_VALUES:
            if type(wrong) is not type(value) or wrong == value:
                cases.append((f"{path} = {wrong!r}", json.dumps(_with(data, path, wrong)).encode()))
        if path and isinstance(path[-1], str):
            cases.append((f"{path} deleted", json.dumps(_with(data, path, delete=True)).encode()))
    specials = {
        "newer version": _with(data, ("version",), VERSION + 1),
        "version as text": _with(data, ("version",), "1"),
        "other format": _with(data, ("format",), "something-else"),
        "selected out of range": _with(data, ("turns", 0, "selected"), 2),
        "continuation past the text": _with(
            data, ("turns", 0, "completions", 0, "continuations", 0, "start"), 10**6),
        "unknown param": _with(data, ("params", "warmth"), 3),
        "stop as text": _with(data, ("params", "stop"), "abc"),
        "bad date": _with(data, ("created",), "yesterday"),
        "bad finish": _with(data, ("turns", 0, "completions", 0, "finish"), "exploded"),
        "NaN temperature": _with(data, ("params", "temperature"), float("nan")),
        "history of a later turn": _with(data, ("turns", 3, "completions", 0, "history"),
                                         [[3, 0, 0]]),
        "history past the text": _with(data, ("turns", 3, "completions", 0, "history"),
                                       [[1, 0, 1000]]),
        "branch out of range": _with(data, ("turns", 1, "branch"), 2),
        "an empty branch": _with(data, ("turns", 1, "branches"), [[]]),
        "a branch that is not a list": _with(data, ("turns", 1, "branches", 0), {"x": 1}),
        "history past a branch's own text": _with(
            data, ("turns", 1, "branches", 0, 1, "completions", 0, "history"), [[1, 0, 100]]),
        "a branch head with branches": _with(
            data, ("turns", 1, "branches", 0, 0, "branches"),
            [data["turns"][1]["branches"][0][1:]]),
    }
    cases += [(name, json.dumps(value).encode()) for name, value in specials.items()]
    cases += [
        ("empty", b""), ("whitespace", b" \n "), ("null", b"null"), ("a list", b"[]"),
        ("latin-1", "{\"x\": \"é\"}".encode("latin-1")), ("BOM", b"\xef\xbb\xbf" + good),
        ("deep nesting", b"[" * 100_000), ("huge integer", b"1" * 5000),
        ("binary", bytes(range(256))), ("a pickle", b"\x80\x04\x95\x00\x00."),
        ("branches nested 250 deep", _deep_branches(data, 250)),
        ("branches nested 2000 deep", _deep_branches(data, 2000)),
    ]
    return cases


def _deep_branches(data: dict, depth: int) -> bytes:
    """`data` whose last turn holds a branch holding a branch ... `depth` times (built as text:
    json.dumps itself would recurse)."""
    plain = '{"mode": "chat", "prompt": "p", "selected": 0, "completions": []}'
    turn = plain
    for _ in range(depth):
        turn = (plain[:-1] + ', "branch": 0, "branches": [[' + plain + ", " + turn + "]]}")
    head = json.dumps({**data, "turns": []})
    return head.replace('"turns": []', '"turns": [' + turn + "]").encode()


def test_broken_files_give_one_precise_line_and_stay_unchanged(tmp_path):
    cases = broken_files()
    assert len(cases) > 1500
    loaded = errors = 0
    for index, (name, content) in enumerate(cases):
        path = tmp_path / f"case-{index}.json"
        path.write_bytes(content)
        try:
            session = load_session(path)
        except TextgenError as exc:
            errors += 1
            message = str(exc)
            assert message.startswith(f"{path}: "), (name, message)
            assert "\n" not in message and len(message) < 400, (name, message)
        else:  # a harmless change (e.g. a flipped letter in a text): it must then work fully
            loaded += 1
            to_markdown(session), to_jsonl(session), session_filename(session)
            assert Session.from_dict(json.loads(encode_session(session))) == session
        assert path.read_bytes() == content, name
    assert errors > 1400 and loaded > 0
    print(f"{len(cases)} broken files: {errors} clean errors, {loaded} harmless and loaded")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"format": "textgen-session", "version": 99}', "written by a newer textgen "
                                                          "(session version 99"),
        (b'{"format": "textgen-session", "vers',
         "truncated (the JSON stops early, at line 1, column 35)"),
        (b'{"format": "textgen-session",, }', "invalid JSON (line 1, column 30"),
        (b'{"format": "textgen-session", "version": 1, "model": {"spec": "a", "name": "b"}, '
         b'"id": 5}', "session: 'id' should be text, not a whole number"),
    ],
)
def test_bad_session_on_the_command_line_is_one_line(tmp_path, capsys, content, problem):
    from repl.cli import main

    path = tmp_path / "bad.json"
    path.write_bytes(content)
    for argv in (["--plain", "--session", str(path)], ["export", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"textgen: error: {path}: {problem}" + err.split(problem, 1)[1]
        assert err.count("\n") == 1 and "Traceback" not in err
    assert path.read_bytes() == content


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions)
def test_switching_branches_loses_nothing_and_keeps_their_numbers(session):
    def leaves() -> list[list[int]]:
        return [[id(t) for t in b.turns] for b in session.branches()]

    every, numbered = sorted(id(t) for t in session.all_turns()), leaves()
    branches = session.branches()
    assert sum(b.current for b in branches) == 1
    for number, branch in enumerate(branches):
        session.switch_to(branch)
        assert session.turns == branch.turns  # the whole conversation is now the shown one
        assert [b.current for b in session.branches()] == [i == number for i in
                                                          range(len(branches))]
        assert sorted(id(t) for t in session.all_turns()) == every
        assert leaves() == numbered  # /branch K means the same conversation whatever is shown
        assert Session.from_dict(json.loads(encode_session(session))) == session
