"""One message's text in the transcript: plain text, or Markdown (chat replies).

Plain text is one `Static`. Markdown is Textual's `Markdown` widget, fed so that streaming stays
cheap: when the new source extends the one shown (a generation adding tokens), only the tail is
appended (`Markdown.append` re-parses from the last block, not the whole document); anything else
(another alternative, the end of a generation) replaces the document. The updates are awaited one
at a time in one task, so a burst of frames coalesces into one append and two never interleave
(`append` reads the parser's position when called, so unawaited calls would corrupt it).
While text streams in, only its finished blocks (up to the last blank line outside a code
fence, see `split_finished`) go to the Markdown widget; the block still being written shows
below it as plain text, which costs a `Static` update per frame. A Markdown append costs about
twice a plain-text frame and more as the document grows (blocks are widgets, laid out again):
appending every frame, even 10 times a second, doubled the longest UI stall (563 against
255 ms for plain text). Now the document changes once a block, and at most every MARKDOWN_S.
"""

from __future__ import annotations

import asyncio

from textual.app import ComposeResult
from textual.content import Content
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Markdown, Static

MARKDOWN_S = 0.1  # the shortest time between two updates of a streaming document
FENCES = ("```", "~~~")


def split_finished(source: str) -> tuple[str, str]:
    """(finished blocks, the block still being written) of a streaming Markdown source.

    A block is finished by a blank line outside a code fence, or by the line that closes a
    fence; everything after the last such point may still change how it renders."""
    done = 0
    fence: str | None = None
    position = 0
    for line in source.splitlines(keepends=True):
        position += len(line)
        if not line.endswith("\n"):
            break  # the line being written
        marker = line.lstrip()[:3]
        if fence is None and marker in FENCES:
            fence = marker
        elif fence is not None and marker == fence and not line.strip().strip(fence[0]):
            fence = None
            done = position
        elif fence is None and not line.strip():
            done = position
    return source[:done], source[done:]


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
        self.tail = Static(classes="body-tail")  # a streaming reply's unfinished block
        self.tail.display = False
        self.source: str | None = None  # the Markdown wanted; None while plain text shows
        self._document = ""  # the part of `source` the Markdown widget should hold
        self._shown = ""  # the source the Markdown widget holds (or is being given)
        self._updating = False

    def compose(self) -> ComposeResult:
        yield self.plain
        yield self.tail

    @property
    def is_markdown(self) -> bool:
        return self.source is not None

    def show_plain(self, content: Content | str, *, layout: bool = True) -> None:
        self.source = None
        self.plain.display = True
        self.tail.display = False
        if self.markdown is not None:
            self.markdown.display = False
        self.plain.update(content, layout=layout)

    def plain_grows(self, content: Content) -> bool:
        """Whether `content` takes more (or fewer) lines than the plain text on screen."""
        return _grows(self.plain, content)

    def show_markdown(self, source: str, *, live: bool = False) -> None:
        """Render `source`; `live`: it is still streaming, so its last block shows as text."""
        self.source = source
        self._document, rest = split_finished(source) if live else (source, "")
        self.plain.display = False
        if self.markdown is not None:
            self.markdown.display = True
        self._show_tail(Content.assemble(rest, ("▌", "$accent")) if live else None)
        if self._document == self._shown and self.markdown is not None:
            return  # only the tail moved: no document work this frame
        if not self._updating and self.is_attached:
            self._updating = True
            self.run_worker(self._update(), group="markdown", exit_on_error=False)

    def _show_tail(self, content: Content | None) -> None:
        if content is None:
            self.tail.display = False
            return
        grew = not self.tail.display or _grows(self.tail, content)
        self.tail.display = True
        self.tail.update(content, layout=grew)
        if grew:  # a transcript following the stream scrolls to the new line
            self.post_message(self.Grew())

    def on_mount(self) -> None:
        if self.source is not None and not self._updating:  # asked for before it was mounted
            self.show_markdown(self.source)

    async def _update(self) -> None:
        """Bring the Markdown widget to `self.source`, one awaited step at a time."""
        try:
            while self.source is not None and (self.markdown is None
                                               or self._shown != self._document):
                target = self._document
                appended = False
                if self.markdown is None:
                    self.markdown = Markdown(target, open_links=False)
                    await self.mount(self.markdown, before=self.tail)  # renders in on_mount
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


def _grows(static: Static, content: Content) -> bool:
    """Whether `content` takes more (or fewer) lines than `static` shows now."""
    width = static.content_region.width
    return not width or content.get_height(static.styles, width) != static.content_region.height
