"""Pilot tests for the parts of issue 12's defects that tests/test_tui_fixes.py left uncovered:
a pasted zero-width-joiner emoji and the prompt box's border; Ctrl+R (not only Enter) with an
invalid sampling value."""

from __future__ import annotations

import pytest
from textual import events
from textual.widgets import Input

from tests.test_tui_fixes import SIZE, idle, ready, scripted_app, submit, toasts, until

FAMILY = "👩\u200d👩\u200d👧"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_pasted_zwj_emoji_keeps_its_joiner_and_the_border_in_line(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        prompt = app.prompt
        app.post_message(events.Paste(f"a {FAMILY} b"))  # as the terminal driver sends it
        await pilot.pause()
        assert prompt.text == f"a {FAMILY} b"  # the text keeps the joiners
        line = prompt.render_line(0)
        # Drawn as the three emoji a terminal without ZWJ support shows (2 cells each), so
        # Textual's width of the line is the terminal's and the right border stays in line.
        assert "\u200d" not in line.text and "👩👩👧" in line.text
        assert line.cell_length == prompt.content_region.width
        await pilot.press("enter")
        await idle(pilot, app)
        assert app.conversation.session.turns[0].prompt == f"a {FAMILY} b"


@pytest.mark.anyio
async def test_ctrl_r_with_an_invalid_sampling_value_refuses_and_focuses_it(scripted, tmp_path):
    backend = scripted()
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await submit(pilot, app, "Once")
        sent = len(backend.requests)
        field = app.panel.query_one("#temperature", Input)
        field.value = "-3"
        await pilot.pause()
        app.prompt.focus()
        await pilot.press("ctrl+r", "ctrl+g")  # regenerate, continue: both refused
        await pilot.pause()
        turn = app.conversation.session.turns[0]
        assert len(turn.completions) == 1 and not turn.completion.continuations
        assert len(backend.requests) == sent
        assert app.focused is field
        assert toasts(app, "temperature") == 1


@pytest.mark.anyio
async def test_a_scrolled_transcript_keeps_following_after_the_window_shrinks(scripted,
                                                                              tmp_path):
    """The defect needs a transcript already scrolled to its end when the window shrinks
    (tests/test_tui_fixes.py shrinks it while the text still fits, where nothing is lost)."""
    first = "".join(f"line {i}\n" for i in range(60))
    backend = scripted([first] + [f"more {i}\n" for i in range(40)])
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        backend.hold = True
        await pilot.press("G", "o", "enter")
        transcript = app.transcript
        await until(pilot, lambda: app.job is not None and "line 59" in app.job.text
                    and transcript.max_scroll_y > 10
                    and transcript.scroll_y >= transcript.max_scroll_y - 1)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        backend.hold = False
        backend.release()
        await idle(pilot, app)
        await until(pilot, lambda: transcript.scroll_y >= transcript.max_scroll_y - 1)
        assert transcript.max_scroll_y > 60  # it grew by the 40 lines after the shrink
