"""A modal list of saved sessions, newest first: date, size and first prompt. Enter picks one.

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
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
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
    options = []
    for path in reversed(session_files(folder)[-limit:]):
        try:
            session = load_session(path)
            _check_drawable(session)
            options.append(Option(_describe(session), id=str(path)))
        except Exception as exc:  # whatever is in one file, the picker lists the others
            reason = str(exc) if isinstance(exc, TextgenError | ValueError) else (
                f"cannot read it ({type(exc).__name__}: {exc})")
            reason = reason.removeprefix(f"{path}: ")
            options.append(Option(Text(shown(f"{path.name} · {reason}"), style="dim"),
                                  id=str(path), disabled=True))
    return options


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
    line.append(shown(f"  {len(session.turns)} turns · {completions} completions · "
                      f"{session.model.get('name', '?')}  "), style="dim")
    line.append(shown(session.title))
    return line


class SessionPickerScreen(ModalScreen[Path | None]):
    """Choose a saved session to reopen."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]
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

    def compose(self) -> ComposeResult:
        options = session_options(self.folder)
        with Vertical(id="picker-dialog"):
            yield Label(shown(f"Saved sessions in {self.folder}"), id="picker-title",
                        markup=False)
            if options:
                yield OptionList(*options, id="picker-list")
                yield Label("Enter opens · Esc cancels", classes="hint")
            else:
                yield Label("No saved sessions yet. Esc closes this.", id="picker-empty")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_id is not None:
            self.dismiss(Path(event.option_id))
