"""The TUI's work without its widgets: the conversation, the one way this app opens models, and
the lifecycle of a generation job. Plain Python, no Textual (a test checks): the App
(repl/tui/app.py) owns the screen and calls in here; worker threads run the blocking parts.

Every model of the app (the chat's, the Ctrl+L switch, the trainer's result, both sides of a
comparison) is opened by `Controller.load_model` / `backend_for` with the same engine options,
so no path can forget the device, dtype, backend or threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repl.conversation import Conversation
from repl.engine import (
    Backend,
    GenerationRequest,
    GenerationStats,
    Notice,
    Progress,
    StreamItem,
)
from repl.errors import TextgenError
from repl.options import use_chat_template
from repl.params import SamplingParams
from repl.tui.live import LiveText

if TYPE_CHECKING:
    from repl.tui.widgets.transcript import TurnView


@dataclass(eq=False)
class Job(LiveText):
    """One running chat generation: its live text and the turn view that shows it."""

    kind: str = "submit"  # submit | regenerate | continue
    view: TurnView | None = None


def error_text(exc: BaseException) -> str:
    """One line for the user: our own errors as they are, anything else with its type."""
    return str(exc) if isinstance(exc, TextgenError | ValueError) else (
        f"{type(exc).__name__}: {exc}")


def warm_up(generator: Backend) -> None:
    """Generate two tokens, so the generation path's lazy imports and first-call set-up happen
    in the loading worker, and not as a UI stall at the start of the user's first generation
    (measured: ~0.7 s on a busy 2-core machine without it)."""
    # Greedy: on llama.cpp it needs no torch, so the model is ready before torch is imported.
    params = SamplingParams(max_new_tokens=2, seed=0, do_sample=False, temperature=0.0)
    generator.generate(GenerationRequest(prompt="Hello", params=params))
    generator.clear_cache()  # the user's first prompt starts from an empty cache


def count_prompt(generator: Backend, text: str, request: GenerationRequest | None = None) -> int:
    """The prompt's tokens as the backend encodes `request` (chat template included), else the
    raw text's count. An estimate for the context meter: never worth failing a generation for."""
    if request is not None:
        with contextlib.suppress(Exception):
            return len(generator.encode(request)[0])
    try:
        return generator.count_tokens(text)
    except Exception:
        return 0


class Controller:
    """What the app works on: `conversation`, the running `job`, and how models are opened."""

    def __init__(self, conversation: Conversation, engine_options: dict[str, Any],
                 chat_template: tuple[str, str] | None = None) -> None:
        self.conversation = conversation
        # device, dtype, backend, threads, api_key: repl.engine.open_backend's options.
        self.engine_options = dict(engine_options)
        # --chat-template's text, for the spec it was given with (the one the app starts on).
        self.chat_template = chat_template
        self.job: Job | None = None
        self.compare_models: dict[str, Backend] = {}  # spec -> backend, kept for later compares

    # --- models -------------------------------------------------------------------------------

    def open_model(self, spec: str) -> Backend:
        """Open `spec` with this app's engine options (blocking: call it from a worker)."""
        from repl.engine import open_backend  # torch may come with it: never on the UI thread

        return open_backend(spec, **self.engine_options)

    def load_model(self, spec: str) -> Backend:
        """A model ready to chat with: opened, its chat template overridden where one was
        given for it, warmed up (blocking: call it from a worker)."""
        generator = self.open_model(spec)
        if self.chat_template is not None and self.chat_template[0] == spec:
            use_chat_template(generator, self.chat_template[1])
        warm_up(generator)
        return generator

    def backend_for(self, spec: str) -> Backend:
        """A comparison side's model: the chat's own when it is that spec, else one opened once
        the same way and kept (blocking: call it from a worker)."""
        generator = self.conversation.generator
        if generator is not None and spec == generator.info.spec:
            return generator
        if spec not in self.compare_models:
            self.compare_models[spec] = self.open_model(spec)
        return self.compare_models[spec]

    # --- generation jobs ----------------------------------------------------------------------

    def begin(self, kind: str, view: TurnView) -> Job:
        """A new job; the caller starts a worker on `run_job`."""
        self.job = Job(kind=kind, view=view)
        return self.job

    def prompt_estimate(self, kind: str, index: int = -1) -> str:
        """Text standing in for the prompt, to estimate the context used while generating."""
        session = self.conversation.session
        index %= len(session.turns)
        turn = session.turns[index]
        history = " ".join(m["content"] for m in session.chat_history(index)) \
            if turn.mode == "chat" else ""
        continuing = turn.completion.text if kind == "continue" and turn.completion else ""
        return f"{history} {turn.prompt}{continuing}"

    def run_job(self, stream: Iterator[StreamItem], job: Job, prompt_text: str,
                request: GenerationRequest | None, on_notice: Callable[[str], None]) -> None:
        """Worker thread: read the stream to its end into `job` (the Conversation records and
        saves); `on_notice` gets the engine's notices. Errors end up in `job.error`."""
        generator = self.conversation.generator
        assert generator is not None
        job.prompt_tokens = count_prompt(generator, prompt_text, request)
        try:
            for item in stream:
                if job.cancel_requested:
                    generator.cancel()  # Esc may come before the engine cleared its flag
                if isinstance(item, str):
                    job.add(item)
                elif isinstance(item, Progress):
                    job.prefill = item
                elif isinstance(item, Notice):
                    on_notice(item.message)
                elif isinstance(item, GenerationStats):
                    job.stats = item
        except Exception as exc:  # shown to the user; the app keeps running
            job.error = error_text(exc)

    def end(self) -> Job | None:
        """The job is over (the UI has shown its last text)."""
        job, self.job = self.job, None
        return job

    def stop(self) -> bool:
        """Esc: ask the running job to stop after the current token. False when none runs."""
        if self.job is None:
            return False
        self.job.cancel_requested = True
        self.conversation.cancel()
        return True

    def run_compare(self, prompt: str, sides: list[tuple[str, SamplingParams]],
                    buffers: list[LiveText], opened: Callable[[list[Backend]], None],
                    cancelled: Callable[[], bool]) -> None:
        """Worker thread: open what is missing, then stream both sides of a comparison into
        their buffers (the Conversation saves it as a compare turn). `opened` gets the two
        backends before they generate, so Esc can cancel them."""
        generators = [self.backend_for(spec) for spec, _ in sides]
        opened(generators)
        for buffer in buffers:
            buffer.meta = "waiting"
        stream = self.conversation.compare(
            prompt, list(zip(generators, [p for _, p in sides], strict=True)))
        for side, item in stream:
            if cancelled():  # Esc may come before a side's generation starts
                generators[side].cancel()
            buffer = buffers[side]
            if isinstance(item, str):
                buffer.meta = "generating … (Esc stops)"
                buffer.add(item)
            elif isinstance(item, Notice):
                buffer.meta = item.message
            elif isinstance(item, GenerationStats):
                buffer.stats = item
                buffer.meta = item.summary()
