"""A modal list of saved sessions, newest first: date, size and first prompt. Enter picks one;
the search box above it (`/` gets there) keeps the sessions whose prompts or completions hold
all the words typed, as `textgen sessions search` does.

`SessionPickerScreen(folder)` dismisses with the chosen file's Path, or None (Esc). Files that do
not load (or hold text no terminal can draw) are listed, greyed out, with their problem, so a
broken file is visible but never opened, and never takes the picker down.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from repl.errors import TextgenError
from repl.session import Session, load_session
from repl.session_cli import session_files

MAX_SESSIONS = 200
# Control characters (a title could clear the screen or write the clipboard) and lone
# surrogates (which no terminal encoding accepts: one crashed every tab that opened F6).
_UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def shown(text: str) -> str:
    """`text` as the picker may draw it: control characters and lone surrogates become U+FFFD."""
    return _UNSHOWABLE.sub("\ufffd", text)


def session_options(folder: Path, limit: int = MAX_SESSIONS) -> list[Option]:
    """One option per session file, newest first; the option id is the file's path. A file that
    does not load, or could not be drawn once opened, is listed disabled with its problem."""
    return [option for option, _ in session_entries(folder, limit)]


def session_entries(folder: Path, limit: int = MAX_SESSIONS) -> list[tuple[Option, str]]:
    """`session_options`, each with the lower-cased text a search looks in (file name,
    prompts and completions)."""
    entries = []
    for path in reversed(session_files(folder)[-limit:]):
        try:
            session = load_session(path)
            _check_drawable(session)
            turns = list(session.all_turns())  # every branch
            text = " ".join([path.name, *(t.prompt for t in turns),
                             *(c.text for t in turns for c in t.completions)])
            entries.append((Option(_describe(session), id=str(path)), text.lower()))
        except Exception as exc:  # whatever is in one file, the picker lists the others
            reason = str(exc) if isinstance(exc, TextgenError | ValueError) else (
                f"cannot read it ({type(exc).__name__}: {exc})")
            reason = reason.removeprefix(f"{path}: ")
            entries.append((Option(Text(shown(f"{path.name} · {reason}"), style="dim"),
                                   id=str(path), disabled=True), path.name.lower()))
    return entries


def _check_drawable(session: Session) -> None:
    """ValueError when the session holds text no terminal can draw (it would crash the app)."""
    try:
        json.dumps(session.to_dict(), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("cannot be shown: its text holds an invalid character "
                         f"(lone surrogate U+{ord(exc.object[exc.start]):04X})") from None


def _describe(session: Session) -> Text:
    completions = sum(len(t.completions) for t in session.turns)
    line = Text()
    line.append(shown(session.created[:16].replace("T", " ")), style="bold")
    count = len(session.branches())
    branches = f" · {count} branches" if count > 1 else ""
    line.append(shown(f"  {len(session.turns)} turns · {completions} completions{branches} · "
                      f"{session.model.get('name', '?')}  "), style="dim")
    line.append(shown(session.title))
    return line


class SessionPickerScreen(ModalScreen[Path | None]):
    """Choose a saved session to reopen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("slash", "search", "Search", show=False),
    ]
    AUTO_FOCUS = "#picker-list"
    DEFAULT_CSS = """
    SessionPickerScreen { align: center middle; }
    #picker-dialog { width: 90%; height: 80%; border: round $accent; background: $surface;
                     padding: 0 1; }
    #picker-list { height: 1fr; }
    #picker-title { text-style: bold; }
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.entries = session_entries(folder)

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-dialog"):
            yield Label(shown(f"Saved sessions in {self.folder}"), id="picker-title",
                        markup=False)
            if self.entries:
                yield Input(placeholder="search prompts and completions (/)",
                            id="picker-search", compact=True)
                yield OptionList(*(option for option, _ in self.entries), id="picker-list")
                yield Label("Enter opens · / searches · Esc cancels", classes="hint")
            else:
                yield Label("No saved sessions yet. Esc closes this.", id="picker-empty")

    def action_search(self) -> None:
        for search in self.query("#picker-search").results(Input):
            search.focus()

    @on(Input.Changed, "#picker-search")
    def _search(self, event: Input.Changed) -> None:
        words = event.value.lower().split()
        listed = self.query_one("#picker-list", OptionList)
        listed.clear_options()
        listed.add_options([option for option, text in self.entries
                            if all(word in text for word in words)])
        listed.highlighted = _first_enabled(listed)

    @on(Input.Submitted, "#picker-search")
    def _search_submitted(self) -> None:
        listed = self.query_one("#picker-list", OptionList)
        index = _first_enabled(listed)
        if index is not None:
            self.dismiss(Path(listed.get_option_at_index(index).id or ""))

    def on_key(self, event: events.Key) -> None:
        if event.key == "down" and isinstance(self.focused, Input):
            event.stop()
            self.query_one("#picker-list", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_id is not None:
            self.dismiss(Path(event.option_id))


def _first_enabled(listed: OptionList) -> int | None:
    for index in range(listed.option_count):
        if not listed.get_option_at_index(index).disabled:
            return index
    return None
