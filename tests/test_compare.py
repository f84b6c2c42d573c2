"""Compare: one prompt two ways, side by side, saved as a compare turn (session version 2)."""

from __future__ import annotations

import json

import pytest
from textual.widgets import Input, Static

from repl.params import SamplingParams
from repl.session import VERSION, Session, load_session
from repl.tui.screens.compare import CompareScreen, parse_side_params
from tests.test_tui import idle, make_app, submit, until
from tests.tiny_models import save_random_gpt2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_side_params_are_a_preset_and_pairs_on_the_current_ones():
    base = SamplingParams(seed=9, max_new_tokens=20)
    assert parse_side_params("", base) == base
    greedy = parse_side_params("greedy", base)
    assert greedy.greedy and greedy.seed == 9 and greedy.max_new_tokens == 20
    assert parse_side_params("temperature=1.3 top_k=0", base).top_k == 0
    with pytest.raises(ValueError, match="neither a preset"):
        parse_side_params("warm", base)
    with pytest.raises(ValueError, match="temperature must be a number"):
        parse_side_params("temperature=hot", base)


async def run_compare(pilot, app, screen: CompareScreen) -> None:
    runs = screen.runs
    await pilot.press("ctrl+r")
    await until(pilot, lambda: screen.runs > runs)
    await pilot.pause()


@pytest.mark.anyio
async def test_compare_two_parameter_sets_streams_both_panes_and_saves(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(120, 34)) as pilot:
        await submit(pilot, app, "Once upon a time")
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        assert screen.query_one("#compare-prompt", Input).value == "Once upon a time"
        assert screen.query_one("#params-B", Input).value == "greedy"
        await run_compare(pilot, app, screen)
        turn = app.conversation.session.turns[-1]
        assert turn.compare and len(turn.completions) == 2
        left, right = turn.completions
        assert left.seed == right.seed == 7
        assert not left.params.greedy and right.params.greedy
        for side, completion in zip("AB", turn.completions, strict=True):
            shown = str(screen.query_one(f"#text-{side}", Static).render())
            assert completion.text and shown == completion.text
            assert "12 tokens" in str(screen.query_one(f"#meta-{side}", Static).render())
        saved = load_session(app.conversation.path)
        assert saved.turns[-1].compare and saved.turns[-1].completions[1].text == right.text
        data = json.loads(app.conversation.path.read_text())
        assert data["version"] == VERSION and data["turns"][-1]["compare"] is True
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, CompareScreen))
        view = app.transcript.last_view()
        assert view.turn is turn and "compare ‹ A ›" in view.meta_line()
        await pilot.press("ctrl+r")  # a comparison is not regenerated
        await pilot.pause()
        assert len(turn.completions) == 2
        assert any("comparison cannot be" in n.message for n in app._notifications)
        # Chat history leaves the comparison out.
        assert app.conversation.session.chat_history(len(app.conversation.session.turns)) == []


@pytest.mark.anyio
async def test_compare_two_models(tiny_loaded, tmp_path):
    other = save_random_gpt2(tmp_path / "other-tiny", seed=1)
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(120, 34)) as pilot:
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        screen.query_one("#model-B", Input).value = str(other)
        screen.query_one("#params-B", Input).value = ""
        screen.query_one("#compare-prompt", Input).value = "The river"
        await run_compare(pilot, app, screen)
        left, right = app.conversation.session.turns[-1].completions
        assert left.model == tiny_loaded.info.spec and right.model == str(other)
        assert left.params == right.params and left.text != right.text
        assert str(other) in app.controller.compare_models  # kept for the next comparison


@pytest.mark.anyio
async def test_compare_refuses_bad_params_and_missing_models(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(120, 34)) as pilot:
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        screen.query_one("#params-A", Input).value = "temperature=hot"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert not screen.running and app.conversation.session.turns == []
        screen.query_one("#params-A", Input).value = ""
        screen.query_one("#model-B", Input).value = str(tmp_path / "no-such-model")
        await run_compare(pilot, app, screen)
        assert app.conversation.session.turns == []  # nothing half-made is kept
        assert any(n.severity == "error" for n in app._notifications)
        await idle(pilot, app)


def test_version_1_files_still_load(tmp_path):
    session = Session(model={"spec": "m", "name": "m"})
    data = session.to_dict()
    data["version"] = 1
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert load_session(path).turns == []
