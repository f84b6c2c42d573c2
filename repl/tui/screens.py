"""Modal screens: the help screen (every key) and the model switcher."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from repl.tui import served


class HelpScreen(ModalScreen[None]):
    """Every key of the app, built from the bindings themselves so it cannot go stale."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "dismiss", "Close help")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, show_header=True, header_style="bold",
                      pad_edge=False)
        table.add_column("key", no_wrap=True, style="bold")
        table.add_column("what it does", ratio=1)
        for key, description in self.keys:
            table.add_row(key, description)
        with VerticalScroll(id="help"):
            yield Label("textgen · keys", id="help-title")
            yield Static(table, id="help-keys")
            yield Static("Every action is also in the command palette (Ctrl+P). "
                         "Sessions are saved after each generation. Esc or F1 closes this.",
                         id="help-footer")


class ModelScreen(ModalScreen[str | None]):
    """Asks for a model spec; the app loads it in the background."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="model-dialog"):
            yield Label("Switch model: `default`, a directory such as models/NAME, a .gguf "
                        "file, or a hub id. It loads in the background; the current model "
                        "keeps working until then.", id="model-help")
            yield Input(self.current, placeholder="model spec", id="model-spec")
            yield Label("Enter loads it · Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        spec = event.value.strip()
        if spec and (refusal := served.model_refusal(spec)):
            self.notify(refusal, title="Not allowed here", severity="error", timeout=10)
            return
        self.dismiss(spec or None)
