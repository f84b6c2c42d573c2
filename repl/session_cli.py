"""`textgen sessions list` and `textgen sessions search WORDS`: find saved transcripts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from repl.errors import TextgenError
from repl.safe_text import printable
from repl.session import Session, default_sessions_dir, load_session


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sessions", help="list or search saved sessions",
        description="List saved sessions, or search their prompts and completions.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="saved sessions, newest last",
                                 description="Saved sessions, oldest first: file, date, "
                                             "turns, model and first prompt.")
    _add_dir_argument(listing)
    listing.set_defaults(func=run_list)
    search = actions.add_parser("search", help="find turns containing all of WORDS",
                                description="Find turns whose prompt or any completion "
                                            "contains all of WORDS (case-insensitive); print "
                                            "file, turn and a snippet.")
    search.add_argument("words", nargs="+", metavar="WORDS")
    _add_dir_argument(search)
    search.set_defaults(func=run_search)


def _add_dir_argument(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: without the flag here, `textgen --sessions-dir X sessions list` keeps X.
    parser.add_argument("--sessions-dir", type=Path, metavar="DIR", default=argparse.SUPPRESS,
                        help="where sessions are saved (default: $TEXTGEN_SESSIONS_DIR or "
                             "sessions/)")


def sessions_dir_from(args: argparse.Namespace) -> Path:
    return getattr(args, "sessions_dir", None) or default_sessions_dir()


def session_files(folder: Path) -> list[Path]:
    """Session files in a folder, sorted by name (names start with the time they began).
    Temp files of an interrupted save start with a dot and are skipped."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")
                  and p.is_file())


def load_all(folder: Path) -> Iterator[tuple[Path, Session | None, str | None]]:
    """(file, session, None) for each readable file; (file, None, problem) for the others."""
    for path in session_files(folder):
        try:
            yield path, load_session(path), None
        except TextgenError as exc:
            yield path, None, str(exc)


def show(line: str, path: Path | None = None) -> None:
    """Print one line of a listing for a person: control sequences in a title are shown, not
    obeyed, and text this terminal cannot encode is escaped, so one odd file never hides the
    rest of the list."""
    try:
        print(printable(line, sys.stdout))
    except UnicodeError as exc:  # an encoding printable() could not satisfy
        where = f"{printable(str(path), sys.stderr)}: " if path is not None else ""
        print(f"textgen: skipped {where}cannot show it here ({exc.reason})", file=sys.stderr)


def run_list(args: argparse.Namespace) -> int:
    folder = sessions_dir_from(args)
    found = False
    for path, session, problem in load_all(folder):
        found = True
        if session is None:
            print(printable(f"textgen: skipped {problem}", sys.stderr), file=sys.stderr)
            continue
        completions = sum(len(t.completions) for t in session.turns)
        count = len(session.branches())
        branches = f"/{count} branches" if count > 1 else ""
        show(f"{path.name}  {session.created[:16].replace('T', ' ')}  "
             f"{len(session.turns)} turns/{completions} completions{branches}  "
             f"{session.model.get('name', '?')}  {session.title}", path)
    if not found:
        print(f"no saved sessions in {folder}", file=sys.stderr)
    return 0


@dataclass(frozen=True)
class Hit:
    path: Path
    turn: int  # 1-based
    where: str  # "prompt" or "alternative N"
    snippet: str
    branch: int | None = None  # which branch (1-based), in a session that has several


def search(folder: Path, words: list[str]) -> Iterator[Hit]:
    """Turns where every word occurs in the prompt or in one of the completions, every branch
    searched (each turn once, under the first branch that holds it)."""
    needles = [w.lower() for w in words if w.strip()]
    for path, session, _ in load_all(folder):
        if session is None:
            continue
        branches = session.branches()
        seen: set[int] = set()
        for branch_number, number, turn in ((b, n, t) for b, branch in enumerate(branches, 1)
                                            for n, t in enumerate(branch.turns, 1)):
            if id(turn) in seen:
                continue
            seen.add(id(turn))
            texts = [("prompt", turn.prompt)] + [
                (f"alternative {i + 1}", c.text) for i, c in enumerate(turn.completions)]
            whole = "\n".join(text for _, text in texts).lower()
            if not needles or not all(n in whole for n in needles):
                continue
            where, text = next(((w, t) for w, t in texts if needles[0] in t.lower()), texts[0])
            yield Hit(path, number, where, snippet(text, needles[0]),
                      branch_number if len(branches) > 1 else None)


def snippet(text: str, needle: str, width: int = 80) -> str:
    """About `width` characters of `text` around the first `needle`, on one line."""
    flat = " ".join(text.split())
    at = flat.lower().find(needle)
    start = max(0, at - width // 3) if at >= 0 else 0
    piece = flat[start:start + width]
    return ("…" if start > 0 else "") + piece + ("…" if start + width < len(flat) else "")


def run_search(args: argparse.Namespace) -> int:
    folder = sessions_dir_from(args)
    hits = 0
    for hit in search(folder, args.words):
        hits += 1
        of = f" of branch {hit.branch}" if hit.branch is not None else ""
        show(f"{hit.path.name}  turn {hit.turn}{of} ({hit.where}): {hit.snippet}", hit.path)
    if not hits:
        print(printable(f"no turns match {' '.join(args.words)!r} in {folder}", sys.stderr),
              file=sys.stderr)
        return 1
    return 0
