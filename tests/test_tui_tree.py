"""Pilot tests of the conversation tree in the TUI, on the scripted backend: Alt+Up/Down select a
turn, F7 edits its prompt into a new branch, Alt+Left/Right page its alternatives and branches,
Ctrl+R regenerates it, and F6 reopens the same tree."""

from __future__ import annotations

import pytest
from textual.widgets import OptionList

from repl.session import load_session
from repl.tui.app import TextgenApp
from repl.tui.screens.session_picker import SessionPickerScreen
from tests.test_tui_fixes import SIZE, idle, ready, scripted_app, submit, until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def prompts(app: TextgenApp) -> list[str]:
    return [t.prompt for t in app.conversation.session.turns]


def shown(app: TextgenApp) -> list[str]:
    """The prompts of the transcript's views, in order (what is on screen)."""
    return [view.turn.prompt for view in app.transcript.views()]


async def three_chat_turns(pilot, app: TextgenApp) -> None:
    await ready(pilot, app)
    app.conversation.system = "Be brief."
    await pilot.press("ctrl+t")  # chat mode
    for text in ("one", "two", "three"):
        await submit(pilot, app, text)


@pytest.mark.anyio
async def test_alt_up_and_down_move_the_selection_between_turns(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await three_chat_turns(pilot, app)
        views = app.transcript.views()
        await pilot.press("alt+up")
        assert app.transcript.selected == 1 and views[1].has_class("-selected")
        assert "selected: F7 edits" in views[1].meta_line()
        await pilot.press("alt+up", "alt+up")  # stops at the first turn
        assert app.transcript.selected == 0
        assert [v.has_class("-selected") for v in views] == [True, False, False]
        await pilot.press("alt+down", "alt+down")  # back to the last turn: no selection
        assert app.transcript.selected is None
        assert not any(v.has_class("-selected") for v in views)


@pytest.mark.anyio
async def test_f7_edits_an_earlier_prompt_into_a_new_branch_and_paging_goes_back(scripted,
                                                                               tmp_path):
    backend = scripted()
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await three_chat_turns(pilot, app)
        await pilot.press("alt+up", "f7")
        assert app.prompt.text == "two" and app.editing == (1, "prompt")
        assert "editing turn 2" in str(app.prompt.border_title)
        await pilot.press("ctrl+u", *"TWO", "enter")
        await until(pilot, lambda: prompts(app) == ["one", "TWO"]
                    and app.conversation.session.turns[1].completions)
        await idle(pilot, app)
        assert shown(app) == ["one", "TWO"] and app.editing is None
        assert [m["content"] for m in backend.requests[-1].messages] == [
            "Be brief.", "one", "Hello world.", "TWO"]
        view = app.transcript.views()[1]
        assert view.meta_line().startswith("branch 2/2 · 1/1")
        await pilot.press("alt+left")  # back to the old branch: its third turn returns
        assert prompts(app) == shown(app) == ["one", "two", "three"]
        assert app.transcript.views()[1].meta_line().startswith("branch 1/2")
        assert app.transcript.selected == 1  # the selection stays on the paged turn
        assert [v.has_class("-selected") for v in app.transcript.views()] == [
            False, True, False]
        await pilot.press("alt+right")  # and forward again
        assert prompts(app) == shown(app) == ["one", "TWO"]
        assert app.transcript.selected is None  # the paged turn is the last one now
        assert load_session(app.conversation.path) == app.conversation.session


@pytest.mark.anyio
async def test_escape_cancels_an_edit_and_gives_the_draft_back(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await three_chat_turns(pilot, app)
        await pilot.press(*"draft", "alt+up", "f7")
        assert app.prompt.text == "two"
        await pilot.press("escape")
        assert app.prompt.text == "draft" and app.editing is None
        assert app.prompt.border_title is None
        assert prompts(app) == ["one", "two", "three"]


@pytest.mark.anyio
async def test_ctrl_r_regenerates_the_selected_turn(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await three_chat_turns(pilot, app)
        await pilot.press("alt+up", "alt+up", "ctrl+r")  # the first turn
        await until(pilot, lambda: prompts(app) == ["one"]
                    and app.conversation.session.turns[0].completions)
        await idle(pilot, app)
        # The later turns answered the first reply: they stay with it, on the old branch.
        assert shown(app) == ["one"] and app.transcript.selected is None
        assert not app.transcript.views()[0].has_class("-selected")
        # Seed 7 made the first reply; the rule counts the replies on every branch.
        assert "seed 8 (= 7 + 1)" in app.transcript.views()[0].meta_line()
        assert app.transcript.views()[0].meta_line().startswith("branch 2/2")
        await pilot.press("alt+left")
        assert shown(app) == ["one", "two", "three"]


@pytest.mark.anyio
async def test_ctrl_r_on_an_earlier_completion_turn_adds_an_alternative(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await submit(pilot, app, "one")
        await submit(pilot, app, "two")
        await pilot.press("alt+up", "ctrl+r")
        await until(pilot, lambda: len(app.conversation.session.turns[0].completions) == 2)
        await idle(pilot, app)
        assert shown(app) == ["one", "two"]  # complete-mode turns stand alone: nothing moves
        assert "‹ 2/2 ›" in app.transcript.views()[0].meta_line()
        await pilot.press("alt+left")
        assert app.conversation.session.turns[0].selected == 0


@pytest.mark.anyio
async def test_f6_reopens_the_same_tree(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await three_chat_turns(pilot, app)
        await pilot.press("alt+up", "f7", "ctrl+u", *"TWO", "enter")
        await until(pilot, lambda: prompts(app) == ["one", "TWO"])
        await idle(pilot, app)
        await pilot.press("alt+left")  # the old branch shown when quitting
        tree = app.conversation.session
        path = app.conversation.path
        await pilot.press("ctrl+q")
    assert load_session(path) == tree

    again = scripted_app(scripted(), tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        await pilot.press("f6")
        await until(pilot, lambda: isinstance(again.screen, SessionPickerScreen))
        picker = again.screen.query_one("#picker-list", OptionList)
        picker.highlighted = picker.get_option_index(str(path))
        await pilot.press("enter")
        await until(pilot, lambda: again.conversation.path == path)
        await pilot.pause()
        assert again.conversation.session == tree
        assert shown(again) == ["one", "two", "three"]
        assert again.transcript.views()[1].meta_line().startswith("branch 1/2")
        await pilot.press("alt+up", "alt+right")  # the edited branch is there too
        assert shown(again) == ["one", "TWO"]


@pytest.mark.anyio
async def test_f8_keeps_an_edited_reply_and_ctrl_g_continues_from_it(scripted, tmp_path):
    backend = scripted([" more"])
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await three_chat_turns(pilot, app)
        await pilot.press("alt+up", "alt+up", "f8")  # the first turn's reply
        assert app.prompt.text == " more" and app.editing == (0, "reply")
        assert "editing turn 1's reply" in str(app.prompt.border_title)
        await pilot.press("ctrl+u", *"Rain falls.", "enter")
        await pilot.pause()
        # Turns 2 and 3 answered the old reply: the edited one starts a new branch.
        assert shown(app) == ["one"] and app.editing is None
        turn = app.conversation.session.turns[0]
        assert turn.completion.text == "Rain falls." and turn.completion.finish == "edited"
        assert "written by hand" in app.transcript.views()[0].meta_line()
        await pilot.press("ctrl+g")
        await idle(pilot, app)
        assert turn.completion.text == "Rain falls. more"
        assert backend.requests[-1].messages[-1] == {"role": "assistant",
                                                     "content": "Rain falls."}
        saved = load_session(app.conversation.path)
        assert saved.turns[0].completions[0].finish == "edited"
        await pilot.press("alt+left")
        assert shown(app) == ["one", "two", "three"]
