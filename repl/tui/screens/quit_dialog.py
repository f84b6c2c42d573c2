"""Asked on Ctrl+Q while the F5 trainer runs: the trainer is a child of the app, and without
the app it would lose its output pipe and die without a checkpoint."""

from __future__ import annotations

from typing import ClassVar, Literal

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

QuitAnswer = Literal["stop", "stay"]


class QuitTrainingScreen(ModalScreen[QuitAnswer]):
    """`s`: stop the trainer (it saves a checkpoint), then quit; Esc: keep working."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "dismiss('stop')", "Stop training and quit"),
        Binding("escape,n", "dismiss('stay')", "Keep working"),
    ]
    DEFAULT_CSS = """
    QuitTrainingScreen { align: center middle; }
    #quit-dialog { width: 70; height: auto; border: round $warning; background: $surface;
                   padding: 1 2; }
    #quit-dialog .hint { color: $text-muted; margin: 1 0 0 0; }
    """

    def __init__(self, step: int, output: str) -> None:
        super().__init__()
        self.step = step
        self.output = output

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog"):
            yield Label(f"The trainer is still running (step {self.step}). Quitting stops it: "
                        f"it saves a checkpoint in {self.output} first, and the app waits "
                        "for that.", id="quit-text", markup=False)
            yield Label("s stops the training and quits · Esc keeps working (Ctrl+Q again "
                        "quits at once)", classes="hint")
