"""The transcript: every turn's prompt and its selected completion, with the live text of a
generation in progress. It follows the stream only while the user is at the bottom: scrolling
up to read stops the following, scrolling back to the end resumes it. One turn can be selected
(Alt+Up/Down) for the keys that act on a turn; without a selection they act on the last.

A chat reply is shown as Markdown (code blocks highlighted) unless the transcript is set to raw
text (F9); complete mode is always plain text, and so is inspect mode's coloured text."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.await_complete import AwaitComplete
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Static

from repl.session import EDITED, Turn
from repl.tui.token_colours import TokenizerFor, coloured, pieces
from repl.tui.widgets.message_body import MessageBody

WELCOME = ("Write a prompt below and press Enter. The model continues your text "
           "(complete mode) or answers it (chat mode, Ctrl+T). F1 lists every key.")


class TurnView(Vertical):
    """One turn: the prompt, the selected alternative (or the one being generated), and a line
    saying which alternative this is and how it ended.

    As plain text the whole turn is one `Content` (`render_turn`) in the body; as Markdown the
    prompt and the meta line are their own lines around the rendered reply."""

    DEFAULT_CSS = """
    TurnView {
        height: auto;
    }
    TurnView > .turn-head, TurnView > .turn-meta {
        display: none;
    }
    TurnView.-markdown > .turn-head, TurnView.-markdown > .turn-meta {
        display: block;
    }
    TurnView > .turn-meta {
        color: $text-muted;
    }
    """

    def __init__(self, turn: Turn, number: int, *, markdown: bool = False,
                 inspect: TokenizerFor | None = None) -> None:
        super().__init__(classes=f"turn -{turn.mode}")
        self.turn = turn
        self.number = number
        self.markdown = markdown  # chat replies as Markdown (False: raw text)
        self.inspect = inspect  # inspect mode (F2) on: where the tokens' tokenizer comes from
        self.live: str | None = None  # text generated so far by a running generation
        self.live_kind = ""  # submit | regenerate | continue
        self.head = Static(classes="turn-head")
        self.body = MessageBody()
        self.meta = Static(classes="turn-meta")
        self.show()

    def compose(self) -> ComposeResult:
        yield self.head
        yield self.body
        yield self.meta

    def start_live(self, kind: str) -> None:
        self.live, self.live_kind = "", kind
        self.show()

    def add_live(self, text: str) -> bool:
        """Show more streamed text; True when the turn grew by a line (then it was laid out
        again, and a transcript that follows the stream must scroll). Markdown says so itself,
        once its document has changed (`MessageBody.Grew`)."""
        if self.live is None:
            self.live = ""
        self.live += text
        if self.body.is_markdown:
            self.body.show_markdown(self.body_text(), live=True)
            return False
        content = self.render_turn()
        # A new layout of the whole screen costs far more than wrapping this turn's text, and
        # re-laying out 30 times a second took 30% of decode speed from the worker: lay out
        # again only when the turn grows by a line.
        grew = self.body.plain_grows(content)
        self.body.show_plain(content, layout=grew)
        return grew

    def end_live(self) -> None:
        self.live, self.live_kind = None, ""
        self.show()

    def set_markdown(self, markdown: bool) -> None:
        self.markdown = markdown
        self.show()

    def set_inspect(self, inspect: TokenizerFor | None) -> None:
        self.inspect = inspect
        self.show()

    def inspect_colours(self) -> Content | None:
        """The completion coloured by token probability while inspect mode is on, else None."""
        completion = self.turn.completion
        if self.inspect is None or completion is None or self.live is not None \
                or not completion.traces:
            return None
        tokenizer = self.inspect(completion)
        if tokenizer is None:
            return None
        return coloured(completion.text, pieces(completion, tokenizer))

    def show(self) -> None:
        coloured = self.inspect_colours()  # inspect mode's colours are plain text
        if self.markdown and self.turn.mode == "chat" and coloured is None:
            self.add_class("-markdown")
            self.head.update(Content.assemble(("› ", "bold $accent"),
                                              (self.turn.prompt, "bold $accent")))
            self.meta.update(Content(self.meta_line()))
            self.body.show_markdown(self.body_text(), live=self.live is not None)
        else:
            self.remove_class("-markdown")
            self.body.show_plain(self.render_turn(coloured))

    def body_text(self) -> str:
        """The completion text on screen now: the live one while generating."""
        turn = self.turn
        if self.live is not None and self.live_kind in ("submit", "regenerate"):
            return self.live
        base = turn.completion.text if turn.completion is not None else ""
        return base + (self.live or "") if self.live_kind == "continue" else base

    def render_turn(self, body: Content | None = None) -> Content:
        """The whole turn as plain text (`body`: the completion coloured by inspect mode)."""
        turn = self.turn
        parts: list[str | tuple[str, str]] = []
        if turn.mode == "chat":
            parts += [("› ", "bold $accent"), (turn.prompt, "bold $accent"), "\n"]
        else:
            parts.append((turn.prompt, "bold $accent"))
        parts.append(body or self.inspect_colours() or self.body_text())  # coloured in inspect mode
        if self.live is not None:
            parts.append(("▌", "$accent"))
        parts += ["\n", (self.meta_line(), "$text-muted")]
        return Content.assemble(*parts)

    def meta_line(self) -> str:
        turn = self.turn
        count = len(turn.completions)
        if self.live is not None:
            if self.live_kind == "regenerate":
                return f"generating alternative {count + 1} … (Esc stops)"
            if self.live_kind == "continue":
                return f"continuing alternative {turn.selected + 1}/{count} … (Esc stops)"
            return "generating … (Esc stops)"
        completion = turn.completion
        if completion is None:
            return "no completion"
        parts = [f"‹ {turn.selected + 1}/{count} ›" if count > 1 else "1/1"]
        if turn.branch_count > 1:  # other prompts (edits) were tried here: paging reaches them
            parts.insert(0, f"branch {turn.branch + 1}/{turn.branch_count}")
        tokens = (completion.stats.new_tokens if completion.stats else 0) + sum(
            k.stats.new_tokens for k in completion.continuations if k.stats)
        if turn.compare:  # the sides of a comparison, paged like alternatives
            parts[0] = f"compare ‹ {'AB'[turn.selected]} › {completion.model}"
        if completion.finish == EDITED:  # written by hand: no seed, no tokens of its own
            parts += ["written by hand"] + (
                [f"{tokens} tokens", completion.last_finish] if completion.continuations else [])
        else:
            parts += [seed_text(turn), f"{tokens} tokens", completion.last_finish]
        if completion.forced is not None:  # F3: one token chosen by hand, the rest sampled
            parts.append(f"forced {completion.forced.token!r} "
                         f"(from alternative {completion.forced.source + 1})")
        if completion.continuations:
            parts.append(f"continued ×{len(completion.continuations)}")
        if self.has_class("-selected"):
            parts.append("selected: F7 edits the prompt, F8 the reply")
        return " · ".join(parts)


class Transcript(VerticalScroll):
    """All turns of the session, newest at the bottom.

    `pinned` says whether the view follows new text: it is the user's scrolling that unpins
    it (a resize that leaves the old position short of the new bottom does not)."""

    def __init__(self, *, markdown: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pinned = True
        self.selected: int | None = None  # the selected turn's index; None: the last turn
        self.markdown = markdown  # chat replies as Markdown; False: raw text
        self.inspect: TokenizerFor | None = None  # inspect mode (F2): tokens coloured

    def set_markdown(self, markdown: bool) -> None:
        """Markdown or raw text for every chat reply, shown and to come."""
        self.markdown = markdown
        for view in self.views():
            view.set_markdown(markdown)

    def set_inspect(self, inspect: TokenizerFor | None) -> None:
        """Inspect mode on (`inspect`: the tokenizer of a completion's model) or off (None),
        for every turn shown and to come."""
        self.inspect = inspect
        for view in self.views():
            view.set_inspect(inspect)

    def turn_view(self, turn: Turn, number: int) -> TurnView:
        return TurnView(turn, number, markdown=self.markdown, inspect=self.inspect)

    def on_message_body_grew(self, message: MessageBody.Grew) -> None:
        message.stop()
        if self.pinned:  # not while the user scrolled up to read
            self.follow()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.size.height:  # before the first layout there is no bottom to be at
            self.pinned = new_value >= self.max_scroll_y - 1

    def on_resize(self) -> None:
        if self.pinned:
            self.follow()

    def at_bottom(self) -> bool:
        return self.pinned or self.scroll_y >= self.max_scroll_y - 1

    def follow(self) -> None:
        """Scroll to the end once the layout has caught up with new text."""
        self.pinned = True
        self.scroll_end(animate=False, immediate=False)

    def load(self, turns: list[Turn]) -> AwaitComplete:
        """Show a whole session (after resume or a new session). Await it where what follows
        needs the new views; either way the old children are gone before the new arrive."""
        return AwaitComplete(self._load(list(turns)))

    async def _load(self, turns: list[Turn]) -> None:
        self.selected = None
        await self.remove_children()
        if not turns:
            await self.mount(Static(WELCOME, classes="welcome"))
            return
        await self.mount_all(self.turn_view(turn, i + 1)
                             for i, turn in enumerate(turns))
        self.follow()

    def add_turn(self, turn: Turn) -> TurnView:
        for welcome in self.query(".welcome"):
            welcome.remove()
        view = self.turn_view(turn, len(self.views()) + 1)
        self.mount(view)
        self.follow()  # a new prompt always brings the view to the bottom
        return view

    def last_view(self) -> TurnView | None:
        views = self.views()
        return views[-1] if views else None

    def views(self) -> list[TurnView]:
        """The turn views in order, without those being removed (a removal completes later;
        `display` is False from its start)."""
        return [view for view in self.query(TurnView) if view.display]

    def sync(self, turns: list[Turn]) -> list[TurnView]:
        """Show `turns` (the branch now shown), keeping the views of the turns that did not
        change and replacing the rest; returns the views in order."""
        views = self.views()
        keep = 0
        while keep < min(len(views), len(turns)) and views[keep].turn is turns[keep]:
            keep += 1
        for view in views[keep:]:
            view.remove()
        fresh = [self.turn_view(turn, number)
                 for number, turn in enumerate(turns[keep:], keep + 1)]
        if fresh:
            self.mount_all(fresh)
        if self.selected is not None and self.selected >= len(turns) - 1:
            self.selected = None  # the last turn: what no selection means
        for view in views[:keep]:
            view.show()  # its branch count may have changed
        self._mark_selected(views[:keep] + fresh)
        return views[:keep] + fresh

    def select(self, index: int | None,
               views: list[TurnView] | None = None) -> TurnView | None:
        """Select the turn at `index` (None: back to the last turn) and bring it into view;
        `views`: what `sync` returned (views it mounted may not be queryable yet)."""
        views = self.views() if views is None else views
        self.selected = index if index is not None and 0 <= index < len(views) - 1 else None
        self._mark_selected(views)
        if self.selected is None:
            self.follow()
            return views[-1] if views else None
        self.scroll_to_widget(views[self.selected], animate=False)
        return views[self.selected]

    def _mark_selected(self, views: list[TurnView]) -> None:
        for index, view in enumerate(views):
            selected = index == self.selected
            if view.has_class("-selected") != selected:
                view.set_class(selected, "-selected")
                view.show()


def seed_text(turn: Turn) -> str:
    """The selected alternative's seed, with the rule when it was derived from the first's: a
    fixed seed gives alternative N the seed + N - 1, so alternatives differ and still replay
    (counted over every branch at this position with the same prompt)."""
    completion = turn.completion
    assert completion is not None
    made = turn.same_prompt_completions()
    first = made[0].seed
    offset = next(i for i, c in enumerate(made) if c is completion)
    if offset and completion.forced is None and completion.seed == (first + offset) % 2**32:
        return f"seed {completion.seed} (= {first} + {offset})"
    return f"seed {completion.seed}"
