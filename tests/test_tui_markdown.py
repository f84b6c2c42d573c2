"""Chat replies as Markdown (F9: raw text), on the scripted backend (tests/conftest.py)."""

from __future__ import annotations

import pytest
from textual.widgets import Markdown
from textual.widgets._markdown import MarkdownFence

from tests.test_tui_fixes import SIZE, idle, ready, scripted_app, start_held, submit, until

REPLY = ["Here it is:\n\n", "```python\n", "def f():\n", "    return 1\n", "```\n",
         "\nAnd **bold**."]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fence(view) -> MarkdownFence:
    return view.body.query_one(MarkdownFence)


@pytest.mark.anyio
async def test_chat_reply_renders_markdown_and_f7_shows_the_raw_text(scripted, tmp_path):
    app = scripted_app(scripted(REPLY), tmp_path)
    app.conversation.mode = "chat"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await submit(pilot, app, "code please")
        view = app.transcript.last_view()
        text = "".join(REPLY)
        await until(pilot, lambda: view.body.markdown is not None
                    and view.body.markdown.source == text and view.body.query(MarkdownFence))
        assert view.body.is_markdown and not view.body.plain.display
        code = fence(view)
        assert code.code.rstrip() == "def f():\n    return 1" and code.lexer == "python"
        assert code._highlighted_code.spans  # highlighted, not one plain run
        assert "bold" in str(view.body.markdown.query("MarkdownParagraph").last()._content)
        assert "code please" in str(view.head.render()) and "1/1" in str(view.meta.render())
        await pilot.press("f9")  # raw text: the reply exactly as generated
        await pilot.pause()
        assert not view.body.is_markdown and view.body.plain.display
        assert not view.body.markdown.display
        assert "```python" in str(view.body.plain.render())
        await pilot.press("f9")
        await until(pilot, lambda: view.body.markdown.display)
        assert view.body.is_markdown


@pytest.mark.anyio
async def test_markdown_streams_by_appending_and_complete_mode_stays_plain(scripted, tmp_path,
                                                                          monkeypatch):
    backend = scripted(REPLY)
    app = scripted_app(backend, tmp_path)
    app.conversation.mode = "chat"
    updates: list[str] = []
    real_update = Markdown.update

    def counted_update(self, markdown: str):
        updates.append(markdown)
        return real_update(self, markdown)

    monkeypatch.setattr(Markdown, "update", counted_update)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await start_held(pilot, app, backend)
        view = app.transcript.last_view()
        await until(pilot, lambda: view.body.markdown is not None
                    and view.body.markdown.source == REPLY[0])
        backend.hold = False
        backend.release()
        await idle(pilot, app)
        await until(pilot, lambda: view.body.markdown.source == "".join(REPLY))
        # One document for the whole stream: its first render (whatever had arrived when it
        # was mounted), then appends only: a whole re-render per frame makes streaming stall.
        assert len(updates) == 1
        assert view.body.query(MarkdownFence)
        await pilot.press("ctrl+t")  # complete mode: its turns are plain text
        await submit(pilot, app, "Once")
        plain = app.transcript.last_view()
        assert plain.body.markdown is None and plain.body.plain.display
        assert str(plain.body.plain.render()).startswith("Once" + "".join(REPLY))


@pytest.mark.parametrize(("source", "done"), [
    ("Here it is:\n\nAnd **bo", "Here it is:\n\n"),
    ("One\ntwo\n", ""),  # a paragraph (or list) goes on until a blank line
    ("Intro\n\n```python\ndef f():\n\n    return 1\n", "Intro\n\n"),  # a blank line in a fence
    ("```python\ndef f():\n```\nAfter", "```python\ndef f():\n```\n"),  # a closed fence
    ("~~~\nx\n```\n", ""),  # a fence closes only with its own marker
    ("", ""),
])
def test_a_streaming_source_splits_after_its_last_finished_block(source, done):
    from repl.tui.widgets.message_body import split_finished

    assert split_finished(source) == (done, source[len(done):])


@pytest.mark.anyio
async def test_the_block_being_written_streams_as_text_below_the_rendered_ones(scripted,
                                                                               tmp_path):
    backend = scripted(["Intro **one**\n\n```python\ndef f():\n", "    return 1\n"])
    app = scripted_app(backend, tmp_path)
    app.conversation.mode = "chat"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await start_held(pilot, app, backend)
        view = app.transcript.last_view()
        # held after its first chunk: a finished paragraph and an open fence
        await until(pilot, lambda: "def f():" in str(view.body.tail.render()))
        assert view.body.markdown is not None
        await until(pilot, lambda: view.body.markdown.source == "Intro **one**\n\n")
        assert view.body.tail.display and "```python" in str(view.body.tail.render())
        assert not view.body.query(MarkdownFence)  # the open fence is not rendered yet
        backend.hold = False
        backend.release()
        await idle(pilot, app)
        await until(pilot, lambda: view.body.query(MarkdownFence))
        assert not view.body.tail.display  # the whole reply rendered once it ended
        assert fence(view).code.rstrip() == "def f():\n    return 1"
