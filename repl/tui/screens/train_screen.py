"""The trainer screen (F5): fine-tune a model from the TUI and watch it learn.

Training runs as its own process (`python -m trainer train ...`, the same as `textgen-train`),
so the UI stays live and a crash there cannot take the chat with it. The screen follows the
trainer's JSONL log (`OUTPUT/logs/train.jsonl`: loss, learning rate, validation loss per step)
and its output lines, and plots loss, validation perplexity and tokens/s as sparklines. Ctrl+X
sends the trainer SIGINT, on which it saves a checkpoint and stops (exit status 130). Beside the
plots, the greedy samples the trainer generates at every evaluation (trainer/samples.py), the
newest first. When it has finished, Ctrl+L loads the new model into the chat, F4 opens it in the
compare view, F7 shows its timeline and F8 what it changed (repl/tui/screens/run_views.py).
The screen keeps running while hidden (Esc), so F5 comes back to the same run.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Log, Sparkline, Static

from repl import paths
from repl.safe_text import neutralise
from repl.tui.screens.run_views import (
    DiffScreen,
    TimelineScreen,
    TrainerCommandError,
    base_model,
    diff_text_args,
    is_run,
)

POLL_S = 0.5
WIKITEXT_FILES = ("wiki.*.raw", "wiki.*.tokens")  # a WikiText-2 folder (the trainer checks it)


def train_command(model: str, data: Path, steps: int, lr: float | None, output: Path
                  ) -> list[str]:
    """The trainer's command line: a WikiText-2 folder goes in as --data-dir, any other
    folder's text files as --train-files."""
    if not data.is_dir():
        raise ValueError(f"the data folder {data} does not exist.")
    if steps < 1:
        raise ValueError("steps must be at least 1.")
    if lr is not None and not (0 < lr < 1):
        raise ValueError("the learning rate must be more than 0 and less than 1.")
    wikitext = any(any(data.glob(pattern)) for pattern in WIKITEXT_FILES)
    every = str(max(1, steps // 4))
    # A checkpoint at each evaluation, kept (the newest two and the best): the timeline's stages.
    command = [sys.executable, "-m", "trainer", "train", "--model", model, "--output",
               str(output), "--max-steps", str(steps), "--eval-steps", every, "--save-steps",
               every, "--keep-checkpoints", "--data-dir" if wikitext else "--train-files",
               str(data)]
    if lr is not None:
        command += ["--lr", repr(lr)]
    return command


class RunLog:
    """What a run has logged so far (`OUTPUT/logs/train.jsonl`), read a little at a time."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.log_path = output / "logs" / "train.jsonl"
        self.loss: list[float] = []
        self.perplexity: list[float] = []
        self.tokens_per_s: list[float] = []
        self.samples: dict[int, list[dict[str, str]]] = {}  # step -> the greedy samples
        self.step = 0
        self._offset = 0
        self._last: tuple[int, float] | None = None  # (tokens, time) of the previous record

    def poll_log(self) -> None:
        """Read records appended to the JSONL log since the last call."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for raw in complete.splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            self._add(record)

    def _add(self, record: dict[str, Any]) -> None:
        self.step = max(self.step, int(record.get("step", 0)))
        if "loss" in record and math.isfinite(record["loss"]):
            self.loss.append(record["loss"])
            tokens, when = record.get("tokens"), record.get("time")
            if tokens is not None and when is not None:
                if self._last is not None and when > self._last[1] and tokens > self._last[0]:
                    self.tokens_per_s.append((tokens - self._last[0]) / (when - self._last[1]))
                self._last = (tokens, when)
        if "eval_loss" in record and math.isfinite(record["eval_loss"]):
            self.perplexity.append(math.exp(min(record["eval_loss"], 50.0)))
        if isinstance(record.get("samples"), list):  # trainer/samples.py, one per evaluation
            self.samples[int(record.get("step", 0))] = [
                s for s in record["samples"] if isinstance(s, dict)]

    def report(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.output / "report.json").read_text())
        except (OSError, ValueError):
            return None


class TrainingRun(RunLog):
    """One trainer process and what it has logged so far (read by the UI thread)."""

    def __init__(self, command: list[str], output: Path) -> None:
        super().__init__(output)
        self.command = command
        self.lines: deque[str] = deque(maxlen=200)
        self.new_lines: list[str] = []
        self._lock = threading.Lock()
        env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="1")
        # Its own session: the terminal's Ctrl+C reaches the TUI, not the trainer.
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name="textgen-train-output",
                                        daemon=True)
        self._reader.start()
        atexit.register(self.cancel)  # quitting the TUI stops the trainer, checkpoint saved

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # text mode: tqdm's \r ends a line too
            line = line.rstrip()
            if line:
                with self._lock:
                    self.lines.append(line)
                    self.new_lines.append(line)

    def take_lines(self) -> list[str]:
        with self._lock:
            lines, self.new_lines = self.new_lines, []
            return lines

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def cancel(self) -> None:
        """SIGINT: the trainer saves a checkpoint after this step and exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)


def samples_content(samples: dict[int, list[dict[str, str]]]) -> Content:
    """Each evaluation's samples, the newest first: the step, then prompt (bold) and text."""
    parts: list[str | tuple[str, str]] = []
    for step in sorted(samples, reverse=True):
        parts.append((f"step {step}\n", "bold $accent"))
        for sample in samples[step]:
            prompt = neutralise(str(sample.get("prompt", "")))
            text = neutralise(str(sample.get("text", ""))).strip().replace("\n", " ⏎ ")
            parts += [(prompt, "bold"), f" {text}\n"]
        parts.append("\n")
    return Content.assemble(*parts) if parts else Content("none yet")


def default_output() -> Path:
    return paths.models_dir() / datetime.now().strftime("tui-%Y%m%d-%H%M%S")


class TrainScreen(Screen[None]):
    @dataclass
    class LoadModel(Message):
        """Ctrl+L: load the finished model (`path`) into the chat."""

        path: str

    @dataclass
    class CompareWith(Message):
        """F4: compare the finished model (`path`, side B) with the chat's."""

        path: str

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "start", "Start", tooltip="Start the fine-tune"),
        # priority: the inputs would otherwise take Ctrl+X as "cut"
        Binding("ctrl+x", "cancel", "Cancel", priority=True,
                tooltip="Stop training, keeping a checkpoint"),
        Binding("ctrl+l", "load", "Load in chat",
                tooltip="Load the finished model into the chat"),
        Binding("f4", "compare", "Compare", tooltip="Compare the finished model with the "
                                                    "chat's model"),
        Binding("f7", "timeline", "Timeline",
                tooltip="The run's timeline: one prompt and seed at step 0, each kept "
                        "checkpoint and the final model"),
        Binding("f8", "diff", "Diff", tooltip="What the run changed: its validation text "
                                              "through base and tuned, token by token"),
        Binding("escape", "app.pop_screen", "Back", tooltip="Back to the chat (training "
                                                            "goes on; F5 returns)"),
    ]

    def __init__(self, model: str, data: str = "", steps: int = 50, lr: str = "",
                 output: Path | None = None) -> None:
        super().__init__()
        self.initial = (model, data, str(steps), lr, str(output or default_output()))
        self.run: TrainingRun | None = None
        self.finished: Path | None = None  # the model directory once a run has finished
        self.cancelling = False
        self._samples_shown: tuple[int, int] = (0, 0)  # (whose log, evaluations) on screen

    def compose(self) -> ComposeResult:
        model, data, steps, lr, output = self.initial
        with Vertical(id="train"):
            yield Label("Fine-tune · runs `textgen-train train` as its own process · Ctrl+R "
                        "starts · Ctrl+X cancels (checkpoint kept) · Esc back", id="train-title")
            for label, name, value, hint in (
                    ("model", "train-model", model, "default, models/NAME, ..."),
                    ("data folder", "train-data", data,
                     "WikiText-2 folder or a folder of .txt/.md/.jsonl"),
                    ("steps", "train-steps", steps, "optimizer steps"),
                    ("learning rate", "train-lr", lr, "empty: the trainer's default"),
                    ("output", "train-output", output, "models/NAME")):
                with Horizontal(classes="train-row"):
                    yield Label(label, classes="name")
                    yield Input(value, id=name, placeholder=hint)
            yield Static("not started", id="train-state")
            with Horizontal(id="train-body"):
                with Vertical(id="train-plots"):
                    for name, title in (("loss", "training loss"),
                                        ("ppl", "validation perplexity"), ("rate", "tokens/s")):
                        yield Label(title, id=f"train-{name}-label", classes="plot-label")
                        yield Sparkline([], id=f"train-{name}", summary_function=max)
                with VerticalScroll(id="train-samples-box") as box:
                    box.border_title = "samples at each evaluation (greedy)"
                    yield Static("none yet: the trainer generates them at every evaluation",
                                 id="train-samples")
            yield Log(id="train-log", max_lines=200)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#train-data", Input).focus()
        self._timer = self.set_interval(POLL_S, self._poll, pause=True)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        if self.run is not None and self.run.returncode is None:
            self.notify("Training is running; Ctrl+X cancels it.", severity="warning")
            return
        value = {name: self.query_one(f"#train-{name}", Input).value.strip()
                 for name in ("model", "data", "steps", "lr", "output")}
        try:
            steps = int(value["steps"])
        except ValueError:
            self.notify(f"steps must be a whole number, not {value['steps']!r}.",
                        severity="error")
            return
        try:
            lr = float(value["lr"]) if value["lr"] else None
        except ValueError:
            self.notify(f"the learning rate must be a number, not {value['lr']!r}.",
                        severity="error")
            return
        output = Path(value["output"] or default_output())
        try:
            command = train_command(value["model"] or "default",
                                    Path(value["data"]).expanduser(), steps, lr, output)
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        if output.exists() and any(output.iterdir()):
            self.notify(f"{output} already exists; pick another output folder.",
                        severity="error")
            return
        self.finished = None
        self.cancelling = False
        self.query_one("#train-log", Log).clear()
        self.run = TrainingRun(command, output)
        self._show_state(f"training {output} · starting …")
        self._timer.resume()

    def _poll(self) -> None:
        run = self.run
        if run is None:
            return
        run.poll_log()
        log = self.query_one("#train-log", Log)
        for line in run.take_lines():
            log.write_line(line)
        self._show_log(run)
        code = run.returncode
        if code is None:
            if self.cancelling:
                self._show_state(f"cancelling at step {run.step}: the trainer saves a "
                                 "checkpoint after this step …")
            else:
                self._show_state(f"training {run.output} · step {run.step} · Ctrl+X cancels")
            return
        run.poll_log()
        self._timer.pause()
        if code == 0:
            self.finished = run.output
            report = run.report() or {}
            after = (report.get("validation") or {}).get("perplexity_after")
            extra = f" · validation perplexity {after:.2f}" if after else ""
            self._show_state(f"done: {run.output}{extra} · Ctrl+L loads it in the chat · "
                             "F4 compares it")
            self.notify(f"Training finished: {run.output}", title="Trainer")
        elif code == 130:
            self._show_state(f"cancelled at step {run.step}; checkpoint kept in "
                             f"{run.output}/checkpoints · Ctrl+R starts a new run")
        else:
            last = run.lines[-1] if run.lines else f"exit status {code}"
            self._show_state(f"failed: {last}")
            self.notify(last, title="Training failed", severity="error", timeout=10)

    def _show_log(self, run: RunLog) -> None:
        """Plots and samples of `run` (the live one, or a finished one being looked at)."""
        for name, data in (("loss", run.loss), ("ppl", run.perplexity),
                           ("rate", run.tokens_per_s)):
            self.query_one(f"#train-{name}", Sparkline).data = list(data)
        self._label("loss", "training loss", run.loss, "{:.3f}")
        self._label("ppl", "validation perplexity", run.perplexity, "{:.2f}")
        self._label("rate", "tokens/s", run.tokens_per_s, "{:,.0f}")
        shown = (id(run), len(run.samples))
        if shown != self._samples_shown:  # redrawn only when an evaluation was added
            self._samples_shown = shown
            self.query_one("#train-samples", Static).update(
                samples_content(run.samples) if run.samples else
                "none yet: the trainer generates them at every evaluation")

    @on(Input.Changed, "#train-output")
    def _output_changed(self, event: Input.Changed) -> None:
        """A finished run's folder typed as the output: show what it logged (F7 / F8 look at
        it too). Ignored while a run is training."""
        if self.run is not None and self.run.returncode is None:
            return
        folder = Path(event.value.strip()).expanduser() if event.value.strip() else None
        if folder is None or not folder.is_dir() or not is_run(folder):
            return
        past = RunLog(folder)
        past.poll_log()
        self._show_log(past)
        report = past.report() or {}
        after = (report.get("validation") or {}).get("perplexity_after")
        extra = f" · validation perplexity {after:.2f}" if isinstance(after, float) else ""
        self._show_state(f"run {folder}: step {past.step}{extra} · F7 timeline · F8 diff")

    def _label(self, name: str, title: str, data: list[float], fmt: str) -> None:
        text = (f"{title}: {fmt.format(data[-1])} (first {fmt.format(data[0])}, "
                f"{len(data)} points)") if data else title
        self.query_one(f"#train-{name}-label", Label).update(text)

    def _show_state(self, text: str) -> None:
        self.query_one("#train-state", Static).update(text)

    def action_cancel(self) -> None:
        if self.run is None or self.run.returncode is not None:
            self.notify("No training is running.", severity="warning")
            return
        self.run.cancel()
        self.cancelling = True
        self._poll()

    def _need_finished(self) -> Path | None:
        if self.finished is None:
            self.notify("No finished model yet: start a run and let it finish.",
                        severity="warning")
        return self.finished

    def action_load(self) -> None:
        output = self._need_finished()
        if output is not None:
            self.app.pop_screen()
            self.app.post_message(self.LoadModel(str(output)))

    def action_compare(self) -> None:
        output = self._need_finished()
        if output is not None:
            self.app.pop_screen()
            self.app.post_message(self.CompareWith(str(output)))

    def selected_run(self) -> Path | None:
        """The run F7 / F8 look at: the one that just finished, else the output folder when it
        holds a run (a past one can be looked at by typing its folder)."""
        if self.finished is not None:
            return self.finished
        typed = self.query_one("#train-output", Input).value.strip()
        folder = Path(typed).expanduser() if typed else None
        if folder is not None and folder.is_dir() and is_run(folder):
            if self.run is not None and self.run.returncode is None \
                    and folder.resolve() == self.run.output.resolve():
                self.notify("That run is still training; wait for it to finish or Ctrl+X.",
                            severity="warning")
                return None
            return folder
        self.notify("No run to look at: let a run finish, or type a run's folder in output.",
                    severity="warning")
        return None

    def action_timeline(self) -> None:
        run = self.selected_run()
        if run is not None:
            self.app.push_screen(TimelineScreen(run))

    def action_diff(self) -> None:
        run = self.selected_run()
        if run is None:
            return
        base = base_model(run)
        if base is None:
            self.notify(f"{run} does not name its base model (no report.json).",
                        severity="error")
            return
        try:
            text = diff_text_args(run, self.query_one("#train-data", Input).value.strip())
        except TrainerCommandError as exc:
            self.notify(str(exc), severity="error")
            return
        self.app.push_screen(DiffScreen(base, str(run), text))

    def stop(self) -> None:
        """On quit: cancel a running trainer so it saves its checkpoint."""
        if self.run is not None:
            self.run.cancel()
