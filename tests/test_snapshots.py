"""A snapshot of every screen the TUI has besides the two in tests/test_tui.py (main, help):
chat with Markdown, the model dialog, the session picker, the token screen, compare, the trainer
and the quit-while-training dialog. Run in a fixed folder with fixed names, on the scripted
backend (the token screen on the tiny model with a fixed seed), so only real changes show.
`pytest --snapshot-update` rewrites them after an intended change."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from repl.params import SamplingParams
from repl.session import Completion, Session, Turn, save_session
from repl.tui.app import TextgenApp
from tests.test_tui_fixes import idle, ready, scripted_app, submit, until
from tests.test_tui_markdown import REPLY

SIZE = (100, 30)


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder whose paths print the same every run: models/, sessions/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "config.json").write_text("{}")
    monkeypatch.setenv("TEXTGEN_MODELS_DIR", "models")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    return tmp_path


def app_for(backend) -> TextgenApp:
    return scripted_app(backend, Path("sessions"))


async def steady(pilot, app: TextgenApp) -> None:
    """No blinking cursor, no timing or file name in the status bar, no toast (whether one is
    still up depends on how fast the machine ran the steps before)."""
    app.clear_notifications()
    for field in [*app.screen.query(Input), app.prompt]:
        field.cursor_blink = False
    app.status.tokens_per_s = None
    app.status.saved = "saved" if app.status.saved else ""
    await pilot.pause()


def test_snapshot_chat_markdown(snap_compare, scripted, here):
    app = app_for(scripted(REPLY))
    app.conversation.mode = "chat"

    async def run_before(pilot) -> None:
        await ready(pilot, app)
        await submit(pilot, app, "code please")
        view = app.transcript.last_view()
        await until(pilot, lambda: view.body.markdown is not None
                    and view.body.markdown.source == "".join(REPLY))
        await steady(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_model_dialog(snap_compare, scripted, here):
    app = app_for(scripted())

    async def run_before(pilot) -> None:
        await ready(pilot, app)
        await pilot.press("ctrl+l")
        await steady(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_session_picker(snap_compare, scripted, here):
    params = SamplingParams(seed=1)
    for day, prompt in ((1, "A story about otters"), (2, "def parse(path):")):
        created = f"2026-01-0{day}T10:00:00"
        completion = Completion(text=" and more.", params=params, seed=1, stats=None,
                                finish="eos", model="scripted", created=created)
        turn = Turn(mode="complete", prompt=prompt, completions=[completion])
        save_session(Session(model={"spec": "scripted", "name": "scripted"}, params=params,
                             turns=[turn], created=created), here / "sessions" / f"{day}.json")
    app = app_for(scripted())

    async def run_before(pilot) -> None:
        await ready(pilot, app)
        await pilot.press("f6")
        await pilot.pause()
        await steady(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_token_screen(snap_compare, tiny_loaded, here):
    app = TextgenApp("tiny", sessions_dir=Path("sessions"), loaded=tiny_loaded,
                     params=SamplingParams(seed=3, max_new_tokens=12))

    async def run_before(pilot) -> None:
        await until(pilot, lambda: app.conversation.generator is not None)
        await pilot.press("f2")
        await submit(pilot, app, "Once upon a time")
        await pilot.press("f3")
        await pilot.pause()
        await pilot.press("right", "right", "down")
        await steady(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_compare_screen(snap_compare, scripted, here):
    app = app_for(scripted())

    async def run_before(pilot) -> None:
        await ready(pilot, app)
        await pilot.press(*"Once", "f4")
        await pilot.pause()
        await steady(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_trainer_and_quit_dialog(snap_compare, scripted, here):
    from repl.tui.screens.quit_dialog import QuitTrainingScreen
    from repl.tui.screens.train_screen import TrainScreen

    app = app_for(scripted())

    async def run_before(pilot) -> None:
        await ready(pilot, app)
        await app.push_screen(TrainScreen("default", output=Path("models/ft")))
        await pilot.pause()
        await app.push_screen(QuitTrainingScreen(12, "models/ft"))
        await steady(pilot, app)
        await idle(pilot, app)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
