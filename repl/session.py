"""Sessions: every prompt, every alternative completion and how each was made, as a JSON file.

    Session: id, created, model (spec and name), params (current), turns[]
    Turn:    mode (complete | chat), prompt, completions[], selected, branches[]?, branch?
    Completion: text, params, seed, stats, finish, created, model, continuations[], forced?,
                history?

A compare turn (version 2) holds one prompt run two ways (two models or two parameter sets,
same seed): its completions are the left and the right side. A forced completion branched from
another at a token the user chose (inspect mode); `forced` says where and which token.

A completion whose `finish` is `edited` was written by hand (its text replaced a reply, version
3): it has no stats and nothing to replay. Regenerating appends a completion to a turn;
continuing extends the selected completion and records a `Continuation` (where it starts, and
its own params, seed and stats), so every piece of text can be replayed exactly. In chat, each
generation also records which earlier replies (and how much of each) it was given as `history`,
so paging or continuing them later does not change its replay; readers that do not know the
field ignore it. Files carry `format` and `version`; writes are atomic.

The conversation is a tree (version 3). `Session.turns` is always the branch being worked on, a
plain list. Editing a prompt (or regenerating a chat turn that later turns depend on) starts a
new *line* at that position: the turns from there on are put aside, not lost. The turn shown at
a position holds the other lines that start there in `branches` (each a list of turns: a
sibling and what followed it) and its own place among them in `branch`; switching swaps a line
in and the shown one out. Lines put aside keep their own branch points on their turns, so the
file stays as deep as the branching, not as long as the conversation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from repl import paths
from repl.engine import GenerationStats
from repl.errors import TextgenError
from repl.params import SamplingParams

FORMAT = "textgen-session"
VERSION = 3  # 2: compare turns, forced completions; 3: branches (1 and 2 still load)
Mode = Literal["complete", "chat"]
HistoryRef = tuple[int, int, int]  # (turn index, alternative index, characters of its text)
MODES: tuple[Mode, ...] = ("complete", "chat")


def default_sessions_dir() -> Path:
    """Where sessions go unless `--sessions-dir` says otherwise (see repl/paths.py)."""
    return paths.sessions_dir()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Continuation:
    """Text appended to a completion by `continue`, starting at character `start`."""

    start: int
    params: SamplingParams
    seed: int
    stats: GenerationStats | None
    finish: str
    created: str = field(default_factory=now)
    history: list[HistoryRef] | None = None  # chat context it was made with (see Completion)
    extra: dict[str, Any] = field(default_factory=dict)  # fields this textgen does not know


@dataclass
class Forced:
    """How a forced alternative was made: `text[:start]` of the source completion was kept as
    text, then `ids` (the kept tokens of that generation, and last the forced token) were
    placed after the prompt, and the rest was sampled."""

    start: int
    ids: list[int]
    token: str  # the forced token's text
    source: int  # index of the alternative it branched from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Completion:
    text: str
    params: SamplingParams
    seed: int
    stats: GenerationStats | None
    finish: str
    model: str
    created: str = field(default_factory=now)
    continuations: list[Continuation] = field(default_factory=list)
    forced: Forced | None = None
    # Chat turns: the earlier turns' replies it was made with, as (turn, alternative, characters),
    # so a replay uses the same context even after those turns were paged or continued. None:
    # not recorded (completion mode, or an older file); replay then uses the current selection.
    history: list[HistoryRef] | None = None
    # Inspect mode, in memory only: (character where the traced text starts, TokenTrace).
    traces: list[tuple[int, Any]] = field(default_factory=list, compare=False, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)  # fields this textgen does not know

    @property
    def last_finish(self) -> str:
        """Why the text ends where it ends now (after any continuations)."""
        return self.continuations[-1].finish if self.continuations else self.finish


@dataclass
class Turn:
    mode: Mode
    prompt: str
    completions: list[Completion] = field(default_factory=list)
    selected: int = 0
    compare: bool = False  # completions are the left and right side of a comparison
    # The other lines that start at this turn's position (each: a sibling turn and the turns
    # that followed it), while this turn is the one shown there; `branch` is this turn's own
    # place among all of them (0 to len(branches)), so their order never changes.
    branches: list[list[Turn]] = field(default_factory=list)
    branch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # fields this textgen does not know

    @property
    def completion(self) -> Completion | None:
        """The selected alternative, or None before the first one finishes."""
        return self.completions[self.selected] if self.completions else None

    @property
    def branch_count(self) -> int:
        """How many lines start at this turn's position (1: no branches)."""
        return len(self.branches) + 1

    def siblings(self) -> list[Turn]:
        """The first turn of every line at this turn's position, in order, this one included
        (call it on the turn shown there: it holds the others)."""
        heads = [line[0] for line in self.branches]
        return [*heads[:self.branch], self, *heads[self.branch:]]

    def same_prompt_completions(self) -> list[Completion]:
        """Every completion made at this position for this prompt, line by line: with a fixed
        seed the Nth of them used seed + N - 1 (see `Conversation.regenerate`)."""
        return [c for t in self.siblings() if t.prompt == self.prompt for c in t.completions]


@dataclass(frozen=True)
class Branch:
    """One whole conversation of the tree (a leaf): the turns from the first to its last, and
    the choice made at each branch point on the way, as (position, line) pairs."""

    choices: tuple[tuple[int, int], ...]
    turns: list[Turn]
    current: bool


@dataclass
class Session:
    model: dict[str, str]
    params: SamplingParams = field(default_factory=SamplingParams)
    turns: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: str = field(default_factory=now)
    # Fields this textgen does not know (a user's `tags`, a newer version's additions): kept
    # as they were and written back, so no save loses them.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """What the session is about: its first prompt, shortened."""
        first = next((t.prompt for t in self.turns if t.prompt.strip()), "")
        text = " ".join(first.split())
        return (text[:60] + "…") if len(text) > 60 else text or "(empty)"

    def chat_history(self, before: int) -> list[dict[str, str]]:
        """The chat messages of turns before index `before`: each prompt and its selected reply."""
        return chat_messages(self.turns[:before])

    # --- the tree -------------------------------------------------------------------------------

    def lines_at(self, index: int) -> list[list[Turn]]:
        """Every line that starts at position `index`, in their fixed order (the shown one is
        `turns[index:]`)."""
        head = self.turns[index]
        return [*head.branches[:head.branch], self.turns[index:], *head.branches[head.branch:]]

    def switch_branch(self, index: int, line: int) -> None:
        """Show line `line` (0-based, see `lines_at`) from position `index` on."""
        lines = self.lines_at(index)
        if not 0 <= line < len(lines):
            raise ValueError(f"turn {index + 1} has {len(lines)} branches, not {line + 1}")
        head = self.turns[index]
        if line == head.branch:
            return
        target = lines.pop(line)
        target[0].branches, target[0].branch = lines, line
        head.branches, head.branch = [], 0
        self.turns[index:] = target

    def new_branch(self, index: int, turn: Turn) -> None:
        """Show `turn` at position `index`, as a new line after the others; the turns that were
        shown from there on are kept as a branch. `index == len(turns)` just appends."""
        if index == len(self.turns):
            self.turns.append(turn)
            return
        lines = self.lines_at(index)
        head = self.turns[index]
        head.branches, head.branch = [], 0
        turn.branches, turn.branch = lines, len(lines)
        self.turns[index:] = [turn]

    def drop_branch(self, index: int) -> None:
        """Undo `new_branch(index, ...)`: remove the shown line (the newest), show the one that
        was shown before it."""
        head = self.turns[index]
        if not head.branches:
            del self.turns[index:]
            return
        previous = head.branches.pop()
        previous[0].branches, previous[0].branch = head.branches, len(head.branches)
        head.branches, head.branch = [], 0
        self.turns[index:] = previous

    def branches(self) -> list[Branch]:
        """Every whole conversation of the tree, in a fixed order (at each branch point, its
        lines in order): what the plain REPL's /branch numbers and export writes."""
        return [Branch(choices, turns, current=all(self._shown(p, line) for p, line in choices))
                for choices, turns in _leaves(self.turns, 0, (), skip_head=False)]

    def switch_to(self, branch: Branch) -> None:
        """Make `branch` (from `branches()`) the shown one."""
        for index, line in branch.choices:
            self.switch_branch(index, line)

    def _shown(self, index: int, line: int) -> bool:
        return index < len(self.turns) and self.turns[index].branch == line

    def all_turns(self) -> Iterator[Turn]:
        """Every turn of the tree once: the shown branch's, then the ones put aside."""
        stack = [self.turns]
        while stack:
            line = stack.pop(0)
            for turn in line:
                yield turn
                stack.extend(turn.branches)

    def history_refs(self, before: int) -> list[HistoryRef]:
        """Where `chat_history(before)` comes from: each reply as (turn, alternative, chars)."""
        return [(i, turn.selected, len(turn.completion.text))
                for i, turn in enumerate(self.turns[:before])
                if turn.mode == "chat" and turn.completion is not None and not turn.compare]

    def messages_from(self, refs: list[HistoryRef]) -> list[dict[str, str]]:
        """The chat messages that `refs` (from `history_refs`) stood for when recorded."""
        messages: list[dict[str, str]] = []
        for turn_index, alternative, chars in refs:
            turn = self.turns[turn_index]
            messages.append({"role": "user", "content": turn.prompt})
            messages.append({"role": "assistant",
                             "content": turn.completions[alternative].text[:chars]})
        return messages

    def to_dict(self) -> dict[str, Any]:
        return _with_extra({
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "created": self.created,
            "model": dict(self.model),
            "params": self.params.to_dict(),
            "turns": [_turn_to_dict(t) for t in self.turns],
        }, self.extra)

    @classmethod
    def from_dict(cls, data: Any) -> Session:
        """Build from parsed JSON; ValueError says precisely what is wrong and where."""
        if not isinstance(data, dict):
            raise ValueError("not a textgen session (the top level is not an object)")
        if data.get("format") != FORMAT:
            raise ValueError(f"not a textgen session (format is {data.get('format')!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError("the version field is missing or not a whole number")
        if version > VERSION:
            raise ValueError(f"written by a newer textgen (session version {version}; "
                             f"this textgen reads up to {VERSION}); upgrade textgen to open it")
        if version < 1:
            raise ValueError(f"unknown session version {version}")
        model = _get(data, "model", dict, "session")
        session_id = _get(data, "id", str, "session")
        if not session_id:
            raise ValueError("session: 'id' is empty")
        turns = _line_from_dict(_get(data, "turns", list, "session"), 0, "")
        _check_history([], turns)
        return cls(
            id=session_id,
            created=_date(data, "session"),
            model={**model, "spec": _get(model, "spec", str, "model"),
                   "name": _get(model, "name", str, "model")},
            params=_params(_get(data, "params", dict, "session"), "session"),
            turns=turns,
            extra=_extra(data, _SESSION_FIELDS),
        )


def chat_messages(turns: list[Turn]) -> list[dict[str, str]]:
    """The chat messages of `turns` (a path of the tree): each prompt and its selected reply."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        if turn.mode == "chat" and turn.completion is not None and not turn.compare:
            messages.append({"role": "user", "content": turn.prompt})
            messages.append({"role": "assistant", "content": turn.completion.text})
    return messages


def _leaves(line: list[Turn], start: int, choices: tuple[tuple[int, int], ...], *,
            skip_head: bool) -> Iterator[tuple[tuple[tuple[int, int], ...], list[Turn]]]:
    """The whole conversations through `line` (turns from position `start`): split at its
    first branch point (a line's own head holds the group it was reached through)."""
    for j in range(1 if skip_head else 0, len(line)):
        turn = line[j]
        if turn.branches:
            group = [*turn.branches[:turn.branch], line[j:], *turn.branches[turn.branch:]]
            for number, sub in enumerate(group):
                for sub_choices, tail in _leaves(sub, start + j,
                                                 (*choices, (start + j, number)), skip_head=True):
                    yield sub_choices, line[:j] + tail
            return
    yield choices, line


def save_session(session: Session, path: Path) -> None:
    """Write atomically (see `atomic_write`): a crash at any moment leaves either the old file or
    the new one, never a torn one. Raises TextgenError naming the file when the folder is
    read-only or the disk is full; the session itself is untouched."""
    atomic_write(path, encode_session(session))


def encode_session(session: Session) -> bytes:
    """The file's bytes: readable UTF-8 JSON. Text that UTF-8 cannot hold (a lone surrogate from
    a badly decoded terminal) is written as \\u escapes instead, so it still round-trips."""
    data = session.to_dict()
    try:
        json.dumps(data, allow_nan=False)
    except ValueError:  # never valid JSON: params refuse them, so only a stray stat can be one
        data = _finite(data)
    try:
        return json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, ensure_ascii=True, indent=1, allow_nan=False).encode("ascii")


def _finite(value: Any) -> Any:
    """`value` with every inf or nan float replaced by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def atomic_write(path: Path, data: bytes) -> None:
    """`write_atomically`, with a TextgenError naming the file when it cannot be written
    (read-only folder, full disk); any existing file at `path` is left as it was."""
    try:
        write_atomically(path, data)
    except OSError as exc:
        raise TextgenError(f"could not save to {path}: {exc.strerror or exc}; "
                           "the session is kept in memory") from exc


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder, fsync, rename, fsync dir:
    a reader sees the old file or the new one. OSError as raised; the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_session(path: Path) -> Session:
    """Read a session file; TextgenError with the file and the problem on one line.

    Never writes to the file: a broken or newer file stays exactly as it was.
    """
    raw = read_regular_file(path, MAX_SESSION_BYTES, what="session")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextgenError(f"{path}: not a session file (not UTF-8 text at byte "
                           f"{exc.start})") from None
    if not text.strip():
        raise TextgenError(f"{path}: empty file (not a session)")
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        # An unterminated string, or an error at the very end: the file stops mid-way.
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            lines = text.rstrip().split("\n")
            raise TextgenError(f"{path}: truncated (the JSON stops early, at line {len(lines)}, "
                               f"column {len(lines[-1])})") from None
        raise TextgenError(f"{path}: invalid JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from None
    except RecursionError:
        raise TextgenError(f"{path}: invalid session (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer too long to convert
        raise TextgenError(f"{path}: invalid JSON ({_one_line(str(exc))})") from None
    try:
        session = Session.from_dict(data)
        session.branches()  # a tree too deep to walk is refused here, not later in a face
        return session
    except ValueError as exc:
        raise TextgenError(f"{path}: {_one_line(str(exc))}") from None
    except RecursionError:
        raise TextgenError(f"{path}: invalid session (branches nested too deeply)") from None


MAX_SESSION_BYTES = 256 * 2**20  # far above any real transcript; a /dev/zero link stops here


def read_regular_file(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; TextgenError
    otherwise. A FIFO, a device (a link to /dev/zero) or a directory is refused at once: the
    open does not wait for a writer (O_NONBLOCK) and fstat says what the path really is."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise TextgenError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TextgenError(f"{path}: not a regular file ({_file_kind(info.st_mode)}); a "
                               f"{what} is a plain file")
        if info.st_size > limit:
            raise TextgenError(f"{path}: too large for a {what} ({info.st_size / 2**20:.0f} MiB;"
                               f" the limit is {limit / 2**20:.0f} MiB)")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow while it is read
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise TextgenError(f"{path}: too large for a {what} (the limit is "
                               f"{limit / 2**20:.0f} MiB)")
        return b"".join(chunks)
    except OSError as exc:
        raise TextgenError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


class SessionBusy(TextgenError):
    """Another process has the session file open (see `SessionLock`)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"{path} is open in another textgen process ({holder})")
        self.path = path
        self.pid = pid


class SessionLock:
    """An advisory lock (flock) on a session file, held while one process works on it, so two
    processes never both write it and the last writer silently wins.

    The lock is on a sidecar `.NAME.lock` beside the file, not on the file itself, since every
    atomic save replaces the file's inode. The sidecar holds the holder's pid, for the message
    the second process shows. The OS drops the lock when its holder dies, even by SIGKILL.
    """

    # flock conflicts between two opens in one process too: share one lock per file here.
    _held: ClassVar[dict[Path, SessionLock]] = {}

    def __init__(self, path: Path, fd: int, lock_path: Path) -> None:
        self.path = path
        self._fd: int | None = fd
        self._lock_path = lock_path
        self._users = 1

    @classmethod
    def acquire(cls, path: Path) -> SessionLock | None:
        """Lock `path`; SessionBusy if another process has it; None where no lock can be
        made (a read-only folder: nothing can be saved there anyway)."""
        key = path.resolve()
        if (held := cls._held.get(key)) is not None:
            held._users += 1
            return held
        lock = cls._acquire(path)
        if lock is not None:
            cls._held[key] = lock
        return lock

    @classmethod
    def _acquire(cls, path: Path) -> SessionLock | None:
        import fcntl

        lock_path = path.parent / f".{path.name}.lock"
        for _ in range(10):  # a holder may unlink the sidecar between our open and our lock
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                             0o644)
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise SessionBusy(path, pid) from None
                return None  # a file system without flock
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except OSError:
                same = False
            if not same:  # we locked a sidecar its holder had just removed: try again
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass  # a full disk: the lock holds all the same, without the pid
            return cls(path, fd, lock_path)
        return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the sidecar and drop the lock (removing it first, while still holding it,
        means the next process never locks a file that is about to vanish)."""
        if self._fd is None:
            return
        self._users -= 1
        if self._users > 0:
            return
        SessionLock._held.pop(self.path.resolve(), None)
        with contextlib.suppress(OSError):
            self._lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def session_filename(session: Session) -> str:
    """`20261123-104501-the-history-of-climate.json`: sorts by time, says what it is about."""
    try:
        stamp = datetime.fromisoformat(session.created).strftime("%Y%m%d-%H%M%S")
    except ValueError:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", session.title.lower()).strip("-")[:40].strip("-")
    tag = re.sub(r"[^a-z0-9]", "", session.id.lower())[:4] or "0000"
    return f"{stamp}-{slug or 'session'}-{tag}.json"


def file_mode(path: Path) -> int:
    """The permissions the file has now, or what a new file gets under the umask (mkstemp's
    temp files are 0600, which would otherwise stick after the rename)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def _read_umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which is not thread-safe.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- (de)serialisation helpers -----------------------------------------------------------------

_SESSION_FIELDS = frozenset({"format", "version", "id", "created", "model", "params", "turns"})
_TURN_FIELDS = frozenset({"mode", "prompt", "selected", "completions", "compare", "branches",
                          "branch"})
_COMPLETION_FIELDS = frozenset({"text", "params", "seed", "stats", "finish", "model", "created",
                                "continuations", "forced", "history"})
_CONTINUATION_FIELDS = frozenset({"start", "params", "seed", "stats", "finish", "created",
                                  "history"})


def _extra(data: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in known}


def _with_extra(data: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The known fields, then the unknown ones as they were read (never overriding)."""
    for key, value in extra.items():
        data.setdefault(key, value)
    return data


def _get(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where}: the {key!r} field is missing")
    value = data[key]
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ValueError(f"{where}: {key!r} should be {_KIND_NAMES[kind]}, "
                         f"not {_json_type(value)}")
    return value


_KIND_NAMES = {str: "text", int: "a whole number", dict: "an object", list: "a list",
               bool: "true or false", float: "a number"}
FINISH_REASONS = ("length", "eos", "stop", "cancelled", "error")
EDITED = "edited"  # a completion's finish when its text was written by hand (version 3)


def _json_type(value: Any) -> str:
    names = {bool: "true/false", int: "a whole number", float: "a number", str: "text",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _date(data: dict[str, Any], where: str) -> str:
    value = _get(data, "created", str, where)
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where}: 'created' is not a date ({value[:40]!r})") from None
    return value


def _finish(data: dict[str, Any], where: str) -> str:
    value = _get(data, "finish", str, where)
    if value not in (*FINISH_REASONS, EDITED):
        raise ValueError(f"{where}: 'finish' should be one of {', '.join(FINISH_REASONS)} or "
                         f"{EDITED}, not {value[:40]!r}")
    return value


def _params(data: dict[str, Any], where: str) -> SamplingParams:
    """SamplingParams validates values; here we also insist on JSON types, so that `true` is not
    taken for 1 and a stop string is not split into letters."""
    kinds = {f.name: f.type for f in dataclasses.fields(SamplingParams)}
    for key, value in data.items():
        kind = kinds.get(key)
        if kind == "int" or kind == "int | None":
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                value is None and kind == "int | None")
        elif kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif key == "stop":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = True  # unknown keys: from_dict names them
        if not ok:
            raise ValueError(f"{where}: bad params: {key} should not be {_json_type(value)}")
    try:
        return SamplingParams.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad params: {exc}") from None


def _stats_to_dict(stats: GenerationStats | None) -> dict[str, Any] | None:
    return stats.to_dict() if stats is not None else None


def _stats(data: Any, where: str) -> GenerationStats | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: 'stats' should be an object or null, not {_json_type(data)}")
    fields = {f.name: f for f in dataclasses.fields(GenerationStats)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: bad stats: unknown field(s) {', '.join(unknown)}")
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{where}: bad stats: the {name!r} field is missing")
            continue
        value, kind = data[name], str(f.type)
        if value is None:
            ok = "None" in kind
        elif name == "finish_reason":
            ok = value in FINISH_REASONS
        elif "float" in kind:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif "int" in kind:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif "str" in kind or "bool" in kind:
            ok = isinstance(value, str if "str" in kind else bool)
        else:
            ok = True  # a richer field added later: its constructor checks it
        if not ok:
            raise ValueError(f"{where}: bad stats: {name} should not be {value!r:.40}")
    return GenerationStats(**data)


def _turn_to_dict(turn: Turn) -> dict[str, Any]:
    data = {
        "mode": turn.mode,
        "prompt": turn.prompt,
        "selected": turn.selected,
        "completions": [_completion_to_dict(c) for c in turn.completions],
    }
    if turn.compare:
        data["compare"] = True
    if turn.branches:
        data["branch"] = turn.branch
        data["branches"] = [[_turn_to_dict(t) for t in line] for line in turn.branches]
    return _with_extra(data, turn.extra)


def _completion_to_dict(c: Completion) -> dict[str, Any]:
    data = {
        "text": c.text,
        "params": c.params.to_dict(),
        "seed": c.seed,
        "stats": _stats_to_dict(c.stats),
        "finish": c.finish,
        "model": c.model,
        "created": c.created,
        "continuations": [_continuation_to_dict(k) for k in c.continuations],
    }
    if c.forced is not None:
        data["forced"] = c.forced.to_dict()
    if c.history is not None:
        data["history"] = [list(ref) for ref in c.history]
    return _with_extra(data, c.extra)


def _continuation_to_dict(k: Continuation) -> dict[str, Any]:
    data = {"start": k.start, "params": k.params.to_dict(), "seed": k.seed,
            "stats": _stats_to_dict(k.stats), "finish": k.finish, "created": k.created}
    if k.history is not None:
        data["history"] = [list(ref) for ref in k.history]
    return _with_extra(data, k.extra)


def _line_from_dict(data: list[Any], start: int, where: str) -> list[Turn]:
    return [_turn_from_dict(t, start + i, where) for i, t in enumerate(data)]


def _turn_from_dict(data: Any, index: int, line: str = "") -> Turn:
    where = f"{line}turn {index + 1}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: should be an object, not {_json_type(data)}")
    mode = _get(data, "mode", str, where)
    if mode not in MODES:
        raise ValueError(f"{where}: mode should be complete or chat, not {mode!r}")
    completions = [
        _completion_from_dict(c, f"{where}, completion {i + 1}")
        for i, c in enumerate(_get(data, "completions", list, where))
    ]
    selected = _get(data, "selected", int, where)
    if (completions and not 0 <= selected < len(completions)) or (not completions and selected):
        raise ValueError(f"{where}: selected is {selected} but there are "
                         f"{len(completions)} completions")
    compare = data.get("compare", False)
    if not isinstance(compare, bool):
        raise ValueError(f"{where}: 'compare' should be true or false, not {_json_type(compare)}")
    if compare and not 1 <= len(completions) <= 2:
        raise ValueError(f"{where}: a compare turn has 1 or 2 completions, not "
                         f"{len(completions)}")
    branches = _branches(data, index, where)
    branch = _get(data, "branch", int, where) if "branch" in data else 0
    if not 0 <= branch <= len(branches):
        raise ValueError(f"{where}: branch is {branch} but there are {len(branches) + 1} "
                         "branches")
    return Turn(mode=mode, prompt=_get(data, "prompt", str, where), completions=completions,
                selected=selected, compare=compare, branches=branches, branch=branch,
                extra=_extra(data, _TURN_FIELDS))


def _branches(data: dict[str, Any], index: int, where: str) -> list[list[Turn]]:
    """The other lines starting at turn `index` (version 3): non-empty lists of turns whose
    first turn holds no group of its own (only the shown turn at a position does)."""
    if "branches" not in data:
        return []
    branches: list[list[Turn]] = []
    for number, line in enumerate(_get(data, "branches", list, where)):
        lwhere = f"{where}, branch {number + 1}: "
        if not isinstance(line, list) or not line:
            raise ValueError(f"{lwhere}should be a non-empty list of turns")
        turns = _line_from_dict(line, index, lwhere)
        if turns[0].branches:
            raise ValueError(f"{lwhere}its first turn has branches of its own")
        branches.append(turns)
    return branches


def _completion_from_dict(data: Any, where: str) -> Completion:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: should be an object, not {_json_type(data)}")
    text = _get(data, "text", str, where)
    continuations: list[Continuation] = []
    for i, k in enumerate(_get(data, "continuations", list, where)):
        kwhere = f"{where}, continuation {i + 1}"
        if not isinstance(k, dict):
            raise ValueError(f"{kwhere}: should be an object, not {_json_type(k)}")
        start = _get(k, "start", int, kwhere)
        earliest = continuations[-1].start if continuations else 0
        if not earliest <= start <= len(text):
            raise ValueError(f"{kwhere}: start {start} is outside the text "
                             f"({earliest} to {len(text)})")
        continuations.append(Continuation(
            start=start, params=_params(_get(k, "params", dict, kwhere), kwhere),
            seed=_get(k, "seed", int, kwhere), stats=_stats(k.get("stats"), kwhere),
            finish=_finish(k, kwhere), created=_date(k, kwhere),
            history=_history(k.get("history"), kwhere),
            extra=_extra(k, _CONTINUATION_FIELDS),
        ))
    return Completion(
        text=text,
        params=_params(_get(data, "params", dict, where), where),
        seed=_get(data, "seed", int, where),
        stats=_stats(data.get("stats"), where),
        finish=_finish(data, where),
        model=_get(data, "model", str, where),
        created=_date(data, where),
        continuations=continuations,
        forced=_forced(data.get("forced"), len(text), where),
        history=_history(data.get("history"), where),
        extra=_extra(data, _COMPLETION_FIELDS),
    )


def _history(data: Any, where: str) -> list[HistoryRef] | None:
    if data is None:
        return None
    ok = isinstance(data, list) and all(
        isinstance(ref, list) and len(ref) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in ref)
        for ref in data)
    if not ok:
        raise ValueError(f"{where}: 'history' should be a list of [turn, alternative, "
                         "characters] triples")
    return [(ref[0], ref[1], ref[2]) for ref in data]


def _check_history(before: list[Turn], line: list[Turn]) -> None:
    """Every recorded chat context points at an earlier turn's existing text, on the turn's own
    path through the tree (`before`, then the line up to it)."""
    turns = [*before, *line]
    for index in range(len(before), len(turns)):
        turn = turns[index]
        for branch in turn.branches:
            _check_history(turns[:index], branch)
        for c_index, completion in enumerate(turn.completions):
            pieces = [(f"completion {c_index + 1}", completion.history)] + [
                (f"completion {c_index + 1}, continuation {k + 1}", cont.history)
                for k, cont in enumerate(completion.continuations)]
            for where, refs in pieces:
                for t, a, chars in refs or ():
                    if not (t < index and a < len(turns[t].completions)
                            and chars <= len(turns[t].completions[a].text)):
                        raise ValueError(f"turn {index + 1}, {where}: history refers to text "
                                         f"that is not there (turn {t + 1}, alternative "
                                         f"{a + 1}, {chars} characters)")


def _forced(data: Any, length: int, where: str) -> Forced | None:
    if data is None:
        return None
    where = f"{where}, forced"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: should be an object, not {_json_type(data)}")
    start = _get(data, "start", int, where)
    if not 0 <= start <= length:
        raise ValueError(f"{where}: start {start} is outside the text (0 to {length})")
    ids = _get(data, "ids", list, where)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                          for i in ids):
        raise ValueError(f"{where}: 'ids' should be a non-empty list of token ids")
    return Forced(start=start, ids=ids, token=_get(data, "token", str, where),
                  source=_get(data, "source", int, where))
