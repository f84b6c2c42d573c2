"""A modal list of saved sessions, newest first: date, size and first prompt. Enter picks one.

`SessionPickerScreen(folder)` dismisses with the chosen file's Path, or None (Esc). Files that do
not load are listed, greyed out, with their problem, so a broken file is visible but never opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from repl.session_cli import load_all

MAX_SESSIONS = 200


def session_options(folder: Path, limit: int = MAX_SESSIONS) -> list[Option]:
    """One option per session file, newest first; the option id is the file's path."""
    entries = list(load_all(folder))[-limit:]
    options = []
    for path, session, problem in reversed(entries):
        if session is None:
            reason = (problem or "").removeprefix(f"{path}: ")
            options.append(Option(Text(f"{path.name} · {reason}", style="dim"),
                                  id=str(path), disabled=True))
            continue
        completions = sum(len(t.completions) for t in session.turns)
        line = Text()
        line.append(session.created[:16].replace("T", " "), style="bold")
        line.append(f"  {len(session.turns)} turns · {completions} completions · "
                    f"{session.model.get('name', '?')}  ", style="dim")
        line.append(session.title)
        options.append(Option(line, id=str(path)))
    return options


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
            yield Label(f"Saved sessions in {self.folder}", id="picker-title")
            if options:
                yield OptionList(*options, id="picker-list")
                yield Label("Enter opens · Esc cancels", classes="hint")
            else:
                yield Label("No saved sessions yet. Esc closes this.", id="picker-empty")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_id is not None:
            self.dismiss(Path(event.option_id))
