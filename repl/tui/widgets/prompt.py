"""The multi-line prompt: Enter submits, Ctrl+J (or Shift+Enter where the terminal sends it)
starts a new line. Pasted text keeps its newlines. Up on the first line and Down on the last
page through earlier prompts (repl/tui/history.py); Down past the newest brings back the draft."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.strip import Strip
from textual.widgets import TextArea

from repl.tui.history import PromptHistory

# Keys that insert a newline instead of submitting. tmux and most terminals send Ctrl+J as a
# distinct key; Shift+Enter only arrives with the kitty keyboard protocol.
NEWLINE_KEYS = ("ctrl+j", "shift+enter")
ZWJ = "\u200d"


class PromptInput(TextArea):
    """A TextArea whose Enter key submits the text instead of inserting a newline."""

    BINDINGS: ClassVar[list[BindingType]] = [
        # The key itself is handled in `_on_key` (TextArea consumes Enter before bindings run);
        # the binding puts "enter Submit" in the footer, the help screen and the palette.
        Binding("enter", "submit", "Submit", priority=False),
        Binding("ctrl+j", "newline", "New line", show=False),
    ]

    @dataclass
    class Submitted(Message):
        """Enter: `text` is the prompt to run."""

        prompt: PromptInput
        text: str

    def __init__(self, prompts: PromptHistory | None = None, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                         placeholder="Write a prompt · Enter submits · Ctrl+J new line · "
                                     "↑ earlier prompts · F1 all keys", **kwargs)
        self.prompts = prompts  # earlier prompts (TextArea.history is its undo)
        self._recalled: int | None = None  # index into the history while paging through it
        self._draft = ""  # what was typed before paging began

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_submit()
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.action_newline()
            return
        if (joiner := _joiner(event)) is not None:
            # A zero-width joiner (or another format character) typed between emoji: not
            # "printable", so TextArea would drop it and split 👩‍👩‍👧 into three.
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self._replace_via_keyboard(joiner, start, end)
            return
        await super()._on_key(event)

    def render_line(self, y: int) -> Strip:
        """A line as the terminal will draw it. Rich measures 👩‍👩‍👧 as one 2-cell cluster,
        but tmux 3.3 and many terminals draw the three emoji apart (6 cells), which pushed the
        box's right border out of line. Drawn without the joiner, both count 6; the text
        itself keeps it."""
        strip = super().render_line(y)
        if not any(ZWJ in segment.text for segment in strip):
            return strip
        width = strip.cell_length
        return Strip([Segment(segment.text.replace(ZWJ, ""), segment.style, segment.control)
                      for segment in strip]).adjust_cell_length(width)

    def action_submit(self) -> None:
        if self.prompts is not None:
            self.prompts.add(self.text)
        self._recalled = None
        self.post_message(self.Submitted(self, self.text))

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_at_first_line and self._recall(-1):
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.cursor_at_last_line and self._recall(1):
            return
        super().action_cursor_down(select)

    def _recall(self, step: int) -> bool:
        """Show the previous (-1) or next (+1) history entry; False when there is none."""
        entries = self.prompts.entries if self.prompts is not None else []
        if self._recalled is None:
            if step > 0 or not entries:
                return False
            self._draft = self.text
            index = len(entries) - 1
        else:
            index = self._recalled + step
            if index < 0:
                return True  # at the oldest: stay
        if index >= len(entries):
            self._recalled = None
            self.load_text(self._draft)
        else:
            self._recalled = index
            self.load_text(entries[index])
        self.move_cursor(self.document.end)
        return True

    def action_newline(self) -> None:
        self.insert("\n")


def _joiner(event: events.Key) -> str | None:
    """The zero-width joiner or other format character (Unicode category Cf) a key typed; the
    key may come with no character, only its name (`zero_width_joiner`)."""
    character = event.character
    if character is None and event.key.isidentifier():
        try:
            character = unicodedata.lookup(event.key.replace("_", " "))
        except KeyError:
            return None
    if character and len(character) == 1 and unicodedata.category(character) == "Cf":
        return character
    return None
