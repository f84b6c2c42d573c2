"""Pilot tests of the TUI with the tiny random model: every key, the sampling panel, resume."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from textual.widgets import Input, Label, OptionList, Switch

from repl.conversation import Conversation
from repl.engine import Generator
from repl.params import SamplingParams
from repl.session import Session, load_session
from repl.tui.app import COMMAND_NAMES, TextgenApp
from repl.tui.screens.dialogs import HelpScreen, ModelScreen
from repl.tui.widgets.transcript import TurnView
from tests import waiting

SIZE = (100, 30)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


@pytest.fixture(scope="module")
def slow_loaded(tiny_model_dir):
    """The tiny model on the transformers backend at ~10 ms a token: the tests that press keys
    while a generation runs need it still running (unslowed, the tiny model finishes 240 tokens
    between two polls of the pilot)."""
    from repl.models import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu")
    loaded.model.register_forward_hook(lambda *args: time.sleep(0.01))
    return loaded


def make_app(tiny_loaded, tmp_path: Path, **params) -> TextgenApp:
    params.setdefault("seed", 7)
    params.setdefault("max_new_tokens", 12)
    return TextgenApp(tiny_loaded.info.spec, loaded=tiny_loaded, sessions_dir=tmp_path,
                      params=SamplingParams(**params))


until = waiting.until  # generous limits that name what they waited for


async def idle(pilot, app: TextgenApp) -> None:
    """Wait until the running generation (if any) has ended and been shown."""
    await pilot.pause()
    await until(pilot, lambda: app.job is None)
    await pilot.pause()


async def submit(pilot, app: TextgenApp, text: str = "Once upon a time") -> None:
    turns = app.conversation.session.turns
    count = len(turns) + 1
    await pilot.press(*text, "enter")
    await until(pilot, lambda: len(turns) == count and turns[-1].completions)
    await idle(pilot, app)


def last_view(app: TextgenApp) -> TurnView:
    view = app.transcript.last_view()
    assert view is not None
    return view


@pytest.mark.anyio
async def test_submit_streams_into_transcript_and_saves(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(pilot, app, "Once upon a time")
        turns = app.conversation.session.turns
        assert len(turns) == 1 and turns[0].prompt == "Once upon a time"
        completion = turns[0].completion
        assert completion is not None and completion.text
        assert completion.stats is not None and completion.stats.new_tokens == 12
        assert str(last_view(app).render_turn()).startswith("Once upon a time" + completion.text)
        assert app.prompt.text == ""  # the prompt is cleared for the next one
        assert app.status.finish == "length"
        assert app.status.context_used == completion.stats.prompt_tokens + 12
        saved = load_session(app.conversation.path)
        assert saved.turns[0].completions[0].text == completion.text


@pytest.mark.anyio
async def test_ctrl_j_inserts_a_newline_instead_of_submitting(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a", "ctrl+j", "b")
        assert app.prompt.text == "a\nb"
        assert not app.conversation.session.turns


@pytest.mark.anyio
async def test_regenerate_adds_an_alternative_and_paging_shows_each(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(pilot, app)
        await pilot.press("ctrl+r")
        await idle(pilot, app)
        turn = app.conversation.session.turns[0]
        assert len(app.conversation.session.turns) == 1
        assert len(turn.completions) == 2 and turn.selected == 1
        first, second = (c.text for c in turn.completions)
        assert first != second  # seed 7 then seed 8
        view = last_view(app)
        assert view.body_text() == second and "‹ 2/2 ›" in view.meta_line()
        await pilot.press("alt+left")
        assert turn.selected == 0
        assert view.body_text() == first and "‹ 1/2 ›" in view.meta_line()
        assert first in str(view.render_turn())
        await pilot.press("alt+left")  # stays at the first
        assert turn.selected == 0
        await pilot.press("alt+right")
        assert view.body_text() == second
        assert load_session(app.conversation.path).turns[0].selected == 1


@pytest.mark.anyio
async def test_continue_extends_the_selected_completion(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(pilot, app)
        completion = app.conversation.session.turns[0].completion
        before = completion.text
        await pilot.press("ctrl+g")
        await idle(pilot, app)
        assert completion.text.startswith(before) and len(completion.text) > len(before)
        assert len(completion.continuations) == 1
        assert last_view(app).body_text() == completion.text
        assert "continued ×1" in last_view(app).meta_line()


@pytest.mark.anyio
async def test_escape_stops_within_a_token_and_keeps_the_text(slow_loaded, tmp_path):
    app = make_app(slow_loaded, tmp_path, max_new_tokens=240)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"Hello", "enter")
        await until(pilot, lambda: app.job is not None and app.job.text)
        await pilot.press("escape")
        pressed = time.monotonic()
        await idle(pilot, app)
        stopped_after = time.monotonic() - pressed
        completion = app.conversation.session.turns[0].completion
        assert completion.finish == "cancelled" and app.status.finish == "cancelled"
        assert 0 < completion.stats.new_tokens < 240
        assert completion.text and last_view(app).body_text() == completion.text
        assert stopped_after < 5  # a token of the tiny model takes milliseconds
        assert load_session(app.conversation.path).turns[0].completions[0].finish == "cancelled"


@pytest.mark.anyio
async def test_invalid_temperature_is_refused_with_a_message(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+s")
        field = app.panel.query_one("#temperature", Input)
        assert field.has_focus
        error = app.panel.query_one("#temperature-error", Label)
        await pilot.press("end", "ctrl+u")
        assert not error.display  # an empty field mid-edit is not an error yet
        await pilot.press("-", "1")
        await pilot.pause()
        assert error.display and "temperature must be 0 or more" in str(error.render())
        assert app.conversation.params.temperature == 0.7  # not applied
        await pilot.press("ctrl+u", *"hot")
        await pilot.pause()
        assert "temperature must be a number, not 'hot'" in str(error.render())
        assert app.conversation.params.temperature == 0.7
        await pilot.press("ctrl+u", *"1.3")
        await pilot.pause()
        assert not error.display
        assert app.conversation.params.temperature == 1.3
        await pilot.press("tab", "ctrl+u", "shift+tab")  # leave top-k empty
        await pilot.pause()
        top_k_error = app.panel.query_one("#top_k-error", Label)
        assert "top_k must be a whole number, not ''" in str(top_k_error.render())
        assert app.conversation.params.top_k == 50
        await pilot.press("ctrl+s")  # back to the prompt
        assert app.prompt.has_focus
        await pilot.press(*"Once", "enter")  # refused: top-k shows no valid value
        await pilot.pause()
        assert not app.conversation.session.turns
        top_k = app.panel.query_one("#top_k", Input)
        assert top_k.has_focus
        await pilot.press(*"50")
        app.prompt.focus()
        await pilot.press("enter")
        await until(pilot, lambda: bool(app.conversation.session.turns)
                    and bool(app.conversation.session.turns[0].completions))
        await idle(pilot, app)
        assert app.conversation.session.turns[0].completion.params.temperature == 1.3


@pytest.mark.anyio
async def test_max_tokens_beyond_the_context_is_refused(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.panel.query_one("#max_new_tokens", Input).value = "5000"
        await pilot.pause()
        error = app.panel.query_one("#max_new_tokens-error", Label)
        assert "less than the model's context of 256" in str(error.render())
        assert app.conversation.params.max_new_tokens == 12


@pytest.mark.anyio
async def test_preset_picker_sets_every_field(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        app.panel.query_one("#preset").value = "greedy"
        await until(pilot, lambda: app.conversation.params.greedy)
        params = app.conversation.params
        assert params.greedy and params.seed == 7
        assert app.panel.query_one("#do_sample", Switch).value is False
        assert app.panel.query_one("#temperature", Input).value == "0.0"


@pytest.mark.anyio
async def test_switch_model_loads_in_background(tiny_loaded, tiny_model_dir, tmp_path,
                                                monkeypatch):
    import repl.engine

    real_open = repl.engine.open_backend

    def slow_open(*args, **kwargs):  # long enough to show the UI stays live meanwhile
        time.sleep(1.0)  # (a cached llama.cpp conversion opens faster than a key press)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(repl.engine, "open_backend", slow_open)
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        old = app.conversation.generator
        await pilot.press("ctrl+l")
        assert isinstance(app.screen, ModelScreen)
        spec = app.screen.query_one(Input)
        spec.value = str(tmp_path / "missing-model")
        await pilot.press("enter")
        await until(pilot, lambda: not app.status.busy)
        assert app.conversation.generator is old  # a failed load changes nothing
        await pilot.press("ctrl+l")
        app.screen.query_one(Input).value = str(tiny_model_dir)
        await pilot.press("enter")
        assert "loading model" in app.status.busy  # the UI is live meanwhile
        await pilot.press(*"abc")
        assert app.prompt.text == "abc"
        await until(pilot, lambda: app.conversation.generator is not old)
        assert app.status.model == "tiny-gpt2" and not app.status.busy
        assert app.conversation.session.model["spec"] == str(tiny_model_dir)


@pytest.mark.anyio
async def test_new_copy_mode_and_help(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(pilot, app)
        text = app.conversation.session.turns[0].completion.text
        await pilot.press("ctrl+o")
        assert app.clipboard == text
        await pilot.press("ctrl+t")  # the tiny model has no chat template: refused
        assert app.conversation.mode == "complete"
        first_path = app.conversation.path
        await pilot.press("ctrl+n")
        assert not app.conversation.session.turns and app.transcript.last_view() is None
        assert first_path.exists() and app.conversation.path is None
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        listed = {key for key, _ in app.screen.keys}
        for binding in app.BINDINGS:
            assert (binding.key_display or binding.key) in listed
        assert {"enter", "ctrl+j"} <= listed
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@pytest.mark.anyio
async def test_command_palette_offers_every_action(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        helps = " ".join(commands.values())
        for binding in app.BINDINGS:
            if binding.action != "quit":  # Textual's own palette has Quit
                assert binding.tooltip in helps
        for name in COMMAND_NAMES.values():
            assert name in commands
        assert "Quit" in commands
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "CommandPalette"


@pytest.mark.anyio
async def test_resumed_session_shows_turns_alternatives_and_params(tiny_loaded, tmp_path):
    params = SamplingParams(temperature=1.1, seed=3, max_new_tokens=8)
    conversation = Conversation(Session(model={"spec": "x", "name": "x"}, params=params),
                                Generator(tiny_loaded), sessions_dir=tmp_path)
    for _ in conversation.submit("First prompt"):
        pass
    for _ in conversation.regenerate():
        pass
    conversation.select(0)
    path = conversation.path
    session = load_session(path)
    app = TextgenApp(tiny_loaded.info.spec, loaded=tiny_loaded, session=session,
                     session_path=path, sessions_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        view = last_view(app)
        assert view.body_text() == session.turns[0].completions[0].text
        assert "‹ 1/2 ›" in view.meta_line()
        assert app.panel.query_one("#temperature", Input).value == "1.1"
        await pilot.press("alt+right")
        assert view.body_text() == session.turns[0].completions[1].text
        await pilot.press("ctrl+r")
        await idle(pilot, app)
        assert len(load_session(path).turns[0].completions) == 3  # saved to the same file


@pytest.mark.anyio
async def test_f6_reopens_a_saved_session_from_the_picker(tiny_loaded, tmp_path):
    saved = Conversation(Session(model={"spec": "x", "name": "x"},
                                 params=SamplingParams(temperature=1.3, seed=4, max_new_tokens=6)),
                         Generator(tiny_loaded), sessions_dir=tmp_path)
    for _ in saved.submit("An old prompt"):
        pass
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(pilot, app, "A new prompt")
        current = app.conversation.path
        await pilot.press("f6")
        await until(pilot, lambda: app.screen.__class__.__name__ == "SessionPickerScreen")
        picker = app.screen.query_one(OptionList)
        picker.highlighted = picker.get_option_index(str(saved.path))
        await pilot.press("enter")
        await until(pilot, lambda: app.conversation.path == saved.path)
        assert last_view(app).body_text() == saved.session.turns[0].completion.text
        assert app.panel.query_one("#temperature", Input).value == "1.3"
        assert load_session(current).turns[0].prompt == "A new prompt"  # the other stays saved
        await pilot.press("ctrl+r")
        await idle(pilot, app)
        assert len(load_session(saved.path).turns[0].completions) == 2


@pytest.mark.anyio
async def test_app_appears_while_the_model_loads_and_runs_a_queued_prompt(tiny_model_dir,
                                                                         tmp_path):
    app = TextgenApp(str(tiny_model_dir), sessions_dir=tmp_path,
                     params=SamplingParams(seed=1, max_new_tokens=5))
    async with app.run_test(size=SIZE) as pilot:
        assert app.status.model.startswith("loading model")
        await pilot.press(*"Early", "enter")  # before the model is ready: queued, not lost
        await until(pilot, lambda: app.conversation.session.turns
                    and app.conversation.session.turns[0].completions)
        await idle(pilot, app)
        assert app.status.model == "tiny-gpt2"
        assert app.conversation.session.turns[0].prompt == "Early"


@pytest.mark.anyio
async def test_transcript_follows_the_stream_only_at_the_bottom(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path, max_new_tokens=8)
    async with app.run_test(size=(60, 16)) as pilot:
        turns = app.conversation.session.turns
        for count in (1, 2):  # long prompts make the transcript taller than the screen
            app.prompt.text = "\n".join(f"line {i}" for i in range(15))
            await pilot.press("enter")
            await until(pilot, lambda n=count: len(turns) == n and turns[-1].completions)
            await idle(pilot, app)
        transcript = app.transcript
        await pilot.pause(0.1)
        assert transcript.max_scroll_y > 0 and transcript.at_bottom()  # it followed
        transcript.scroll_home(animate=False)
        await pilot.pause()
        await pilot.press("ctrl+r")
        await idle(pilot, app)
        await pilot.pause(0.1)
        assert transcript.scroll_y == 0  # the reader was left where they were
        transcript.scroll_end(animate=False)
        await pilot.pause()
        await pilot.press("ctrl+g")
        await idle(pilot, app)
        await pilot.pause(0.1)
        assert transcript.at_bottom()


@pytest.mark.anyio
async def test_quit_during_generation_stops_and_saves(slow_loaded, tmp_path):
    app = make_app(slow_loaded, tmp_path, max_new_tokens=240)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"Hi", "enter")
        await until(pilot, lambda: app.job is not None and app.job.text)
        await pilot.press("ctrl+q")
        await until(pilot, lambda: app.job is None, what="Ctrl+Q to stop the generation")
    session = load_session(next(tmp_path.glob("*.json")))
    assert session.turns[0].completions[0].finish == "cancelled"


def test_first_screen_does_not_import_torch():
    code = ("import sys, repl.tui.app; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture
def fixed_app(tiny_loaded, tmp_path) -> TextgenApp:
    return make_app(tiny_loaded, tmp_path, max_new_tokens=16)


def mask_timings(app: TextgenApp) -> None:
    """Speeds, file names and the cursor's blink change from run to run; the layout and the
    text do not."""
    app.prompt.cursor_blink = False
    app.status.tokens_per_s = None
    app.status.saved = "saved" if app.status.saved else ""


def test_snapshot_main_screen(snap_compare, fixed_app):
    async def run_before(pilot) -> None:
        await submit(pilot, fixed_app, "The history of")
        await pilot.press("ctrl+r")
        await idle(pilot, fixed_app)
        mask_timings(fixed_app)
        await pilot.pause()

    assert snap_compare(fixed_app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_help_screen(snap_compare, fixed_app):
    async def run_before(pilot) -> None:
        mask_timings(fixed_app)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(fixed_app, terminal_size=SIZE, run_before=run_before)


def test_run_resumes_a_session_with_command_line_flags_on_top(tmp_path, monkeypatch):
    from repl.cli import build_parser
    from repl.session import save_session
    from repl.tui import app as app_module

    session = Session(model={"spec": "models/mine", "name": "mine"},
                      params=SamplingParams(temperature=1.2, top_k=7))
    path = tmp_path / "s.json"
    save_session(session, path)
    opened: list[TextgenApp] = []
    monkeypatch.setattr(app_module.TextgenApp, "run", lambda self: opened.append(self))
    args = build_parser().parse_args(["--session", str(path), "--temperature", "0.3"])
    assert app_module.run(args) == 0
    [app] = opened
    assert app.conversation.params.temperature == 0.3  # the flag wins
    assert app.conversation.params.top_k == 7  # the rest comes from the session
    assert app.spec == "models/mine"  # reopened with the model it was made with
    assert app.conversation.path == path  # and saved back to the same file
