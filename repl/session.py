"""Sessions: every prompt, every alternative completion and how each was made, as a JSON file.

    Session: id, created, model (spec and name), params (current), turns[]
    Turn:    mode (complete | chat), prompt, completions[], selected
    Completion: text, params, seed, stats, finish, created, model, continuations[], forced?,
                history?

A compare turn (version 2) holds one prompt run two ways (two models or two parameter sets,
same seed): its completions are the left and the right side. A forced completion branched from
another at a token the user chose (inspect mode); `forced` says where and which token.

Regenerating appends a completion to a turn; continuing extends the selected completion and
records a `Continuation` (where it starts, and its own params, seed and stats), so every piece of
text can be replayed exactly. In chat, each generation also records which earlier replies (and how
much of each) it was given as `history`, so paging or continuing them later does not change its
replay; readers that do not know the field ignore it. Files carry `format` and `version`; writes
are atomic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from repl import paths
from repl.engine import GenerationStats
from repl.errors import TextgenError
from repl.params import SamplingParams

FORMAT = "textgen-session"
VERSION = 2  # 2: compare turns and forced completions (version 1 files still load)
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

    @property
    def completion(self) -> Completion | None:
        """The selected alternative, or None before the first one finishes."""
        return self.completions[self.selected] if self.completions else None


@dataclass
class Session:
    model: dict[str, str]
    params: SamplingParams = field(default_factory=SamplingParams)
    turns: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: str = field(default_factory=now)

    @property
    def title(self) -> str:
        """What the session is about: its first prompt, shortened."""
        first = next((t.prompt for t in self.turns if t.prompt.strip()), "")
        text = " ".join(first.split())
        return (text[:60] + "…") if len(text) > 60 else text or "(empty)"

    def chat_history(self, before: int) -> list[dict[str, str]]:
        """The chat messages of turns before index `before`: each prompt and its selected reply."""
        messages: list[dict[str, str]] = []
        for turn in self.turns[:before]:
            if turn.mode == "chat" and turn.completion is not None and not turn.compare:
                messages.append({"role": "user", "content": turn.prompt})
                messages.append({"role": "assistant", "content": turn.completion.text})
        return messages

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
        return {
            "format": FORMAT,
            "version": VERSION,
            "id": self.id,
            "created": self.created,
            "model": dict(self.model),
            "params": self.params.to_dict(),
            "turns": [_turn_to_dict(t) for t in self.turns],
        }

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
        turns = [_turn_from_dict(t, i) for i, t in
                 enumerate(_get(data, "turns", list, "session"))]
        _check_history(turns)
        return cls(
            id=session_id,
            created=_date(data, "session"),
            model={"spec": _get(model, "spec", str, "model"),
                   "name": _get(model, "name", str, "model")},
            params=_params(_get(data, "params", dict, "session"), "session"),
            turns=turns,
        )


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
        return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, ensure_ascii=True, indent=1).encode("ascii")


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
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TextgenError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextgenError(f"{path}: not a session file (not UTF-8 text at byte "
                           f"{exc.start})") from None
    if not text.strip():
        raise TextgenError(f"{path}: empty file (not a session)")
    try:
        data = json.loads(text)
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
        return Session.from_dict(data)
    except ValueError as exc:
        raise TextgenError(f"{path}: {_one_line(str(exc))}") from None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


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
    if value not in FINISH_REASONS:
        raise ValueError(f"{where}: 'finish' should be one of {', '.join(FINISH_REASONS)}, "
                         f"not {value[:40]!r}")
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
    return data


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
    return data


def _continuation_to_dict(k: Continuation) -> dict[str, Any]:
    data = {"start": k.start, "params": k.params.to_dict(), "seed": k.seed,
            "stats": _stats_to_dict(k.stats), "finish": k.finish, "created": k.created}
    if k.history is not None:
        data["history"] = [list(ref) for ref in k.history]
    return data


def _turn_from_dict(data: Any, index: int) -> Turn:
    where = f"turn {index + 1}"
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
    return Turn(mode=mode, prompt=_get(data, "prompt", str, where), completions=completions,
                selected=selected, compare=compare)


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


def _check_history(turns: list[Turn]) -> None:
    """Every recorded chat context points at an earlier turn's existing text."""
    for index, turn in enumerate(turns):
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
