"""The sampling panel: one input per parameter, a preset picker and the mode.

Each input is checked by `SamplingParams.with_text` (the same parser and validator as `/set` and
the command-line flags). A value that does not pass shows the validator's sentence under its
input and is not applied: the last valid parameters stay in force.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Select, Switch

from repl.params import DEFAULT_PRESET, PRESETS, SamplingParams
from repl.session import MODES, Mode

# (field, label) of the text inputs, in the order shown below the `sample` switch; seed and
# stop accept empty input.
FIELDS: tuple[tuple[str, str], ...] = (
    ("temperature", "temperature"),
    ("top_k", "top-k"),
    ("top_p", "top-p"),
    ("min_p", "min-p"),
    ("max_new_tokens", "max tokens"),
    ("repetition_penalty", "rep. penalty"),
    ("no_repeat_ngram_size", "no-repeat n"),
    ("seed", "seed"),
    ("stop", "stop"),
)


def field_text(params: SamplingParams, name: str) -> str:
    value = getattr(params, name)
    if name == "seed":
        return "" if value is None else str(value)
    if name == "stop":
        return ", ".join(value)
    if name == "do_sample":
        return "on" if value else "off"
    return str(value)


# What each input's hover text says beyond its name (formats that are not obvious).
HINTS = {
    "seed": "empty: a new random seed each time; a fixed seed gives alternative N the seed "
            "+ N - 1 (so they differ and still replay)",
    "stop": "texts that end the generation, separated by commas: `###, \\n\\n`",
}
PLACEHOLDERS = {"seed": "random", "stop": "text, text, …"}


def matching_preset(params: SamplingParams) -> str | None:
    """The preset these params equal, ignoring the seed."""
    for name, candidate in PRESETS.items():
        if candidate == params.replace(seed=None):
            return name
    return None


class ParamValidator(Validator):
    """Valid when the panel's current params accept this text for `name`."""

    def __init__(self, panel: SamplingPanel, name: str) -> None:
        super().__init__()
        self.panel = panel
        self.name = name

    def validate(self, value: str) -> ValidationResult:
        try:
            self.panel.parse(self.name, value)
        except ValueError as exc:
            return self.failure(str(exc))
        return self.success()


class SamplingPanel(VerticalScroll):
    """Edits `params`; posts `Changed` with each valid change."""

    @dataclass
    class Changed(Message):
        """A field now holds a valid value: the params with it."""

        params: SamplingParams

    @dataclass
    class ModeChanged(Message):
        mode: Mode

    @dataclass
    class SystemChanged(Message):
        """The chat system prompt was edited ("" for none)."""

        text: str

    def __init__(self, params: SamplingParams, mode: Mode = "complete", system: str = "",
                 preset: str = DEFAULT_PRESET, **kwargs) -> None:
        super().__init__(**kwargs)
        self.params = params
        self.preset = preset  # the preset last picked: what `reset_to_preset` goes back to
        self.mode: Mode = mode
        self.system = system
        self.context_length: int | None = None

    def compose(self) -> ComposeResult:
        yield Label("Sampling · Ctrl+S", id="sampling-title")
        with Horizontal(classes="row"):
            yield Label("preset", classes="name")
            yield Select([(name, name) for name in PRESETS], value=matching_preset(self.params)
                         or Select.NULL, allow_blank=True, prompt="custom", compact=True,
                         id="preset")
        with Horizontal(classes="row"):
            yield Label("mode", classes="name")
            yield Select([(m, m) for m in MODES], value=self.mode, allow_blank=False,
                         compact=True, id="mode")
        with Horizontal(classes="row"):
            yield Label("system", classes="name")
            yield Input(self.system, id="system", compact=True, placeholder="none",
                        tooltip="Chat mode's system prompt, sent before the conversation; "
                                "kept in the session")
        with Horizontal(classes="row"):
            yield Label("sample", classes="name")
            yield Switch(self.params.do_sample, animate=False, id="do_sample",
                         tooltip="do_sample: off is greedy decoding (always the likeliest "
                                 "token); Space toggles")
        for name, label in FIELDS:
            with Horizontal(classes="row"):
                yield Label(label, classes="name")
                hint = f"; {HINTS[name]}" if name in HINTS else ""
                yield Input(field_text(self.params, name), id=name, compact=True,
                            placeholder=PLACEHOLDERS.get(name, ""),
                            validators=[ParamValidator(self, name)],
                            validate_on=["changed", "submitted", "blur"], valid_empty=False,
                            tooltip=f"{name}{hint}. Enter or leaving the field applies it")
            yield Label("", id=f"{name}-error", classes="error")
        yield Label("stop: comma-separated texts", id="stop-hint", classes="hint")

    # --- parsing and applying -----------------------------------------------------------------

    def parse(self, name: str, text: str) -> SamplingParams:
        """The params with `name` set from `text`, or ValueError with the sentence to show."""
        params = self.params.with_text(name, text)
        if name == "temperature" and params.temperature > 0 and not params.do_sample:
            params = params.replace(do_sample=True)  # asking for heat means asking to sample
        if name == "max_new_tokens":
            params.check_fits(self.context_length)
        return params

    def invalid(self) -> tuple[Input, str] | None:
        """The first input whose text is not in force (it does not parse or validate), with
        the sentence that says why; None when the panel shows exactly what will be used."""
        for name, label in FIELDS:
            field = self.query_one(f"#{name}", Input)
            try:
                self.parse(name, field.value)
            except ValueError as exc:
                return field, f"{label}: {exc}"
            if not field.value.strip() and name not in ("seed", "stop"):
                return field, f"{label} is empty"
        return None

    @on(Switch.Changed, "#do_sample")
    def _sample_switched(self, event: Switch.Changed) -> None:
        event.stop()
        if event.value != self.params.do_sample:
            self._apply(self.params.replace(do_sample=event.value))

    @on(Input.Changed, "#system")
    def _system_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.value != self.system:
            self.system = event.value
            self.post_message(self.SystemChanged(event.value))

    def set_system(self, text: str) -> None:
        self.system = text
        with self.prevent(Input.Changed):
            self.query_one("#system", Input).value = text

    @on(Input.Blurred)
    def _input_left(self, event: Input.Blurred) -> None:
        """Leaving a field that is still empty says why it was not applied."""
        event.stop()
        if event.input.id != "system" and not event.value.strip():
            self._input_changed(event)

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed | Input.Blurred) -> None:
        event.stop()
        name = event.input.id or ""
        if name == "system":  # free text: `_system_changed`
            return
        error = self.query_one(f"#{name}-error", Label)
        result = event.validation_result
        typing = isinstance(event, Input.Changed)
        if typing and not event.value.strip() and name not in ("seed", "stop"):
            error.remove_class("-shown")  # mid-edit: no complaint yet, nothing applied
            return
        if result is not None and not result.is_valid:
            error.update(result.failure_descriptions[0])
            error.add_class("-shown")
            return
        error.update("")
        error.remove_class("-shown")
        params = self.parse(name, event.value)
        if params != self.params:
            self._apply(params)

    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self.preset = event.value
        if isinstance(event.value, str) and matching_preset(self.params) != event.value:
            self.set_params(PRESETS[event.value].replace(seed=self.params.seed))
            self.post_message(self.Changed(self.params))

    def reset_to_preset(self) -> None:
        """Every value back to the last picked preset's (the seed stays: presets have none)."""
        self.set_params(PRESETS[self.preset].replace(seed=self.params.seed))
        self.post_message(self.Changed(self.params))

    @on(Select.Changed, "#mode")
    def _mode_changed(self, event: Select.Changed) -> None:
        event.stop()
        mode: Mode | None = "chat" if event.value == "chat" else (
            "complete" if event.value == "complete" else None)  # the select offers these two
        if mode is not None and mode != self.mode:
            self.mode = mode
            self.post_message(self.ModeChanged(mode))

    def _apply(self, params: SamplingParams) -> None:
        self.params = params
        self._sync_preset()
        self._sync_switch()  # a temperature above 0 turns sampling on
        self.post_message(self.Changed(params))

    def _sync_switch(self) -> None:
        switch = self.query_one("#do_sample", Switch)
        if switch.value != self.params.do_sample:
            with self.prevent(Switch.Changed):
                switch.value = self.params.do_sample

    def _sync_preset(self) -> None:
        with self.prevent(Select.Changed):
            self.query_one("#preset", Select).value = matching_preset(self.params) or Select.NULL

    # --- set from outside -----------------------------------------------------------------------

    def set_params(self, params: SamplingParams) -> None:
        """Show `params` in every widget (a preset, a resumed session) without echoing back."""
        self.params = params
        with self.prevent(Input.Changed):
            for name, _ in FIELDS:
                self.query_one(f"#{name}", Input).value = field_text(params, name)
                error = self.query_one(f"#{name}-error", Label)
                error.update("")
                error.remove_class("-shown")
        self._sync_switch()
        self._sync_preset()

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        with self.prevent(Select.Changed):
            self.query_one("#mode", Select).value = mode

    def first_input(self) -> Input:
        return self.query_one("#temperature", Input)
