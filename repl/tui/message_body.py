"""One message's text in the transcript: plain text, or Markdown (chat replies).

Plain text is one `Static`. Markdown is Textual's `Markdown` widget, fed so that streaming stays
cheap: when the new source extends the one shown (a generation adding tokens), only the tail is
appended (`Markdown.append` re-parses from the last block, not the whole document); anything else
(another alternative, the end of a generation) replaces the document. The updates are awaited one
at a time in one task, so a burst of frames coalesces into one append and two never interleave
(`append` reads the parser's position when called, so unawaited calls would corrupt it).
While text streams in, the document is brought up to date at most every MARKDOWN_S: a
Markdown append costs about twice a plain-text frame (blocks are widgets, laid out again), so
10 updates a second instead of the 30 frames keep the UI's stalls near plain text's.
"""

from __future__ import annotations

import asyncio

from textual.app import ComposeResult
from textual.content import Content
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Markdown, Static

MARKDOWN_S = 0.1  # the shortest time between two updates of a streaming document


class MessageBody(Widget):
    """Shows `show_plain(content)` or `show_markdown(source)`, whichever was called last."""

    DEFAULT_CSS = """
    MessageBody {
        height: auto;
    }
    MessageBody > Markdown {
        padding: 0;
        margin: 0;
    }
    MessageBody > Markdown > MarkdownParagraph:last-child {
        margin: 0;
    }
    """

    class Grew(Message):
        """The Markdown document changed (its height may have): a transcript following the
        stream scrolls again. Plain text needs no message: its owner knows when it grew."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plain = Static(classes="body-plain")
        self.markdown: Markdown | None = None  # mounted the first time Markdown is shown
        self.source: str | None = None  # the Markdown wanted; None while plain text shows
        self._shown = ""  # the source the Markdown widget holds (or is being given)
        self._updating = False

    def compose(self) -> ComposeResult:
        yield self.plain

    @property
    def is_markdown(self) -> bool:
        return self.source is not None

    def show_plain(self, content: Content | str, *, layout: bool = True) -> None:
        self.source = None
        self.plain.display = True
        if self.markdown is not None:
            self.markdown.display = False
        self.plain.update(content, layout=layout)

    def plain_grows(self, content: Content) -> bool:
        """Whether `content` takes more (or fewer) lines than the plain text on screen."""
        width = self.plain.content_region.width
        return not width or content.get_height(self.plain.styles, width) != \
            self.plain.content_region.height

    def show_markdown(self, source: str) -> None:
        self.source = source
        self.plain.display = False
        if self.markdown is not None:
            self.markdown.display = True
        if not self._updating and self.is_attached:
            self._updating = True
            self.run_worker(self._update(), group="markdown", exit_on_error=False)

    def on_mount(self) -> None:
        if self.source is not None and not self._updating:  # asked for before it was mounted
            self.show_markdown(self.source)

    async def _update(self) -> None:
        """Bring the Markdown widget to `self.source`, one awaited step at a time."""
        try:
            while self.source is not None and (self.markdown is None
                                               or self._shown != self.source):
                target = self.source
                appended = False
                if self.markdown is None:
                    self.markdown = Markdown(target, open_links=False)
                    await self.mount(self.markdown)  # its first render happens in on_mount
                elif target.startswith(self._shown):
                    await self.markdown.append(target[len(self._shown):])
                    appended = True
                else:
                    await self.markdown.update(target)
                self._shown = target
                self.post_message(self.Grew())
                if appended:  # streaming: what arrives meanwhile coalesces into one append
                    await asyncio.sleep(MARKDOWN_S)
        finally:
            self._updating = False
        if self.markdown is not None:
            self.markdown.display = self.source is not None
