"""The compare screen (F4): one prompt, two models or two parameter sets, side by side.

Each side is a model spec (`default`, `models/NAME`, ...) and parameters written as an optional
preset name followed by NAME=VALUE pairs (`greedy`, `temperature=1.2 top_k=0`), applied on top of
the session's current parameters. Both sides get the same seed. They run one after the other
(two generations would only share the same CPU cores), each streaming into its own pane, and the
result is saved in the session as a compare turn. Models other than the chat's are loaded in a
worker thread and kept for later comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label, Static

from repl.engine import Backend
from repl.params import PRESETS, SamplingParams
from repl.tui import served
from repl.tui.controller import Controller, error_text
from repl.tui.live import LiveText

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


class CompareScreen(Screen[None]):
    """Two sides' settings on top, their outputs below in two panes."""

    @dataclass
    class Done(Message):
        """The worker finished a comparison (`error`: why it failed, else None)."""

        error: str | None

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "Run", tooltip="Run the prompt on both sides"),
        Binding("escape", "stop_or_close", "Stop/Back",
                tooltip="Stop the running comparison; otherwise back to the chat"),
    ]

    def __init__(self, controller: Controller, prompt: str = "",
                 left: str | None = None, right: str | None = None,
                 right_params: str = "") -> None:
        super().__init__()
        self.controller = controller  # opens the sides' models the app's one way
        self.conversation = controller.conversation
        generator = self.conversation.generator
        current = generator.info.spec if generator is not None else "default"
        self.initial = (prompt, left or current, right or current,
                        right_params or ("" if right and right != current else "greedy"))
        self.buffers = [LiveText(), LiveText()]
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
        self.buffers = [LiveText(title=f"{'AB'[i]} · {spec} · {describe(p)}",
                                   meta="loading model …") for i, (spec, p) in enumerate(sides)]
        self.running = True
        self.cancel_requested = False
        self._timer.resume()
        self._run(prompt, sides)

    @work(thread=True, group="compare", exit_on_error=False)
    def _run(self, prompt: str, sides: list[tuple[str, SamplingParams]]) -> None:
        """Worker thread: the controller loads what is missing and streams both sides."""
        error = None
        try:
            self.controller.run_compare(prompt, sides, self.buffers, self._opened,
                                        lambda: self.cancel_requested)
        except Exception as exc:  # shown on the screen; the app keeps running
            error = error_text(exc)
        finally:
            self.post_message(self.Done(error))

    def _opened(self, generators: list[Backend]) -> None:
        self.generators = generators  # Esc cancels them

    def _refresh_panes(self) -> None:
        for side, buffer in zip("AB", self.buffers, strict=True):
            title, text, meta = buffer.read()
            self.query_one(f"#title-{side}", Static).update(Content.styled(title, "bold"))
            self.query_one(f"#text-{side}", Static).update(Content(text))
            self.query_one(f"#meta-{side}", Static).update(Content.styled(meta, "$text-muted"))

    @on(Done)
    def _done(self, message: Done) -> None:
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
