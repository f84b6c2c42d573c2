"""The trainer screen: a real `textgen-train` process on the tiny model, followed live,
cancelled with a checkpoint kept, and its result loaded into the chat."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Sparkline, Static

from repl.tui.screens.run_views import TimelineScreen
from repl.tui.screens.train_screen import TrainScreen, train_command
from tests.test_tui import make_app, until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(
            f"Chapter {i}. The lighthouse keeper counted the ships that passed the harbour. "
            * 200)
    return folder


def test_command_picks_the_data_flag_and_checks_input(tmp_path):
    (tmp_path / "wiki").mkdir()
    (tmp_path / "wiki" / "wiki.valid.raw").write_text("x")  # even without a train file
    command = train_command("default", tmp_path / "wiki", 8, 1e-4, tmp_path / "out")
    assert command[1:4] == ["-m", "trainer", "train"]
    assert "--data-dir" in command and command[command.index("--max-steps") + 1] == "8"
    # A checkpoint at each evaluation, kept: the timeline's (F7) stages.
    assert command[command.index("--save-steps") + 1] == "2" and "--keep-checkpoints" in command
    assert command[-2:] == ["--lr", "0.0001"]
    assert "--train-files" in train_command("default", tmp_path, 8, None, tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        train_command("default", tmp_path / "nope", 8, None, tmp_path / "out")
    with pytest.raises(ValueError, match="at least 1"):
        train_command("default", tmp_path, 0, None, tmp_path / "out")


async def open_trainer(pilot, app, **fields: str) -> TrainScreen:
    await pilot.press("f5")
    await until(pilot, lambda: isinstance(app.screen, TrainScreen))
    screen = app.screen
    for name, value in fields.items():
        screen.query_one(f"#train-{name}", Input).value = value
    return screen


@pytest.mark.anyio
async def test_train_to_the_end_then_load_the_model_into_the_chat(tiny_loaded, tiny_model_dir,
                                                                   corpus, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    output = tmp_path / "ft"
    async with app.run_test(size=(110, 40)) as pilot:
        screen = await open_trainer(pilot, app, model=str(tiny_model_dir), data=str(corpus),
                                    steps="4", lr="0.001", output=str(output))
        await pilot.press("ctrl+l")  # nothing finished yet: refused with a word
        await pilot.press("f7")  # the same
        assert app.screen is screen
        await pilot.press("ctrl+r")
        await until(pilot, lambda: screen.run is not None and screen.run.returncode is not None)
        await until(pilot, lambda: screen.finished == output)
        state = str(screen.query_one("#train-state", Static).render())
        assert state.startswith("done") and "Ctrl+L" in state
        assert len(screen.query_one("#train-loss", Sparkline).data) == 4
        assert screen.run.perplexity and screen.run.tokens_per_s
        assert (output / "report.json").is_file()
        # The samples of every evaluation (before training, each --eval-steps), newest first.
        assert sorted(screen.run.samples) == [0, 1, 2, 3, 4]
        panel = str(screen.query_one("#train-samples", Static).render())
        assert panel.index("step 4") < panel.index("step 0")
        assert "The history of the city" in panel
        # F7: the timeline of this run, with the checkpoints the screen asked to keep.
        await pilot.press("f7")
        await until(pilot, lambda: isinstance(app.screen, TimelineScreen))
        timeline = app.screen
        await until(pilot, lambda: timeline.result is not None or timeline.error, timeout=120)
        assert timeline.error is None
        labels = [s["label"] for s in timeline.result["stages"]]
        assert labels[0] == "base" and labels[-1] == "final" and len(labels) >= 3
        assert all(label.startswith("checkpoint-") for label in labels[1:-1])
        await pilot.pause()
        assert [p.border_title for p in timeline.query(".timeline-stage")] == labels
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.press("ctrl+l")
        await until(pilot, lambda: app.conversation.generator.info.spec == str(output))
        assert not isinstance(app.screen, TrainScreen)
        await pilot.press("f5")  # the same screen, with its finished run
        await until(pilot, lambda: isinstance(app.screen, TrainScreen))
        assert app.screen is screen


@pytest.mark.anyio
async def test_cancel_stops_the_trainer_and_keeps_a_checkpoint(tiny_loaded, tiny_model_dir,
                                                                corpus, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    output = tmp_path / "long"
    async with app.run_test(size=(110, 40)) as pilot:
        screen = await open_trainer(pilot, app, model=str(tiny_model_dir), data=str(corpus),
                                    steps="100000", output=str(output))
        await pilot.press("ctrl+r")
        await until(pilot, lambda: screen.run is not None and len(screen.run.loss) >= 2)
        await pilot.press("ctrl+x")
        await until(pilot, lambda: screen.run.returncode is not None)
        await pilot.pause(0.6)
        assert screen.run.returncode == 130
        assert list((output / "checkpoints").glob("checkpoint-*"))
        assert "checkpoint kept" in str(screen.query_one("#train-state", Static).render())
        assert screen.finished is None


@pytest.mark.anyio
async def test_bad_input_starts_nothing(tiny_loaded, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(110, 40)) as pilot:
        screen = await open_trainer(pilot, app, data=str(tmp_path / "missing"))
        await pilot.press("ctrl+r")
        screen.query_one("#train-data", Input).value = str(tmp_path)
        screen.query_one("#train-steps", Input).value = "many"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert screen.run is None
        messages = " ".join(n.message for n in app._notifications)
        assert "does not exist" in messages and "whole number" in messages
