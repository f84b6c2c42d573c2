"""Inspect mode in the TUI: tokens coloured by probability, and a token screen to branch.

F2 turns inspect on or off: while on, every generation records each token's probability and its
top-10 alternatives (repl.token_probs, from the same generation), the transcript colours the
tokens by probability and the status bar shows the legend. F3 opens the token screen on the
selected alternative of the last turn: ←/→ move a cursor over the tokens, the table shows the
cursor token's alternatives, ↑/↓ pick one and Enter forces it: the completion is cut there, that
token is put in its place and the rest is sampled as a new alternative of the turn.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from repl.session import Completion
from repl.token_probs import band_style, token_text
from repl.tui.token_colours import Piece, coloured, legend, pieces

__all__ = ["Choice", "InspectScreen", "Piece", "coloured", "legend", "pieces"]

Choice = tuple[int, int, int]  # (segment, token index, forced token id)


class InspectScreen(Screen[Choice | None]):
    """A completion's tokens with a cursor, and the cursor token's top alternatives."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1)", "Prev token", key_display="←"),
        Binding("right", "move(1)", "Next token", key_display="→"),
        Binding("home", "move(-100000)", "First", show=False),
        Binding("end", "move(100000)", "Last", show=False),
        Binding("up", "pick(-1)", "Prev alt", key_display="↑"),
        Binding("down", "pick(1)", "Next alt", key_display="↓"),
        Binding("enter", "force", "Force it"),
        Binding("escape,f3", "dismiss(None)", "Back"),
    ]

    def __init__(self, completion: Completion, tokenizer: Any, title: str) -> None:
        super().__init__()
        self.completion = completion
        self.tokenizer = tokenizer
        self.title_text = title
        self.parts = [p for p in pieces(completion, tokenizer) if p.end > p.start] or \
            pieces(completion, tokenizer)
        self.cursor = 0
        self.row = 0
        self.rows: list[int] = []  # token ids of the alternatives in the table

    def compose(self) -> ComposeResult:
        with Vertical(id="inspect"):
            yield Label(self.title_text, id="inspect-title")
            with Horizontal(id="inspect-body"):
                with VerticalScroll(id="inspect-text-scroll"):
                    yield Static(id="inspect-text")
                with Vertical(id="inspect-side"):
                    yield Label("", id="inspect-token")
                    table: DataTable[str] = DataTable(cursor_type="row", id="inspect-alts")
                    table.can_focus = False
                    yield table
                    yield Label("", id="inspect-note")
                    yield Static(legend(), id="inspect-legend")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#inspect-alts", DataTable)
        table.add_columns("#", "token", "prob", "")
        self._show()

    @property
    def piece(self) -> Piece | None:
        return self.parts[self.cursor] if self.parts else None

    def _show(self) -> None:
        self.query_one("#inspect-text", Static).update(
            coloured(self.completion.text, self.parts, self.cursor))
        table = self.query_one("#inspect-alts", DataTable)
        table.clear()
        piece = self.piece
        label = self.query_one("#inspect-token", Label)
        if piece is None:
            label.update("no tokens recorded")
            return
        step = piece.step
        label.update(Content.assemble(
            f"token {self.cursor + 1}/{len(self.parts)} ",
            (token_text(self.tokenizer, step.token_id), band_style(step.prob)),
            f"  p={step.prob:.1%}"))
        # Tokens that top-k / top-p / min-p ruled out have probability 0: not alternatives.
        possible = [(t, p) for t, p in step.alternatives() if p > 0.0]
        self.rows = [t for t, _ in possible]
        for rank, (token_id, prob) in enumerate(possible, 1):
            mark = "●" if token_id == step.token_id else str(rank)
            bar = "█" * max(0, round(prob * 12))
            table.add_row(mark, token_text(self.tokenizer, token_id), f"{prob:.1%}", bar)
        ruled_out = len(possible) < len(step.top_ids)
        self.query_one("#inspect-note", Label).update(
            "every other token: ruled out by top-k/top-p/min-p" if ruled_out else "")
        self.row = min(self.row, len(self.rows) - 1)
        table.move_cursor(row=self.row, animate=False)

    def action_move(self, delta: int) -> None:
        if self.parts:
            self.cursor = max(0, min(len(self.parts) - 1, self.cursor + delta))
            self.row = 0
            self._show()

    def action_pick(self, delta: int) -> None:
        piece = self.piece
        if piece is not None:
            self.row = max(0, min(len(self.rows) - 1, self.row + delta))
            self.query_one("#inspect-alts", DataTable).move_cursor(row=self.row, animate=False)

    def action_force(self) -> None:
        piece = self.piece
        if piece is not None:
            self.dismiss((piece.segment, piece.index, self.rows[self.row]))
