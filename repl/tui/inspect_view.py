"""Inspect mode in the TUI: tokens coloured by probability, and a token screen to branch.

F2 turns inspect on or off: while on, every generation records each token's probability and its
top-10 alternatives (repl.token_probs, from the same generation), the transcript colours the
tokens by probability and the status bar shows the legend. F3 opens the token screen on the
selected alternative of the last turn: ←/→ move a cursor over the tokens, the table shows the
cursor token's alternatives, ↑/↓ pick one and Enter forces it: the completion is cut there, that
token is put in its place and the rest is sampled as a new alternative of the turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, Static

from repl.session import Completion
from repl.token_probs import BANDS, TokenStep, band_style, token_spans, token_text

if TYPE_CHECKING:
    from repl.tui.transcript import TurnView

Choice = tuple[int, int, int]  # (segment, token index, forced token id)


@dataclass(frozen=True)
class Piece:
    """One generated token of a completion and where its text is."""

    segment: int  # which recorded generation (0: the first, then continuations)
    index: int  # token index within that generation
    start: int
    end: int
    step: TokenStep


def pieces(completion: Completion, tokenizer: Any) -> list[Piece]:
    """Every recorded token of a completion with its character span, in text order."""
    out: list[Piece] = []
    text = completion.text
    traces = completion.traces
    for segment, (start, trace) in enumerate(traces):
        end = traces[segment + 1][0] if segment + 1 < len(traces) else len(text)
        steps = trace.snapshot()
        spans = token_spans(tokenizer, [s.token_id for s in steps], text[start:end])
        out += [Piece(segment, i, start + a, start + b, step)
                for i, (step, (a, b)) in enumerate(zip(steps, spans, strict=True))]
    return out


def coloured(text: str, parts: list[Piece], cursor: int | None = None) -> Content:
    """`text` with each token's span styled by its probability band (the cursor reversed)."""
    assembled: list[str | tuple[str, str]] = []
    at = 0
    for number, piece in enumerate(parts):
        if piece.end <= piece.start:
            continue
        if piece.start > at:
            assembled.append(text[at:piece.start])
        style = band_style(piece.step.prob)
        if number == cursor:
            style += " reverse"
        assembled.append((text[piece.start:piece.end], style))
        at = piece.end
    assembled.append(text[at:])
    return Content.assemble(*assembled)


def legend() -> Content:
    parts: list[str | tuple[str, str]] = ["p: "]
    for _, style, label in BANDS:
        parts += [("■", style), f"{label} "]
    return Content.assemble(*parts)


def inspect_body(view: TurnView) -> Content | None:
    """The coloured completion of a turn view while inspect mode is on, else None."""
    try:
        app = view.app
    except Exception:  # not mounted in an app yet
        return None
    completion = view.turn.completion
    if not getattr(app, "inspect_on", False) or completion is None or view.live is not None \
            or not completion.traces:
        return None
    tokenizer = app.tokenizer_for(completion)
    if tokenizer is None:
        return None
    return coloured(completion.text, pieces(completion, tokenizer))


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


class InspectActions:
    """The app's inspect actions (mixed into TextgenApp)."""

    inspect_on = False

    def tokenizer_for(self, completion: Completion) -> Any:
        """The tokenizer of the model that made `completion`, if that model is loaded."""
        generator = self.conversation.generator  # type: ignore[attr-defined]
        if generator is None or generator.info.spec != completion.model:
            return None
        return generator.tokenizer

    def action_toggle_inspect(self) -> None:
        self.inspect_on = not self.inspect_on
        self.conversation.inspect = self.inspect_on  # type: ignore[attr-defined]
        self.status.legend = legend() if self.inspect_on else ""  # type: ignore[attr-defined]
        from repl.tui.transcript import TurnView

        for view in self.query(TurnView):  # type: ignore[attr-defined]
            view.show()
        self.notify(  # type: ignore[attr-defined]
            "Inspect on: new generations record each token's probability; F3 shows a "
            "token's alternatives." if self.inspect_on else "Inspect off.")

    def action_inspect_tokens(self) -> None:
        app: Any = self
        if app._refuse_while_busy():
            return
        turn = app.conversation.last_turn
        completion = turn.completion if turn is not None else None
        if completion is None:
            app.notify("Nothing to inspect yet; submit a prompt first.", severity="warning")
            return
        tokenizer = self.tokenizer_for(completion)
        if tokenizer is not None and completion.traces and not any(
                trace.snapshot() for _, trace in completion.traces):
            # Traced, yet empty: a remote server (repl/engine/remote.py) that sends no logprobs.
            app.notify("This server returns no token probabilities, so there is nothing to "
                       "inspect.", severity="warning")
            return
        if not completion.traces or tokenizer is None:
            app.notify("No token probabilities for this text: F2 turns inspect on, then "
                       "Ctrl+R generates an alternative with them.", severity="warning")
            return
        index = turn.selected
        title = (f"Tokens of alternative {index + 1}/{len(turn.completions)} · ←/→ token · "
                 "↑/↓ alternative · Enter forces it and resamples the rest · Esc back")

        def chosen(choice: Choice | None) -> None:
            if choice is None or app._refuse_while_busy():
                return
            try:
                stream = app.conversation.force(-1, index, *choice)
            except Exception as exc:  # TextgenError or ValueError: one line, nothing lost
                app.notify(str(exc), severity="warning")
                return
            view = app.transcript.last_view()
            app._begin("regenerate", view, stream)

        app.push_screen(InspectScreen(completion, tokenizer, title), chosen)
