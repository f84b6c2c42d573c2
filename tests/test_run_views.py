"""The F5 screen's views of a run: samples at each evaluation, the timeline (F7) and the diff
(F8), each a real `textgen-train` child process on tiny models (a real training run's samples
and timeline: tests/test_train_screen.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.containers import VerticalScroll
from textual.widgets import Input, Sparkline, Static

from repl.tui.screens.run_views import DiffScreen, TimelineScreen, coloured_pieces, diff_text_args
from repl.tui.screens.train_screen import RunLog, TrainScreen, samples_content
from tests.test_timeline import make_run
from tests.test_train_screen import open_trainer
from tests.test_tui import make_app, until


def plain(renderable) -> str:
    """A rich renderable as the terminal would show it, without colours."""
    from io import StringIO

    from rich.console import Console

    console = Console(width=100, file=StringIO())
    console.print(renderable)
    return console.file.getvalue()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def run(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A finished run (checkpoints 2 and 4, final at 6) that says what it trained on."""
    folder = make_run(tmp_path, tiny_model_dir)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.txt").write_text("The lighthouse keeper counted the ships. " * 30)
    (folder / "training_args.json").write_text(json.dumps(
        {"textgen": {"model": str(tiny_model_dir), "data": {"train_files": [str(corpus)]}}}))
    return folder


def test_sample_records_are_kept_by_step_and_shown_newest_first(tmp_path):
    (tmp_path / "logs").mkdir()
    records = [{"step": 0, "eval_loss": 4.0},
               {"step": 0, "samples": [{"prompt": "The city", "text": " was\nold\x1b[2J"}]},
               {"step": 4, "samples": [{"prompt": "The city", "text": " is new"}]}]
    (tmp_path / "logs" / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "samp')  # half a line
    log = RunLog(tmp_path)
    log.poll_log()
    assert sorted(log.samples) == [0, 4] and log.perplexity and log.step == 4
    shown = samples_content(log.samples).plain
    assert shown.index("step 4") < shown.index("step 0")
    assert "The city is new" in shown and "was ⏎ old" in shown
    assert "\x1b" not in shown  # a model's escape sequence is shown, not obeyed


@pytest.mark.anyio
async def test_typing_a_finished_runs_folder_shows_its_log_and_samples(tiny_loaded, run,
                                                                        tmp_path):
    with (run / "logs" / "train.jsonl").open("a") as log:
        for step in (0, 4):
            log.write(json.dumps({"step": step, "samples": [
                {"prompt": "The history of the city", "text": f" at step {step}"}]}) + "\n")
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_trainer(pilot, app)
        screen.query_one("#train-output", Input).value = str(run)
        await pilot.pause()
        panel = str(screen.query_one("#train-samples", Static).render())
        assert panel.index("step 4") < panel.index("step 0")
        assert "The history of the city at step 4" in panel
        state = str(screen.query_one("#train-state", Static).render())
        assert state.startswith(f"run {run}: step 4") and "F7 timeline" in state
        assert screen.query_one("#train-loss", Sparkline).data == [5.5]


@pytest.mark.anyio
async def test_timeline_of_a_typed_run_then_another_seed(tiny_loaded, run,
                                                                     tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_trainer(pilot, app, output=str(run))
        await pilot.press("f7")
        await until(pilot, lambda: isinstance(app.screen, TimelineScreen))
        timeline = app.screen
        await until(pilot, lambda: timeline.result is not None or timeline.error, timeout=120)
        first = timeline.result
        assert [(s["label"], s["step"]) for s in first["stages"]] == [
            ("base", 0), ("checkpoint-2", 2), ("checkpoint-4", 4), ("final", 6)]
        await pilot.pause()
        titles = [p.border_title for p in timeline.query(".timeline-stage")]
        assert titles[1] == "checkpoint-2"
        subtitles = [p.border_subtitle for p in timeline.query(".timeline-stage")]
        assert subtitles[1] == "step 2 · val ppl 54.60"  # e^4: its own step's evaluation
        body = str(timeline.query(".timeline-stage").first(Static).render())
        assert body.startswith("The history of the city")  # the prompt, then its continuation
        timeline.query_one("#timeline-seed", Input).value = "5"
        await pilot.press("enter")  # Enter in an input generates again, with the new seed
        command = timeline.child.command
        assert command[command.index("--seed") + 1] == "5"
        assert "--format" in command and command[command.index("--format") + 1] == "json"
        # (the run itself is the one above; leaving the app stops this child)


@pytest.mark.anyio
async def test_diff_colours_the_runs_text_and_lists_tokens(tiny_loaded, run, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_trainer(pilot, app, output=str(run))
        await pilot.press("f8")
        await until(pilot, lambda: isinstance(app.screen, DiffScreen))
        diff = app.screen
        assert diff.args[1:5] == [diff.base, str(run), "--files", str(tmp_path / "corpus")]
        await until(pilot, lambda: diff.result is not None or diff.error, timeout=120)
        assert diff.error is None
        result = diff.result
        assert result["tokens"] > 100 and result["gained"] and result["lost"]
        await pilot.pause()
        panes = diff.query_one("#diff-documents", VerticalScroll).query(".diff-document")
        assert len(panes) == 1 and "notes.txt" in panes[0].border_title
        tables = plain(diff.tables)
        assert "tokens that gained most" in tables and "notes.txt" in tables
        assert repr(result["gained"][0]["token"]) in tables
        state = str(diff.query_one(".view-state", Static).render())
        assert f"{result['tokens']} tokens" in state
        await pilot.press("escape")
        assert isinstance(app.screen, TrainScreen)


def test_coloured_pieces_use_the_f2_colours():
    content = coloured_pieces([["The", 2.0], [" sea", 0.5], [" was", 0.0], [" red", -3.0]])
    assert content.plain == "The sea was red"
    styles = {content.plain[span.start:span.end]: str(span.style) for span in content.spans}
    assert styles == {"The": "bold $success", " sea": "$success", " red": "bold $error"}


def test_diff_text_comes_from_the_runs_validation_data(tmp_path):
    (tmp_path / "training_args.json").write_text(json.dumps(
        {"textgen": {"data": {"data_dir": "/data/wikitext-2-raw-v1", "train_files": []}}}))
    assert diff_text_args(tmp_path) == ["--data-dir", "/data/wikitext-2-raw-v1"]
    (tmp_path / "training_args.json").write_text(json.dumps(
        {"textgen": {"data": {"train_files": ["a"], "valid_files": ["b.txt"]}}}))
    assert diff_text_args(tmp_path) == ["--files", "b.txt"]
    (tmp_path / "training_args.json").unlink()
    assert diff_text_args(tmp_path, "notes/") == ["--files", "notes/"]


@pytest.mark.anyio
async def test_no_run_refuses_and_esc_stops_the_child(tiny_loaded, run, tmp_path):
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_trainer(pilot, app, output=str(tmp_path / "nothing-here"))
        await pilot.press("f7", "f8")
        assert app.screen is screen
        assert "No run to look at" in " ".join(n.message for n in app._notifications)
        screen.query_one("#train-output", Input).value = str(run)
        await pilot.press("f7")
        await until(pilot, lambda: isinstance(app.screen, TimelineScreen))
        timeline = app.screen
        await until(pilot, lambda: timeline.child is not None
                    and timeline.child.process is not None)
        process = timeline.child.process
        await pilot.press("escape")
        assert app.screen is screen
        assert process.wait(timeout=30) != 0  # stopped, not left running
        assert timeline.result is None
