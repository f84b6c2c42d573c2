"""What the TUI remembers between launches: the sampling values, the preset they started from,
the mode, the model and Markdown or raw text. One JSON file in the user's config directory
(repl/paths.py: `config_dir()`), written atomically when the app ends.

Command-line flags win over what is remembered (repl/tui/app.py `run`). A file that cannot be
used is never half-applied and never lost: it is moved aside to `settings.json.bad`, the app
starts with the defaults and says so in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repl.errors import TextgenError
from repl.params import DEFAULT_PRESET, PRESETS, SamplingParams
from repl.paths import config_dir
from repl.session import MODES, Mode, read_regular_file, write_atomically

FILE_NAME = "settings.json"
VERSION = 1
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Settings:
    params: SamplingParams | None = None  # None: nothing remembered, the preset's values
    preset: str = DEFAULT_PRESET  # the preset the values started from (the reset key's target)
    mode: Mode | None = None
    model: str | None = None
    markdown: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "params": self.params.to_dict() if self.params else None,
                "preset": self.preset, "mode": self.mode, "model": self.model,
                "markdown": self.markdown}

    @classmethod
    def from_dict(cls, data: Any) -> Settings:
        """ValueError with a sentence when anything in `data` is not a valid setting; keys this
        version does not know are ignored (a newer textgen may have written them)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = data.get("version")
        if version != VERSION:
            raise ValueError(f"version {version!r}, this textgen reads version {VERSION}")
        params = data.get("params")
        if params is not None and not isinstance(params, dict):
            raise ValueError("params is not an object")
        preset = data.get("preset", DEFAULT_PRESET)
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}")
        mode = data.get("mode")
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        model = data.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError("model is not a model spec")
        markdown = data.get("markdown", True)
        if not isinstance(markdown, bool):
            raise ValueError("markdown is not true or false")
        return cls(params=SamplingParams.from_dict(params) if params is not None else None,
                   preset=preset, mode=mode, model=model, markdown=markdown)


def settings_path() -> Path:
    return config_dir() / FILE_NAME


def load_settings(path: Path | None = None) -> tuple[Settings, str | None]:
    """The remembered settings (the defaults when there are none), and a one-line note when
    the file could not be used; such a file is moved to `<name>.bad`, so nothing is lost and
    the next start does not complain again."""
    path = path or settings_path()
    if not path.exists():
        return Settings(), None
    try:
        data = json.loads(read_regular_file(path, MAX_BYTES, what="settings file"))
        return Settings.from_dict(data), None
    except (TextgenError, ValueError, TypeError, RecursionError) as exc:
        problem = str(exc).removeprefix(f"{path}: ").rstrip(".")
    bad = path.with_name(path.name + ".bad")
    try:
        path.replace(bad)
        kept = f"it is kept as {bad.name}"
    except OSError:
        kept = "it was left as it is"
    return Settings(), (f"The remembered settings in {path} could not be used ({problem}); "
                        f"started with the defaults, and {kept}.")


def save_settings(settings: Settings, path: Path | None = None) -> None:
    """Write the settings atomically; OSError as raised (the caller says it in one line)."""
    path = path or settings_path()
    write_atomically(path, (json.dumps(settings.to_dict(), indent=2) + "\n").encode())
