"""The multi-line prompt: Enter submits, Ctrl+J (or Shift+Enter where the terminal sends it)
starts a new line. Pasted text keeps its newlines."""

from __future__ import annotations

from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import TextArea

# Keys that insert a newline instead of submitting. tmux and most terminals send Ctrl+J as a
# distinct key; Shift+Enter only arrives with the kitty keyboard protocol.
NEWLINE_KEYS = ("ctrl+j", "shift+enter")


class PromptInput(TextArea):
    """A TextArea whose Enter key submits the text instead of inserting a newline."""

    BINDINGS: ClassVar[list[BindingType]] = [
        # The key itself is handled in `_on_key` (TextArea consumes Enter before bindings run);
        # the binding puts "enter Submit" in the footer, the help screen and the palette.
        Binding("enter", "submit", "Submit", priority=False),
        Binding("ctrl+j", "newline", "New line", show=False),
    ]

    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                         placeholder="Write a prompt · Enter submits · Ctrl+J new line · "
                                     "F1 all keys", **kwargs)

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
        await super()._on_key(event)

    def action_submit(self) -> None:
        self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")
