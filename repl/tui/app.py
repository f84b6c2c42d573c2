"""The textgen TUI: a transcript, a prompt, a sampling panel and a status bar.

The app draws its first screen before torch is imported: the model loads in a thread worker and
the status bar says "loading model" until it is ready. Each generation runs in a thread worker
in which the `Controller` (repl/tui/controller.py, no Textual) consumes the `Conversation`
stream; the UI takes the accumulated text 30 times a second. Every action records into the
session and autosaves through `Conversation`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rich.console import RenderableType
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen

from repl.conversation import Conversation
from repl.ending import EXIT_SIGNALS
from repl.engine import Backend, GenerationRequest, StreamItem, TransformersBackend
from repl.errors import TextgenError
from repl.params import DEFAULT_PRESET, PARAM_NAMES, PRESETS, SamplingParams
from repl.session import (
    Completion,
    Mode,
    Session,
    Turn,
    default_sessions_dir,
    load_session,
)
from repl.settings import Settings, load_settings, save_settings, settings_path
from repl.tui import served
from repl.tui.clipboard import system_copy, write_copy
from repl.tui.controller import Controller, Job, error_text
from repl.tui.history import PromptHistory, history_path
from repl.tui.screens.compare import CompareScreen
from repl.tui.screens.dialogs import HelpScreen, ModelScreen
from repl.tui.screens.inspect_view import Choice, InspectScreen, legend
from repl.tui.screens.quit_dialog import QuitTrainingScreen
from repl.tui.screens.train_screen import TrainingRun, TrainScreen
from repl.tui.widgets.footer import FittingFooter
from repl.tui.widgets.prompt import PromptInput
from repl.tui.widgets.sampling import SamplingPanel
from repl.tui.widgets.status import StatusBar
from repl.tui.widgets.transcript import Transcript, TurnView

if TYPE_CHECKING:
    from repl.models import LoadedModel

FRAME_S = 1 / 30  # how often streamed text reaches the screen
STATUS_S = 0.5  # how often the live tokens/s and context count are refreshed

# Keys the prompt handles itself, listed in the help screen before the app's bindings.
PROMPT_KEYS = [
    ("enter", "Submit the prompt (a new turn)"),
    ("ctrl+j", "New line in the prompt (Shift+Enter too, where the terminal sends it)"),
]
EXTRA_KEYS = [
    ("ctrl+p", "Command palette: every action by name"),
    ("tab / shift+tab", "Move between the prompt, the transcript and the sampling panel"),
    ("pgup / pgdn", "Scroll the transcript (when it has focus); the view follows new text "
                    "only while it is at the bottom"),
]


# Names in the command palette (searchable), by action; the binding's tooltip is the help line.
COMMAND_NAMES = {
    "regenerate": "Regenerate",
    "page(-1)": "Previous alternative or branch",
    "page(1)": "Next alternative or branch",
    "select_turn(-1)": "Select the previous turn",
    "select_turn(1)": "Select the next turn",
    "edit('prompt')": "Edit the selected turn's prompt (a new branch)",
    "edit('reply')": "Edit the selected turn's reply (a new alternative)",
    "continue": "Continue the completion",
    "stop": "Stop generation",
    "new": "New session",
    "sampling": "Sampling panel",
    "toggle_mode": "Toggle mode: complete / chat",
    "copy": "Copy the completion",
    "switch_model": "Switch model",
    "help": "Help: every key",
    "toggle_inspect": "Inspect mode: token probabilities",
    "inspect_tokens": "Token alternatives: force a token",
    "compare": "Compare two models or parameter sets",
    "train": "Train: fine-tune a model",
    "open_session": "Open a saved session",
    "toggle_markdown": "Markdown / raw text of chat replies",
    "reset_sampling": "Reset the sampling values to the preset",
}


T = TypeVar("T")  # what a conversation edit returns

@dataclass
class ModelLoaded(Message):
    spec: str
    generator: Backend


@dataclass
class ModelFailed(Message):
    spec: str
    error: str


@dataclass
class GenerationDone(Message):
    job: Job


@dataclass
class GenerationNotice(Message):
    text: str


class TextgenApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "textgen"
    # Keys chosen to reach the app through tmux and ordinary terminals (checked with tmux
    # send-keys): no Ctrl+Enter, no Ctrl+B (tmux's prefix), nothing the prompt editor uses.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "regenerate", "Regen",
                tooltip="Generate another alternative for the selected turn (the last one "
                        "unless Alt+↑ picked another; an earlier chat turn gets a new branch)"),
        Binding("alt+left", "page(-1)", "Prev", key_display="alt+←",
                tooltip="Show the previous alternative of the selected turn, then its "
                        "previous branch"),
        Binding("alt+right", "page(1)", "Next", key_display="alt+→",
                tooltip="Show the next alternative of the selected turn, then its next branch"),
        Binding("alt+up", "select_turn(-1)", "Up", key_display="alt+↑", show=False,
                tooltip="Select the previous turn (for paging, regenerating and editing)"),
        Binding("alt+down", "select_turn(1)", "Down", key_display="alt+↓", show=False,
                tooltip="Select the next turn; past the last, the last turn again"),
        # priority: the prompt's TextArea binds F7 to "select all".
        Binding("f7", "edit('prompt')", "Edit", key_display="f7", priority=True, show=False,
                tooltip="Edit the selected turn's prompt in the prompt box; Enter generates "
                        "from there as a new branch (the old one is kept), Esc cancels"),
        Binding("f8", "edit('reply')", "Reply", key_display="f8", priority=True, show=False,
                tooltip="Edit the selected turn's reply in the prompt box; Enter keeps it as a "
                        "new alternative written by hand (Ctrl+G continues from it), Esc "
                        "cancels"),
        Binding("ctrl+g", "continue", "Cont",
                tooltip="Continue (extend) the selected alternative of the selected turn"),
        Binding("escape", "stop", "Stop",
                tooltip="Stop the running generation, keeping its text; cancel an edit (F7); "
                        "elsewhere, back to the prompt"),
        Binding("ctrl+n", "new", "New",
                tooltip="New session: clear the transcript and the prompt (the old session "
                        "stays saved)"),
        Binding("ctrl+s", "sampling", "Panel",
                tooltip="Focus the sampling panel (again: back to the prompt)"),
        Binding("ctrl+t", "toggle_mode", "Mode",
                tooltip="Switch between complete and chat mode"),
        Binding("ctrl+o", "copy", "Copy",
                tooltip="Copy the selected turn's completion to the clipboard", show=False),
        Binding("ctrl+l", "switch_model", "Model",
                tooltip="Switch model (loads in the background)"),
        Binding("f2", "toggle_inspect", "Inspect",
                tooltip="Inspect mode on/off: record each token's probability and colour the "
                        "text by it (legend in the status bar)"),
        Binding("f3", "inspect_tokens", "Tokens",
                tooltip="Token screen: move over the tokens, see each one's top 10 "
                        "alternatives, force one and resample the rest as a new alternative",
                show=False),
        Binding("f4", "compare", "Compare",
                tooltip="Compare: one prompt on two models or two parameter sets, same seed, "
                        "side by side (saved as a compare turn)", show=False),
        Binding("f5", "train", "Train",
                tooltip="Trainer: fine-tune a model in a separate process, watch loss, "
                        "perplexity and tokens/s, cancel, load the result", show=False),
        # priority: the prompt's TextArea binds F6 to "select line", which F1's list omits.
        Binding("f6", "open_session", "Open", show=False, priority=True,
                tooltip="Reopen a saved session: recent sessions with their date and first "
                        "prompt"),
        Binding("f9", "toggle_markdown", "Raw", show=False,
                tooltip="Chat replies as Markdown (code blocks highlighted) or as raw text"),
        Binding("f10", "reset_sampling", "Reset", show=False,
                tooltip="Reset every sampling value to the preset last picked (the seed "
                        "stays)"),
        Binding("f1", "help", "Help", tooltip="This list of keys"),
        Binding("ctrl+q", "quit", "Quit", priority=True,
                tooltip="Quit (a running generation is stopped and saved first)"),
    ]

    def __init__(self, spec: str = "default", *, device: str | None = None,
                 dtype: str | None = None, params: SamplingParams | None = None,
                 mode: Mode = "complete", session: Session | None = None,
                 session_path: Path | None = None, sessions_dir: Path | None = None,
                 loaded: LoadedModel | None = None, backend: str = "auto",
                 threads: int | None = None, api_key: str | None = None,
                 system: str | None = None, chat_template: str | None = None,
                 preset: str = DEFAULT_PRESET, markdown: bool = True,
                 settings_file: Path | None = None, settings_note: str | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.preset = preset
        self.markdown = markdown
        # Where the settings are remembered when the app ends (None: not remembered), and what
        # went wrong reading or writing them.
        self.settings_file = settings_file
        self.settings_note = settings_note
        self.loaded = loaded
        self.sessions_dir = sessions_dir
        if session is None:
            session = Session(model={"spec": spec, "name": spec},
                              params=params or SamplingParams())
        conversation = Conversation(session, sessions_dir=sessions_dir, path=session_path,
                                    mode=mode)
        if system is not None:
            conversation.system = system
        # The conversation, the one way models are opened (api_key: for a URL spec's server,
        # repl/engine/remote.py; --chat-template: for the model the app starts with) and the
        # running job live in the controller, which imports no Textual.
        self.controller = Controller(
            conversation, {"device": device, "dtype": dtype, "backend": backend,
                           "threads": threads, "api_key": api_key},
            (spec, chat_template) if chat_template else None)
        self.pending_generator: Backend | None = None
        self.quit_after_job = False
        self.exit_signal: int | None = None  # SIGTERM/SIGHUP ended the app
        self.queued_prompt: str | None = None  # submitted while the model was still loading
        self.loader: threading.Thread | None = None
        self._toasts_until: dict[str, float] = {}  # message -> when its toast goes away
        self._quit_asked = False
        # F7 / F8: the turn whose prompt or reply is in the prompt box, and which of the two.
        self.editing: tuple[int, str] | None = None
        self._draft = ""  # what the prompt box held before F7

    # --- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Transcript(id="transcript", markdown=self.markdown)
                yield PromptInput(PromptHistory(history_path(
                    self.sessions_dir or default_sessions_dir())), id="prompt")
            yield SamplingPanel(self.conversation.params, self.conversation.mode,
                                self.conversation.system, self.preset, id="sampling")
        yield StatusBar(id="status")
        yield FittingFooter(compact=True)

    @property
    def conversation(self) -> Conversation:
        return self.controller.conversation

    @property
    def job(self) -> Job | None:
        """The running generation, if any."""
        return self.controller.job

    @property
    def transcript(self) -> Transcript:
        return self.query_one(Transcript)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def panel(self) -> SamplingPanel:
        return self.query_one(SamplingPanel)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    def on_mount(self) -> None:
        self.transcript.load(self.conversation.session.turns)
        self.status.mode = self.conversation.mode
        self._show_path()
        self.prompt.focus()
        self._frame_timer = self.set_interval(FRAME_S, self._show_new_text, pause=True)
        self._status_shown_at = 0.0
        self._catch_exit_signals()
        if self.conversation.lock_note:
            self.notify(self.conversation.lock_note, title="Opened as a copy",
                        severity="warning", timeout=15)
        if self.settings_note:
            self.notify(self.settings_note, title="Settings", severity="warning", timeout=15)
            self.settings_note = None
        if self.loaded is not None:
            self._use_generator(TransformersBackend(self.loaded))
        else:
            self.start_load(self.spec)

    def _catch_exit_signals(self) -> None:
        """SIGTERM and SIGHUP end the app like Ctrl+Q: a running generation is stopped and kept
        (as `cancelled`) first, and the exit status is 128 + the signal's number."""
        loop = asyncio.get_running_loop()
        for signum in EXIT_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._exit_signal, signum)

    def _exit_signal(self, signum: int) -> None:
        self.exit_signal = signum
        self.call_later(self.action_quit)

    def on_unmount(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            for signum in EXIT_SIGNALS:
                loop.remove_signal_handler(signum)

    # --- model loading ------------------------------------------------------------------------

    def start_load(self, spec: str) -> None:
        """Load `spec` in the background; the chat switches to it once it is ready."""
        if self.conversation.generator is None:
            self.status.model = f"loading model {spec} …"
        else:
            self.status.busy = f"loading model {spec} …"
        # A daemon thread rather than a Textual thread worker: those run in asyncio's default
        # executor, which Python joins at exit, so Ctrl+Q during a load would wait for it.
        self.loader = threading.Thread(target=self._load_model, args=(spec,), daemon=True,
                                       name="textgen-load-model")
        self.loader.start()

    @property
    def loading(self) -> bool:
        return self.loader is not None and self.loader.is_alive()

    def _load_model(self, spec: str) -> None:
        """Loader thread: torch and transformers are imported here, never on the UI thread."""
        try:
            generator = self.controller.load_model(spec)
        except Exception as exc:  # any failure is shown, the app keeps running
            self.post_message(ModelFailed(spec, error_text(exc)))
            return
        self.post_message(ModelLoaded(spec, generator))

    @on(ModelLoaded)
    def _model_loaded(self, message: ModelLoaded) -> None:
        self.spec = message.spec
        if self.job is not None:  # swap once the running generation ends
            self.pending_generator = message.generator
            self.status.busy = f"{message.generator.info.name} ready after this generation"
            return
        first = self.conversation.generator is None
        self._use_generator(message.generator)
        if not first:  # at start-up the status bar says it; a switch deserves a word
            self.notify(message.generator.info.summary(), title="Model ready")
        if self.queued_prompt is not None:
            text, self.queued_prompt = self.queued_prompt, None
            self._submit(text)

    @on(ModelFailed)
    def _model_failed(self, message: ModelFailed) -> None:
        self.status.busy = ""
        if self.conversation.generator is None:
            self.status.model = f"no model ({message.spec} failed)"
        self.notify(f"{message.error}\nCtrl+L picks another model.",
                    title=f"Could not load {message.spec}", severity="error", timeout=15)

    def _use_generator(self, generator: Backend) -> None:
        self.conversation.set_generator(generator)
        info = generator.info
        self.status.model = info.name
        self.status.device = info.runs_on
        if info.note:  # the backend asked for could not take this model: say why, once
            self.notify(info.note, title="Backend", timeout=8)
        self.status.context_size = info.context_length
        self.status.busy = ""
        self.panel.context_length = info.context_length
        if self.conversation.mode == "chat" and not info.has_chat_template:
            self._set_mode("complete")
            self.notify(f"{info.name} has no chat template; switched to complete mode.",
                        severity="warning")

    # --- generation ---------------------------------------------------------------------------

    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        if self._refuse_while_busy() or self._refuse_invalid_params():
            return
        text = event.text
        if self.conversation.mode == "chat" and not text.strip():
            self.notify("Write a message first.", severity="warning")
            return
        if self.editing is not None:
            index, part = self.editing
            if part == "reply":
                self._edit_reply(index, text)
            else:
                self._edit(index, text)
            return
        if self.conversation.generator is None:
            self.queued_prompt = text
            self.notify("The model is still loading; your prompt runs as soon as it is ready.")
            return
        self._submit(text)

    def _submit(self, text: str) -> None:
        try:
            stream = self.conversation.submit(text, self.conversation.mode)
        except TextgenError as exc:
            self.notify(str(exc), severity="warning")
            return
        if self.prompt.text == text:  # a queued prompt may have been edited since
            self.prompt.clear()
        self.transcript.select(None)  # a new turn: the keys act on it
        view = self.transcript.add_turn(self.conversation.session.turns[-1])
        self.begin("submit", view, stream)

    def action_regenerate(self) -> None:
        self._act("regenerate", self.conversation.regenerate)

    def action_continue(self) -> None:
        self._act("continue", self.conversation.continue_)

    def _act(self, kind: str, start) -> None:
        if self._refuse_while_busy() or self._refuse_invalid_params():
            return
        index = self._turn_index()
        try:
            stream = start(index)
        except TextgenError as exc:
            self.notify(str(exc), severity="warning")
            return
        before = self.transcript.views()[index].turn
        # Regenerating an earlier chat turn puts its reply on a new branch: the turns after it
        # go with the old one, so the views from there on change.
        views = self.transcript.sync(self.conversation.session.turns)
        if views[index].turn is not before:
            kind = "submit"  # the first reply of the new branch's turn
        self.begin(kind, views[index], stream, index)

    def _turn_index(self) -> int:
        """The turn the keys act on: the selected one (Alt+Up/Down), else the last."""
        selected = self.transcript.selected
        return selected if selected is not None else len(self.conversation.session.turns) - 1

    def action_select_turn(self, delta: int) -> None:
        count = len(self.conversation.session.turns)
        if count < 2:
            self._notify_once("There is no earlier turn to select yet.")
            return
        index = max(0, min(count - 1, self._turn_index() + delta))
        self.transcript.select(index)
        self._describe(self.conversation.session.turns[index])

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """F7/F8 are priority keys (they must beat the prompt box): off while another screen is
        on top, so the trainer screen's own F7 (timeline) and F8 (diff) reach it."""
        if action == "edit" and len(self.screen_stack) > 1:
            return False
        return super().check_action(action, parameters)

    def action_edit(self, part: str) -> None:
        """F7 (`part` "prompt") / F8 ("reply"): the selected turn's text into the prompt box."""
        if len(self.screen_stack) > 1 or self._refuse_while_busy():
            return  # F7/F8 are priority keys: they reach here from the other screens too
        turns = self.conversation.session.turns
        if not turns:
            self.notify("Nothing to edit yet; submit a prompt first.", severity="warning")
            return
        index = self._turn_index()
        turn = turns[index]
        if turn.compare:
            self.notify("A comparison cannot be edited; F4 runs a new one.", severity="warning")
            return
        if part == "reply" and turn.completion is None:
            self.notify("This turn has no reply to edit yet.", severity="warning")
            return
        if self.editing is None:
            self._draft = self.prompt.text
        self.editing = (index, part)
        if part == "reply":
            assert turn.completion is not None
            self.prompt.load_text(turn.completion.text)
            self.prompt.border_title = (f"editing turn {index + 1}'s reply · Enter: keep it as "
                                        "a new alternative · Esc: cancel")
        else:
            self.prompt.load_text(turn.prompt)
            self.prompt.border_title = (f"editing turn {index + 1} · Enter: a new branch from "
                                        "here · Esc: cancel")
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.focus()

    def _end_edit(self, restore: bool) -> None:
        self.editing = None
        self.prompt.border_title = None
        if restore:
            self.prompt.load_text(self._draft)
        self._draft = ""

    def _edit_reply(self, index: int, text: str) -> None:
        edited = self._apply_edit(index, lambda: self.conversation.edit_reply(index, text))
        if edited is None:
            return
        completion, views = edited
        views[index].show()
        self._describe(views[index].turn)
        turn = views[index].turn
        self.notify(f"Kept as alternative {turn.completions.index(completion) + 1} of turn "
                    f"{index + 1}, written by hand; Ctrl+G continues from it.")
        if self.conversation.save_error:
            self.notify(self.conversation.save_error, severity="error", timeout=10)

    def _edit(self, index: int, text: str) -> None:
        if self.conversation.generator is None:
            self.notify("The model is still loading; try again in a moment.", severity="warning")
            return
        edited = self._apply_edit(index, lambda: self.conversation.edit(index, text))
        if edited is not None:
            stream, views = edited
            self.begin("submit", views[index], stream, index)

    def _apply_edit(self, index: int, edit: Callable[[], T]) -> tuple[T, list[TurnView]] | None:
        """Run a conversation edit of turn `index`; on success end the edit and show the new
        branch with that turn selected. A refusal is a warning and None."""
        try:
            result = edit()
        except TextgenError as exc:
            self.notify(str(exc), severity="warning")
            return None
        self._end_edit(restore=True)
        views = self.transcript.sync(self.conversation.session.turns)
        self.transcript.select(index, views)
        return result, views

    def _refuse_while_busy(self) -> bool:
        if self.job is not None:
            self._notify_once("A generation is running; Esc stops it.", severity="warning")
            return True
        return False

    def _notify_once(self, message: str, **kwargs) -> None:
        """A toast that is not stacked again while the same one is still on screen (keys
        pressed during a generation once stacked nine copies)."""
        timeout = kwargs.setdefault("timeout", self.NOTIFICATION_TIMEOUT)
        now = time.monotonic()
        if self._toasts_until.get(message, 0.0) > now:
            return
        self._toasts_until[message] = now + timeout
        self.notify(message, **kwargs)

    def _refuse_invalid_params(self) -> bool:
        """A sampling field that does not hold a valid value: say which, focus it, and do not
        generate (with the last valid value the user no longer sees)."""
        problem = self.panel.invalid()
        if problem is None:
            return False
        field, reason = problem
        self._notify_once(f"{reason}. Fix it (or Esc it back) before generating.",
                          title="Sampling value not valid", severity="error")
        field.focus()
        return True

    def begin(self, kind: str, view: TurnView, stream: Iterator[StreamItem],
              index: int = -1) -> None:
        """Show `stream` live in `view` while a worker reads it (the controller's job)."""
        job = self.controller.begin(kind, view)
        view.start_live(kind)
        self.status.busy = "generating · Esc stops"
        self.status.tokens_per_s = None
        self.status.finish = ""
        self._frame_timer.resume()
        self._consume(stream, job, self.controller.prompt_estimate(kind, index),
                      self.conversation.last_request)

    @work(thread=True, group="generate", exit_on_error=False)
    def _consume(self, stream: Iterator[StreamItem], job: Job, prompt_text: str,
                 request: GenerationRequest | None = None) -> None:
        """Worker thread: the controller reads the stream to its end; then the UI is told."""
        try:
            self.controller.run_job(stream, job, prompt_text, request,
                                    lambda text: self.post_message(GenerationNotice(text)))
        finally:
            self.post_message(GenerationDone(job))

    def _show_new_text(self) -> None:
        """UI thread, once a frame while generating: show the text that arrived."""
        job = self.job
        if job is None or job.view is None:
            return
        text = job.take()
        if text:
            follow = self.transcript.at_bottom()
            if job.view.add_live(text) and follow:  # not while the user scrolled up to read
                self.transcript.follow()
        # The compositor repaints the bounding box of what changed: the status bar (bottom)
        # with the transcript (top) is the whole screen, sampling panel included, so the
        # status is refreshed a few times a second rather than every frame (this took 10%
        # of decode speed at 30 frames a second).
        now = time.monotonic()
        if now - self._status_shown_at < STATUS_S:
            return
        self._status_shown_at = now
        if job.prefill is not None and job.first_chunk_at is None:
            self.status.busy = f"{job.prefill.summary()} · Esc stops"
        elif job.prefill is not None:
            job.prefill = None
            self.status.busy = "generating · Esc stops"
        rate = job.live_rate()
        if rate is not None:
            self.status.tokens_per_s = rate
        self.status.context_used = job.prompt_tokens + job.live_tokens

    @on(GenerationNotice)
    def _notice(self, message: GenerationNotice) -> None:
        self.notify(message.text, severity="warning", timeout=8)

    @on(GenerationDone)
    def _done(self, message: GenerationDone) -> None:
        job = message.job
        self._show_new_text()
        self._frame_timer.pause()
        self.controller.end()
        if job.view is not None:
            job.view.end_live()
        self.status.busy = ""
        stats = job.stats
        if stats is not None:
            self.status.tokens_per_s = stats.tokens_per_s
            self.status.context_used = stats.prompt_tokens + stats.new_tokens
            self.status.finish = stats.finish_reason
        elif job.error is not None:
            self.status.finish = "error"
        else:
            self.status.finish = "cancelled"
        if job.error is not None:
            self.notify(job.error, title="Generation failed", severity="error", timeout=10)
        if self.conversation.save_error:
            self.notify(self.conversation.save_error, severity="error", timeout=10)
        self._show_path()
        if self.pending_generator is not None:
            generator, self.pending_generator = self.pending_generator, None
            self._use_generator(generator)
            self.notify(generator.info.summary(), title="Model ready")
        if self.quit_after_job:
            self.exit(0)

    def action_stop(self) -> None:
        if self.controller.stop():
            self.status.busy = "stopping …"
        elif self.editing is not None:
            self._end_edit(restore=True)
            self.prompt.focus()
        elif not self.prompt.has_focus:
            self.prompt.focus()

    # --- alternatives, session, panel ---------------------------------------------------------

    def action_page(self, delta: int) -> None:
        if self._refuse_while_busy():
            return
        turns = self.conversation.session.turns
        index = self._turn_index()
        turn = turns[index] if turns else None
        if turn is None or (not turn.completions and turn.branch_count == 1):
            self.notify("Nothing to page through yet; submit a prompt first.",
                        severity="warning")
            return
        if len(turn.completions) == 1 and turn.branch_count == 1:
            self.notify("This turn has one alternative; Ctrl+R makes another.")
            return
        self.conversation.page(delta, index)
        views = self.transcript.sync(self.conversation.session.turns)
        views[index].show()
        self.transcript.select(index, views)  # the selection stays on the paged turn
        self._describe(self.conversation.session.turns[index])

    def _describe(self, turn: Turn) -> None:
        """The status bar describes the turn's alternative on screen."""
        completion = turn.completion
        if completion is None:
            return
        stats = completion.continuations[-1].stats if completion.continuations else (
            completion.stats)
        self.status.finish = completion.last_finish
        self.status.tokens_per_s = stats.tokens_per_s if stats else None
        self.status.context_used = stats.prompt_tokens + stats.new_tokens if stats else None

    async def action_new(self) -> None:
        if self._refuse_while_busy():
            return
        old = self.conversation
        if old.save() and old.session.turns:  # a full disk: its turns exist only here
            self.notify(f"{old.save_error}\nThe session stays open, so no turn is lost.",
                        title="Could not save", severity="error", timeout=15)
            return
        old.close()
        session = Session(model=dict(old.session.model), params=self.panel.params)
        self.controller.conversation = Conversation(session, old.generator,
                                                    sessions_dir=self.sessions_dir,
                                                    mode=old.mode)
        self.conversation.inspect = old.inspect
        self.conversation.system = old.system  # a setting, like the params: it carries over
        await self.transcript.load([])
        if self.editing is not None:  # the turn being edited belongs to the old session
            self._end_edit(restore=False)
        self.prompt.clear()
        self.prompt.focus()
        self.status.finish = ""
        self.status.context_used = None
        self.status.tokens_per_s = None
        self._show_path()
        if old.path is not None and old.session.turns:
            self.notify(f"The previous session is saved as {old.path.name}.", title="New session")

    def action_sampling(self) -> None:
        if self.panel.has_focus_within:
            self.prompt.focus()
        else:
            self.panel.first_input().focus()

    def action_toggle_mode(self) -> None:
        mode: Mode = "chat" if self.conversation.mode == "complete" else "complete"
        generator = self.conversation.generator
        if mode == "chat" and generator is not None and not generator.info.has_chat_template:
            self.notify(f"{generator.info.name} has no chat template, so it cannot chat.",
                        severity="warning")
            return
        self._set_mode(mode)

    def _set_mode(self, mode: Mode) -> None:
        self.conversation.mode = mode
        self.panel.set_mode(mode)
        self.status.mode = mode

    @on(SamplingPanel.ModeChanged)
    def _mode_changed(self, message: SamplingPanel.ModeChanged) -> None:
        generator = self.conversation.generator
        if (message.mode == "chat" and generator is not None
                and not generator.info.has_chat_template):
            self.notify(f"{generator.info.name} has no chat template, so it cannot chat.",
                        severity="warning")
            self.panel.set_mode(self.conversation.mode)
            return
        self._set_mode(message.mode)

    @on(SamplingPanel.SystemChanged)
    def _system_changed(self, message: SamplingPanel.SystemChanged) -> None:
        self.conversation.system = message.text

    @on(SamplingPanel.Changed)
    def _params_changed(self, message: SamplingPanel.Changed) -> None:
        self.conversation.params = message.params

    def action_toggle_markdown(self) -> None:
        markdown = not self.transcript.markdown
        self.transcript.set_markdown(markdown)
        self.notify("Chat replies as Markdown." if markdown else "Chat replies as raw text.")

    def action_reset_sampling(self) -> None:
        self.panel.reset_to_preset()
        self.notify(f"Sampling values reset to the {self.panel.preset} preset.")

    def settings(self) -> Settings:
        """What the next start remembers: the settings in force now."""
        return Settings(params=self.conversation.params, preset=self.panel.preset,
                        mode=self.conversation.mode, model=self.spec,
                        markdown=self.transcript.markdown)

    def exit(self, result: int | None = None, return_code: int = 0,
             message: RenderableType | None = None) -> None:
        """Every way out (Ctrl+Q, a signal, the end of a stopped generation) comes here: the
        settings are remembered first, while the widgets that hold them still exist."""
        if self.settings_file is not None and self.is_running:
            try:
                save_settings(self.settings(), self.settings_file)
            except OSError as exc:
                self.settings_note = (f"the settings could not be remembered in "
                                      f"{self.settings_file}: {exc.strerror or exc}")
        super().exit(result, return_code, message)

    def action_copy(self) -> None:
        turns = self.conversation.session.turns
        turn = turns[self._turn_index()] if turns else None
        completion = turn.completion if turn is not None else None
        if completion is None:
            self.notify("Nothing to copy yet.", severity="warning")
            return
        text = completion.text
        what = f"{len(text)} characters (alternative {turn.selected + 1})"
        self.copy_to_clipboard(text)  # OSC 52: the terminal may or may not obey it
        tool = system_copy(text)
        if tool is not None:
            self.notify(f"Copied {what} to the system clipboard ({tool}).")
            return
        path = (self.sessions_dir or default_sessions_dir()) / "copied.txt"
        try:
            write_copy(text, path)
        except OSError as exc:
            self.notify(f"Asked the terminal to copy {what} (OSC 52; tmux and some terminals "
                        f"ignore it). Writing {path} failed too: {exc}", severity="warning",
                        timeout=12)
            return
        self.notify(f"Asked the terminal to copy {what} (OSC 52; tmux and some terminals "
                    f"ignore it), and wrote them to {path}.", timeout=12)

    def action_switch_model(self) -> None:
        def chosen(spec: str | None) -> None:
            if spec:
                self.start_load(spec)

        self.push_screen(ModelScreen(self.spec), chosen)

    def action_open_session(self) -> None:
        if len(self.screen_stack) > 1 or self._refuse_while_busy():
            return  # F6 is a priority key: it reaches here from the other screens too
        from repl.tui.screens.session_picker import SessionPickerScreen

        def chosen(path: Path | None) -> None:
            if path is not None:
                self._open_session(path)

        self.push_screen(SessionPickerScreen(self.sessions_dir or default_sessions_dir()), chosen)

    def _open_session(self, path: Path) -> None:
        """Continue a saved session with the model in hand; the current one stays saved."""
        try:
            session = load_session(path)
        except TextgenError as exc:
            self.notify(str(exc), title="Cannot open the session", severity="error")
            return
        self.conversation.save()
        try:
            self.conversation.open(session, path)
        except TextgenError as exc:  # the current session could not be saved
            self.notify(str(exc), title="Cannot open the session", severity="error", timeout=15)
            return
        if self.conversation.lock_note:
            self.notify(self.conversation.lock_note, title="Opened as a copy",
                        severity="warning", timeout=15)
            self.conversation.lock_note = None
        self.panel.set_params(session.params)
        self.panel.set_system(self.conversation.system)
        self._set_mode(self.conversation.mode)
        self.transcript.load(session.turns)
        if self.editing is not None:  # the turn being edited belongs to the other session
            self._end_edit(restore=True)
        self.status.finish = ""
        self._show_path()
        self.prompt.focus()
        self.notify(f"{session.title} · {len(session.turns)} turns", title="Session opened")

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_help()))

    def key_help(self) -> list[tuple[str, str]]:
        """Every key: the prompt's own, the app's bindings, and Textual's general ones."""
        keys = list(PROMPT_KEYS)
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            keys.append((binding.key_display or binding.key,
                         binding.tooltip or binding.description))
        return keys + EXTRA_KEYS

    async def action_quit(self) -> None:
        run = self.running_training()
        if run is not None and self.exit_signal is None and not self._quit_asked:
            self._quit_asked = True  # a second Ctrl+Q quits at once (the trainer is told)

            def answered(answer: str | None) -> None:
                self._quit_asked = answer == "stop"  # while it stops, Ctrl+Q quits at once
                if answer == "stop":
                    self._quit_after_training(run)

            self.push_screen(QuitTrainingScreen(run.step, str(run.output)), answered)
            return
        if self.job is not None:
            self.quit_after_job = True
            self.action_stop()
            self.set_timer(3.0, partial(self.exit, 0))  # never hang on a stuck worker
            return
        self.exit(0)

    def _quit_after_training(self, run: TrainingRun) -> None:
        """Stop the trainer (SIGINT: it saves a checkpoint), then quit once it has exited."""
        run.cancel()
        self.status.busy = f"stopping the trainer: saving a checkpoint in {run.output} …"

        def check() -> None:
            if run.returncode is not None:
                self.call_later(self.action_quit)

        self.set_interval(0.2, check)

    def _show_path(self) -> None:
        path = self.conversation.path
        self.status.saved = f"saved {path.name}" if path is not None and path.exists() else ""

    # --- inspect (F2, F3), compare (F4), trainer (F5) ------------------------------------------

    def tokenizer_for(self, completion: Completion) -> Any:
        """The tokenizer of the model that made `completion`, if that model is loaded."""
        generator = self.conversation.generator
        if generator is None or generator.info.spec != completion.model:
            return None
        return generator.tokenizer

    def action_toggle_inspect(self) -> None:
        on = not self.conversation.inspect
        self.conversation.inspect = on
        self.status.legend = legend() if on else ""
        self.transcript.set_inspect(self.tokenizer_for if on else None)
        self.notify("Inspect on: new generations record each token's probability; F3 shows a "
                    "token's alternatives." if on else "Inspect off.")

    def action_inspect_tokens(self) -> None:
        if self._refuse_while_busy():
            return
        turn = self.conversation.last_turn
        completion = turn.completion if turn is not None else None
        if turn is None or completion is None:
            self.notify("Nothing to inspect yet; submit a prompt first.", severity="warning")
            return
        tokenizer = self.tokenizer_for(completion)
        if tokenizer is not None and completion.traces and not any(
                trace.snapshot() for _, trace in completion.traces):
            # Traced, yet empty: a remote server (repl/engine/remote.py) that sends no logprobs.
            self.notify("This server returns no token probabilities, so there is nothing to "
                        "inspect.", severity="warning")
            return
        if not completion.traces or tokenizer is None:
            self.notify("No token probabilities for this text: F2 turns inspect on, then "
                        "Ctrl+R generates an alternative with them.", severity="warning")
            return
        index = turn.selected
        title = (f"Tokens of alternative {index + 1}/{len(turn.completions)} · ←/→ token · "
                 "↑/↓ alternative · Enter forces it and resamples the rest · Esc back")

        def chosen(choice: Choice | None) -> None:
            if choice is None or self._refuse_while_busy():
                return
            try:
                stream = self.conversation.force(-1, index, *choice)
            except Exception as exc:  # TextgenError or ValueError: one line, nothing lost
                self.notify(str(exc), severity="warning")
                return
            view = self.transcript.last_view()
            if view is not None:
                self.begin("regenerate", view, stream)

        self.push_screen(InspectScreen(completion, tokenizer, title), chosen)

    def action_compare(self) -> None:
        if self._refuse_while_busy():
            return
        if self.conversation.generator is None:
            self.notify("The model is still loading; try again in a moment.", severity="warning")
            return
        self.open_compare()

    def open_compare(self, right: str | None = None, right_params: str = "") -> None:
        """Push the compare screen (the trainer screen asks for it with its new model on B)."""
        last = self.conversation.last_turn
        prompt = self.prompt.text or (last.prompt if last is not None else "")

        def closed(_: None) -> None:
            self.transcript.load(self.conversation.session.turns)
            self._show_path()

        self.push_screen(CompareScreen(self.controller, prompt, right=right,
                                       right_params=right_params), closed)

    def running_training(self) -> TrainingRun | None:
        """The F5 trainer's run while its process is alive (quitting asks first)."""
        if not self.is_screen_installed("train"):
            return None
        run = self.get_screen("train", TrainScreen).run
        return run if run is not None and run.returncode is None else None

    def action_train(self) -> None:
        if refusal := served.training_refusal():
            self.notify(refusal, title="Training is off", severity="error", timeout=10)
            return
        if not self.is_screen_installed("train"):  # installed: it lives on while hidden
            generator = self.conversation.generator
            model = generator.info.spec if generator is not None else self.spec
            self.install_screen(TrainScreen(model), "train")
        self.push_screen("train")

    @on(TrainScreen.LoadModel)
    def _load_trained(self, message: TrainScreen.LoadModel) -> None:
        self.start_load(message.path)

    @on(TrainScreen.CompareWith)
    def _compare_trained(self, message: TrainScreen.CompareWith) -> None:
        self.open_compare(right=message.path)

    # --- command palette ----------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Submit the prompt", "Run the prompt as a new turn (enter)",
                            self.prompt.action_submit)
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            if binding.action == "quit":  # Textual's palette has its own
                continue
            key = binding.key_display or binding.key
            name = COMMAND_NAMES.get(binding.action, binding.description)
            yield SystemCommand(name, f"{binding.tooltip or binding.description} ({key})",
                                partial(self.run_action, binding.action))


def run(args: argparse.Namespace) -> int:
    """`textgen` on a terminal: open the TUI (on a resumed session with --session FILE)."""
    app = build_app(args)
    result = app.run()
    status = _exit_status(app, result or 0)
    if app.loading:  # quit while a model was loading: do not wait for torch to finish
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)  # the session is saved already; the terminal is restored
    return status


def build_app(args: argparse.Namespace) -> TextgenApp:
    """The app the command line asks for. Each setting comes from the first of: a flag, the
    resumed session (--session), what the last run remembered (repl/settings.py), the default.
    A `textgen serve` tab remembers nothing (its settings are not the server user's)."""
    from repl.options import backend_options, params_from_args, read_chat_template
    from repl.serve.policy import ServedPolicy

    settings_file = settings_path() if ServedPolicy.from_env() is None else None
    remembered, settings_note = (load_settings(settings_file) if settings_file is not None
                                 else (Settings(), None))
    preset = args.preset if args.preset != DEFAULT_PRESET else remembered.preset
    params = params_from_args(args, remembered.params or PRESETS[remembered.preset])
    sessions_dir = args.sessions_dir or default_sessions_dir()
    mode: Mode = "chat" if args.chat else remembered.mode or "complete"
    spec = args.model
    if spec == "default" and remembered.model:
        spec = remembered.model
    session = None
    if args.session is not None:
        session = load_session(args.session)
        # The session's own params, with the sampling flags given on this command line on top.
        flags = {name: getattr(args, name) for name in PARAM_NAMES
                 if name != "stop" and getattr(args, name, None) is not None}
        if getattr(args, "stop", None):
            flags["stop"] = tuple(args.stop)
        params = session.params = session.params.replace(**flags)
        if session.turns and not args.chat:
            mode = session.turns[-1].mode
        if args.model == "default" and session.model.get("spec"):
            spec = session.model["spec"]  # reopen with the model it was made with
    system = getattr(args, "system", None)
    return TextgenApp(spec, params=params, mode=mode, session=session,
                      session_path=args.session, sessions_dir=sessions_dir,
                      system=system, chat_template=read_chat_template(args),
                      preset=preset, markdown=remembered.markdown,
                      settings_file=settings_file, settings_note=settings_note,
                      **backend_options(args))


def _exit_status(app: TextgenApp, result: int) -> int:
    """128 + the signal that ended the app; else 1 when the session could not be saved (after
    one more try, now that the app is gone), said on stderr; else the app's own result."""
    conversation = app.conversation
    if conversation.save_error:
        conversation.save()
    conversation.close()
    if conversation.save_error:
        print(f"textgen: the session could NOT be saved: {conversation.save_error}",
              file=sys.stderr)
    if app.settings_note:  # the settings could not be written as the app ended
        print(f"textgen: {app.settings_note}", file=sys.stderr)
    if app.exit_signal is not None:
        return 128 + app.exit_signal
    return 1 if conversation.save_error else result
