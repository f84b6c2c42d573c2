"""Modal screens: the help screen (every key) and the model switcher."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import ClassVar

from rich.table import Table
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from repl.paths import models_dir
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
    """Asks for a model spec, with the models found on this machine to pick from; the app
    loads the choice in the background."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        found = local_models()
        with Vertical(id="model-dialog"):
            yield Static("Switch model: `default`, a directory such as models/NAME, a .gguf "
                         "file, or a hub id. It loads in the background; the current model "
                         "keeps working until then.", id="model-help", markup=False)
            yield Input(self.current, placeholder="model spec", id="model-spec")
            if found:
                yield Label("on this machine (↓ to pick):", classes="hint")
                yield OptionList(*(Option(f"{spec}  ({where})", id=spec)
                                   for spec, where in found), id="model-list")
            yield Label("Enter loads it · Esc cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._choose(event.value.strip())

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self._choose(event.option_id or "")

    def on_key(self, event: events.Key) -> None:
        if event.key == "down" and self.focused is self.query_one("#model-spec", Input):
            for found in self.query("#model-list"):
                event.stop()
                found.focus()

    def _choose(self, spec: str) -> None:
        if spec and (refusal := served.model_refusal(spec)):
            self.notify(refusal, title="Not allowed here", severity="error", timeout=10)
            return
        self.dismiss(spec or None)


def local_models(limit: int = 50) -> list[tuple[str, str]]:
    """(spec, where it was found) for the models this machine has: `default`, the folders and
    .gguf files in the models directory (repl/paths.py), and the Hugging Face hub cache."""
    found: list[tuple[str, str]] = [("default", "SmolLM2-135M-Instruct, offline")]
    folder = models_dir()
    with contextlib.suppress(OSError):
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if (path / "config.json").is_file():
                found.append((_spec(path), "trained or saved model"))
            elif path.suffix == ".gguf":
                found.append((_spec(path), "gguf"))
    with contextlib.suppress(OSError):
        for path in sorted(_hub_cache().glob("models--*")):
            if any((path / "snapshots").glob("*/config.json")):
                found.append((path.name.removeprefix("models--").replace("--", "/"),
                              "Hugging Face cache"))
    return found[:limit]


def _spec(path: Path) -> str:
    """`models/NAME` when the path is under the working directory, else the full path."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _hub_cache() -> Path:
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env)
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home) / "hub"
