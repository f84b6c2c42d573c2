"""The compare screen (F4): one prompt, two models or two parameter sets, side by side.

Each side is a model spec (`default`, `models/NAME`, ...) and parameters written as an optional
preset name followed by NAME=VALUE pairs (`greedy`, `temperature=1.2 top_k=0`), applied on top of
the session's current parameters. Both sides get the same seed. They run one after the other
(two generations would only share the same CPU cores), each streaming into its own pane, and the
result is saved in the session as a compare turn. Models other than the chat's are loaded in a
worker thread and kept for later comparisons.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from repl.engine import Backend, GenerationStats, Notice
from repl.errors import TextgenError
from repl.params import PRESETS, SamplingParams
from repl.tui import served

if TYPE_CHECKING:
    from repl.conversation import Conversation

FRAME_S = 1 / 20


def parse_side_params(text: str, base: SamplingParams) -> SamplingParams:
    """`[preset] [name=value ...]` on top of `base`; ValueError with a plain sentence."""
    params = base
    for word in text.split():
        if "=" in word:
            name, _, value = word.partition("=")
            params = params.with_text(name, value)
        elif word in PRESETS:
            params = PRESETS[word].replace(seed=params.seed,
                                           max_new_tokens=params.max_new_tokens)
        else:
            raise ValueError(f"{word!r} is neither a preset ({', '.join(PRESETS)}) nor "
                             "NAME=VALUE.")
    return params


def describe(params: SamplingParams) -> str:
    if params.greedy:
        sampling = "greedy"
    else:
        sampling = f"temp {params.temperature:g} top_k {params.top_k} top_p {params.top_p:g}"
        if params.min_p:
            sampling += f" min_p {params.min_p:g}"
    return f"{sampling} · rep {params.repetition_penalty:g} · {params.max_new_tokens} tokens"


@dataclass(eq=False)
class SideBuffer:
    """Text of one side, written by the worker and read by the UI each frame."""

    title: str = ""
    text: str = ""
    meta: str = "waiting"
    stats: GenerationStats | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, chunk: str) -> None:
        with self._lock:
            self.text += chunk

    def read(self) -> tuple[str, str, str]:
        with self._lock:
            return self.title, self.text, self.meta


class CompareDone(Message):
    def __init__(self, error: str | None) -> None:
        super().__init__()
        self.error = error


class CompareScreen(Screen[None]):
    """Two sides' settings on top, their outputs below in two panes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "Run", tooltip="Run the prompt on both sides"),
        Binding("escape", "stop_or_close", "Stop/Back",
                tooltip="Stop the running comparison; otherwise back to the chat"),
    ]

    def __init__(self, conversation: Conversation, models: dict[str, Backend],
                 open_model: Callable[[str], Backend], prompt: str = "",
                 left: str | None = None, right: str | None = None,
                 right_params: str = "") -> None:
        super().__init__()
        self.conversation = conversation
        self.models = models  # spec -> opened backend, shared with the app
        self.open_model = open_model  # the app's one way of opening a model
        generator = conversation.generator
        current = generator.info.spec if generator is not None else "default"
        self.initial = (prompt, left or current, right or current,
                        right_params or ("" if right and right != current else "greedy"))
        self.buffers = [SideBuffer(), SideBuffer()]
        self.generators: list[Backend] = []
        self.running = False
        self.cancel_requested = False
        self.runs = 0  # comparisons finished (or failed) on this screen

    def compose(self) -> ComposeResult:
        prompt, left, right, right_params = self.initial
        with Vertical(id="compare"):
            yield Label("Compare · one prompt on two models or two parameter sets, same seed · "
                        "Enter or Ctrl+R runs · Esc stops / goes back", id="compare-title")
            for side, spec, params in (("A", left, ""), ("B", right, right_params)):
                with Horizontal(classes="compare-side"):
                    yield Label(f"{side} model", classes="name")
                    yield Input(spec, id=f"model-{side}", classes="spec")
                    yield Label("params", classes="name")
                    yield Input(params, id=f"params-{side}",
                                placeholder="preset and/or name=value …  (empty: current)")
            yield Input(prompt, id="compare-prompt", placeholder="Prompt · Enter runs")
            with Horizontal(id="compare-panes"):
                for side in "AB":
                    with VerticalScroll(classes="compare-pane", id=f"pane-{side}"):
                        yield Static("", classes="pane-title", id=f"title-{side}")
                        yield Static("", classes="pane-text", id=f"text-{side}")
                        yield Static("", classes="pane-meta", id=f"meta-{side}")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#compare-prompt", Input).focus()
        self._timer = self.set_interval(FRAME_S, self._refresh_panes, pause=True)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_run()

    def action_run(self) -> None:
        if self.running:
            self.notify("A comparison is running; Esc stops it.", severity="warning")
            return
        prompt = self.query_one("#compare-prompt", Input).value
        base = self.conversation.params
        try:
            sides = [(self.query_one(f"#model-{s}", Input).value.strip() or "default",
                      parse_side_params(self.query_one(f"#params-{s}", Input).value, base))
                     for s in "AB"]
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        if self.conversation.mode == "chat" and not prompt.strip():
            self.notify("Write a message first.", severity="warning")
            return
        for spec, _ in sides:
            if refusal := served.model_refusal(spec):
                self.notify(refusal, title="Not allowed here", severity="error", timeout=10)
                return
        self.buffers = [SideBuffer(title=f"{'AB'[i]} · {spec} · {describe(p)}",
                                   meta="loading model …") for i, (spec, p) in enumerate(sides)]
        self.running = True
        self.cancel_requested = False
        self._timer.resume()
        self._run(prompt, sides)

    @work(thread=True, group="compare", exit_on_error=False)
    def _run(self, prompt: str, sides: list[tuple[str, SamplingParams]]) -> None:
        """Worker thread: load what is missing, then stream both sides into their buffers."""
        error = None
        try:
            self.generators = [self._backend(spec) for spec, _ in sides]
            for buffer in self.buffers:
                buffer.meta = "waiting"
            stream = self.conversation.compare(
                prompt, list(zip(self.generators, [p for _, p in sides], strict=True)))
            for side, item in stream:
                if self.cancel_requested:  # Esc may come before a side's generation starts
                    self.generators[side].cancel()
                buffer = self.buffers[side]
                if isinstance(item, str):
                    buffer.meta = "generating … (Esc stops)"
                    buffer.add(item)
                elif isinstance(item, Notice):
                    buffer.meta = item.message
                elif isinstance(item, GenerationStats):
                    buffer.stats = item
                    buffer.meta = item.summary()
        except Exception as exc:  # shown on the screen; the app keeps running
            error = str(exc) if isinstance(exc, TextgenError | ValueError) else (
                f"{type(exc).__name__}: {exc}")
        finally:
            self.post_message(CompareDone(error))

    def _backend(self, spec: str) -> Backend:
        generator = self.conversation.generator
        if generator is not None and spec == generator.info.spec:
            return generator
        if spec not in self.models:
            self.models[spec] = self.open_model(spec)
        return self.models[spec]

    def _refresh_panes(self) -> None:
        for side, buffer in zip("AB", self.buffers, strict=True):
            title, text, meta = buffer.read()
            self.query_one(f"#title-{side}", Static).update(Content.styled(title, "bold"))
            self.query_one(f"#text-{side}", Static).update(Content(text))
            self.query_one(f"#meta-{side}", Static).update(Content.styled(meta, "$text-muted"))

    @on(CompareDone)
    def _done(self, message: CompareDone) -> None:
        self.running = False
        self._timer.pause()
        self._refresh_panes()
        self.generators = []
        self.runs += 1
        if message.error:
            self.notify(message.error, title="Comparison failed", severity="error", timeout=10)

    def action_stop_or_close(self) -> None:
        if self.running:
            self.cancel_requested = True
            for generator in self.generators:
                generator.cancel()
            return
        self.dismiss(None)


class CompareActions:
    """The app's compare action (mixed into TextgenApp)."""

    def action_compare(self) -> None:
        app: Any = self
        if app._refuse_while_busy():
            return
        if app.conversation.generator is None:
            app.notify("The model is still loading; try again in a moment.", severity="warning")
            return
        self.open_compare()

    def open_compare(self, right: str | None = None, right_params: str = "") -> None:
        """Push the compare screen (the trainer screen opens it with its new model on B)."""
        app: Any = self
        models = app.__dict__.setdefault("compare_models", {})
        last = app.conversation.last_turn
        prompt = app.prompt.text or (last.prompt if last is not None else "")

        def closed(_: None) -> None:
            app.transcript.load(app.conversation.session.turns)
            app._show_path()

        app.push_screen(CompareScreen(app.conversation, models, app.open_model, prompt,
                                      right=right, right_params=right_params), closed)
