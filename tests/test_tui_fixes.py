"""Pilot tests of the TUI defects of issue 12, on a scripted backend (tests/conftest.py): no
model, no sleeps; a held generation is certainly running while the test presses keys."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from textual.widgets import Input, Static, Switch

from repl.params import SamplingParams
from repl.session import Completion, Forced, Turn
from repl.tui import app as app_module
from repl.tui.app import TextgenApp
from repl.tui.screens.quit_dialog import QuitTrainingScreen
from repl.tui.widgets.transcript import TurnView
from tests import waiting

SIZE = (100, 30)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def scripted_app(backend, tmp_path: Path, **params) -> TextgenApp:
    params.setdefault("seed", 7)
    params.setdefault("max_new_tokens", 12)
    app = TextgenApp("scripted", sessions_dir=tmp_path, params=SamplingParams(**params))
    app.controller.open_model = lambda spec: backend  # the app's one way to open a model
    return app


until = waiting.until  # generous limits that name what they waited for


async def ready(pilot, app: TextgenApp) -> None:
    await until(pilot, lambda: app.conversation.generator is not None)
    await pilot.pause()


async def idle(pilot, app: TextgenApp) -> None:
    await pilot.pause()
    await until(pilot, lambda: app.job is None)
    await pilot.pause()


async def submit(pilot, app: TextgenApp, text: str = "Once") -> None:
    turns = app.conversation.session.turns
    count = len(turns) + 1
    await pilot.press(*text, "enter")
    await until(pilot, lambda: len(turns) == count and turns[-1].completions)
    await idle(pilot, app)


async def start_held(pilot, app: TextgenApp, backend, text: str = "hi") -> None:
    """Submit `text` on a scripted backend that holds after its first chunk: on return a
    generation is certainly running, until `backend.release()`."""
    backend.hold = True
    await pilot.press(*text, "enter")
    await until(pilot, lambda: app.job is not None)


def toasts(app: TextgenApp, text: str) -> int:
    return sum(text in n.message for n in app._notifications)


@pytest.mark.anyio
async def test_ctrl_n_on_an_empty_transcript_twice_keeps_running(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("ctrl+n")
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.is_running and app.return_code is None
        assert len(app.transcript.query(".welcome")) == 1
        await submit(pilot, app)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert not app.transcript.query(TurnView) and len(app.transcript.query(".welcome")) == 1


@pytest.mark.anyio
async def test_invalid_sampling_value_refuses_to_generate_and_focuses_it(scripted, tmp_path):
    backend = scripted()
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        field = app.panel.query_one("#top_p", Input)
        field.value = "7"  # top-p is at most 1
        await pilot.pause()
        app.prompt.focus()
        await pilot.press("H", "i", "enter")
        await pilot.pause()
        assert not app.conversation.session.turns
        assert app.focused is field
        assert toasts(app, "top-p") == 1
        assert app.prompt.text == "Hi"  # nothing the user wrote is lost
        field.value = "0.5"
        await pilot.pause()
        app.prompt.focus()
        await pilot.press("enter")
        await until(pilot, lambda: bool(app.conversation.session.turns))
        await idle(pilot, app)
        assert backend.requests[-1].params.top_p == 0.5


@pytest.mark.anyio
async def test_transcript_keeps_following_after_the_window_shrinks(scripted, tmp_path):
    backend = scripted(["start\n"] + [f"line {i}\n" for i in range(80)])
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        backend.hold = True
        await pilot.press("G", "o", "enter")
        await until(pilot, lambda: app.job is not None and "start" in app.job.text)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        backend.release()
        await idle(pilot, app)
        await pilot.pause(0.1)
        transcript = app.transcript
        assert transcript.max_scroll_y > 20
        assert transcript.scroll_y >= transcript.max_scroll_y - 1


@pytest.mark.anyio
async def test_footer_at_80_columns_shows_no_stray_text(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        footer = app.screen.query_one("Footer")

        def shown() -> list:
            return [k for k in footer.query("FooterKey") if k.display]

        def laid_out() -> bool:
            regions = sorted((k.region for k in shown()), key=lambda r: r.x)
            return max(r.right for r in regions) <= 80 and all(
                left.right <= right.x for left, right in itertools.pairwise(regions))

        # The footer fits itself over a few layouts (a loaded machine shows the ones between,
        # keys overlapping): wait for the settled one, however slow the machine.
        await until(pilot, laid_out, what="the footer to fit 80 columns, no keys overlapping")


@pytest.mark.anyio
async def test_sample_is_a_switch_and_stop_explains_its_format(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path, do_sample=True, temperature=0.8)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        switch = app.panel.query_one("#do_sample", Switch)
        assert switch.value is True
        switch.focus()
        await pilot.press("space")
        await pilot.pause()
        assert app.conversation.params.do_sample is False
        stop = app.panel.query_one("#stop", Input)
        assert "comma" in str(stop.tooltip)
        assert "comma" in str(app.panel.query_one("#stop-hint", Static).render())
        stop.value = "###, END"
        await pilot.pause()
        assert app.conversation.params.stop == ("###", "END")


@pytest.mark.anyio
async def test_a_fixed_seed_shows_the_rule_for_later_alternatives(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path, seed=42)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await submit(pilot, app)
        for _ in range(3):
            await pilot.press("ctrl+r")
            await idle(pilot, app)
        turn = app.conversation.session.turns[0]
        assert [c.seed for c in turn.completions] == [42, 43, 44, 45]
        assert "seed 45 (= 42 + 3)" in app.transcript.last_view().meta_line()


def test_a_forced_alternative_is_marked_in_the_transcript():
    params = SamplingParams(seed=1)
    first = Completion(text=" one", params=params, seed=1, stats=None, finish="eos",
                       model="m")
    forced = Completion(text=" two", params=params, seed=2, stats=None, finish="eos",
                        model="m", forced=Forced(start=0, ids=[5], token=" two", source=0))
    turn = Turn(mode="complete", prompt="x", completions=[first, forced], selected=1)
    line = TurnView(turn, 1).meta_line()
    assert "forced ' two' (from alternative 1)" in line


@pytest.mark.anyio
async def test_copy_says_where_the_text_went(scripted, tmp_path, monkeypatch):
    app = scripted_app(scripted(["copied text"]), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await submit(pilot, app)
        monkeypatch.setattr(app_module, "system_copy", lambda text: None)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert (tmp_path / "copied.txt").read_text() == "copied text"
        assert toasts(app, "ignore it), and wrote them to") == 1
        assert not toasts(app, "Copied")
        copied: list[str] = []
        monkeypatch.setattr(app_module, "system_copy",
                            lambda text: copied.append(text) or "xclip")
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert copied == ["copied text"]
        assert toasts(app, "to the system clipboard (xclip)") == 1


@pytest.mark.anyio
async def test_quitting_while_training_asks_and_stops_the_trainer(scripted, tmp_path):
    from repl.tui.screens.train_screen import TrainingRun, TrainScreen

    app = scripted_app(scripted(), tmp_path)
    # A stand-in trainer: like textgen-train, SIGINT makes it write a checkpoint and exit.
    marker = tmp_path / "checkpoint"
    code = ("import signal, sys, time, pathlib\n"
            "def stop(*_):\n"
            f"    pathlib.Path({str(marker)!r}).write_text('saved'); sys.exit(130)\n"
            "signal.signal(signal.SIGINT, stop)\n"
            "print('ready', flush=True)\n"
            "while True: time.sleep(0.05)\n")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        screen = TrainScreen("scripted")
        app.install_screen(screen, "train")
        screen.run = TrainingRun([sys.executable, "-c", code], tmp_path / "out")
        await until(pilot, lambda: "ready" in screen.run.lines)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, QuitTrainingScreen)
        assert app.is_running
        await pilot.press("escape")  # keep working
        await pilot.pause()
        assert app.is_running and screen.run.returncode is None
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.press("s")
        await until(pilot, lambda: not app.is_running)
    assert marker.read_text() == "saved"
    assert screen.run.returncode == 130


@pytest.mark.anyio
async def test_keys_pressed_during_a_generation_show_one_toast(scripted, tmp_path):
    backend = scripted()
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await start_held(pilot, app, backend, "a")
        for _ in range(6):
            await pilot.press("ctrl+r")
        await pilot.press("ctrl+n", "alt+left")
        await pilot.pause()
        assert toasts(app, "A generation is running") == 1
        backend.release()
        await idle(pilot, app)


@pytest.mark.anyio
async def test_context_meter_counts_the_templated_chat_prompt(scripted, tmp_path):
    backend = scripted(["Hello", " there"])
    app = scripted_app(backend, tmp_path)
    app.conversation.mode = "chat"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        backend.hold = True
        await pilot.press("h", "i", "enter")
        templated = len("user: hi\nassistant: ")  # the scripted template, a token a char
        await until(pilot, lambda: app.status.context_used is not None)
        assert app.status.context_used == templated + 1  # one chunk streamed so far
        backend.release()
        await idle(pilot, app)
        assert app.status.context_used == templated + 2


@pytest.mark.anyio
async def test_a_typed_zero_width_joiner_is_kept(scripted, tmp_path):
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("👩", "\u200d", "👩", "\u200d", "👧")
        assert app.prompt.text == "👩\u200d👩\u200d👧"


@pytest.mark.anyio
async def test_up_and_down_recall_prompts_shared_with_the_plain_repl(scripted, tmp_path):
    from repl.plain import HISTORY_FILE, QuietFileHistory

    QuietFileHistory(str(tmp_path / HISTORY_FILE)).store_string("typed in --plain")
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await submit(pilot, app, "first")
        await pilot.press("d", "r", "a", "f", "t")
        await pilot.press("up")
        assert app.prompt.text == "first"
        await pilot.press("up")
        assert app.prompt.text == "typed in --plain"
        await pilot.press("up")  # the oldest stays
        assert app.prompt.text == "typed in --plain"
        await pilot.press("down", "down")
        assert app.prompt.text == "draft"
    # The plain REPL reads what the TUI added (prompt_toolkit's file format).
    strings = list(QuietFileHistory(str(tmp_path / HISTORY_FILE)).load_history_strings())
    assert strings[:2] == ["first", "typed in --plain"]


@pytest.mark.anyio
async def test_model_dialog_shows_its_whole_help_and_lists_local_models(scripted, tmp_path,
                                                                         monkeypatch):
    from textual.widgets import OptionList

    from repl.tui.screens.dialogs import ModelScreen

    models = tmp_path / "models"
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "config.json").write_text("{}")
    (models / "small.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("TEXTGEN_MODELS_DIR", str(models))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    app = scripted_app(scripted(), tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await pilot.press("ctrl+l")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ModelScreen)
        help_text = screen.query_one("#model-help", Static)
        assert help_text.size.height >= 3  # wrapped, not cut at `a .ggu`
        listed = screen.query_one("#model-list", OptionList)
        ids = [listed.get_option_at_index(i).id for i in range(listed.option_count)]
        assert ids == ["default", str(models / "mine"), str(models / "small.gguf")]
        await pilot.press("down")  # from the spec field into the list
        assert listed.has_focus
        await pilot.press("down", "enter")
        await pilot.pause()
        assert not isinstance(app.screen, ModelScreen)
        await until(pilot, lambda: app.spec == str(models / "mine"))  # and it loads


@pytest.mark.anyio
async def test_f6_picker_searches_prompts_and_completions(scripted, tmp_path):
    from textual.widgets import OptionList

    from repl.tui.screens.session_picker import SessionPickerScreen

    backend = scripted(["a reply about otters"])
    app = scripted_app(backend, tmp_path)
    async with app.run_test(size=(110, 30)) as pilot:
        await ready(pilot, app)
        await submit(pilot, app, "first story")
        first = app.conversation.path
        await pilot.press("ctrl+n")
        backend.chunks = ["nothing here"]
        await submit(pilot, app, "second story")
        await pilot.press("ctrl+n")
        await pilot.pause()
        await pilot.press("f6")
        await until(pilot, lambda: isinstance(app.screen, SessionPickerScreen))
        listed = app.screen.query_one("#picker-list", OptionList)
        assert listed.option_count == 2
        await pilot.press("slash", *"OTTERS")  # any case; completions are searched too
        await pilot.pause()
        assert listed.option_count == 1
        assert listed.get_option_at_index(0).id == str(first)
        await pilot.press("enter")
        await until(pilot, lambda: app.conversation.path == first)
        assert app.conversation.session.turns[0].prompt == "first story"


@pytest.mark.anyio
async def test_system_prompt_field_is_sent_first_and_kept_in_the_session(scripted, tmp_path):
    from repl.session import load_session

    backend = scripted()
    app = scripted_app(backend, tmp_path)
    app.conversation.mode = "chat"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        app.panel.query_one("#system", Input).value = "Answer in French."
        await pilot.pause()
        app.prompt.focus()
        await submit(pilot, app, "hi")
        messages = backend.requests[-1].messages
        assert messages[0] == {"role": "system", "content": "Answer in French."}
        assert messages[-1] == {"role": "user", "content": "hi"}
        assert load_session(app.conversation.path).extra["system"] == "Answer in French."
