"""What a browser tab may do: the served app's restrictions, handed down by `textgen serve`.

`textgen serve` runs each tab's app with `$TEXTGEN_SERVED` set to a small JSON object; the app
reads it with `ServedPolicy.from_env()` (None when it runs on a terminal, unrestricted). Whoever
opens a tab is not necessarily the machine's owner, so by default a tab cannot train (the trainer
writes wherever it is told) and loads only the served model or models under `--models-dir`. (That
a tab sees only the sessions it created is the server's doing: each tab gets its own folder.)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

ENV_VAR = "TEXTGEN_SERVED"


@dataclass(frozen=True)
class ServedPolicy:
    model: str  # the spec the server was started with (a local path is absolute)
    models_dir: str | None = None  # absolute; None: the served model only
    allow_training: bool = False
    # The tabs share the server's one engine (repl/serve/engine.py): `model` is its URL, and a
    # tab cannot load another model (the engine serves one).
    shared_engine: bool = False

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServedPolicy | None:
        """The policy in `$TEXTGEN_SERVED`; a value that does not parse restricts everything."""
        raw = (os.environ if environ is None else environ).get(ENV_VAR)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(model=str(data["model"]), models_dir=data.get("models_dir") or None,
                       allow_training=data.get("allow_training") is True,
                       shared_engine=data.get("shared_engine") is True)
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(model="default")

    def training_refusal(self) -> str | None:
        if self.allow_training:
            return None
        return ("Training is off in a browser tab (the trainer writes files on the server). "
                "The server's owner can allow it with `textgen serve --allow-training`.")

    def model_refusal(self, spec: str) -> str | None:
        """None when this tab may load `spec`; otherwise why not, in one line.

        Decided from the spec's text and the real path before anything is loaded, so a refused
        spec never tells the tab whether a path outside the allowlist exists."""
        spec = spec.strip()
        if spec == self.model or (spec and _real(spec) == _real(self.model)):
            return None
        if self.shared_engine:
            name = self.model.partition("#")[2] or self.model
            return (f"{spec or '(empty)'}: the tabs of this server share one engine, which runs "
                    f"{name}, so a tab cannot load another model. The server's owner can give "
                    "each tab its own: textgen serve --engine-per-tab --models-dir DIR.")
        where = (f"models under {self.models_dir}" if self.models_dir else
                 "no other model (the server's owner can allow a folder with --models-dir)")
        refusal = f"{spec or '(empty)'}: a browser tab may load only {self.model} and {where}."
        if self.models_dir is None or not spec:
            return refusal
        if spec == "default":
            from repl.models import default_model_dir

            target = default_model_dir()
        else:
            lexical = Path(os.path.abspath(os.path.expanduser(spec)))
            if not lexical.is_relative_to(self.models_dir):
                return refusal
            target = lexical
        # The real path too: a symlink inside the folder may point anywhere.
        if not target.resolve().is_relative_to(Path(self.models_dir).resolve()):
            return refusal
        return None


def _real(spec: str) -> str:
    """A local spec's real path (a hub id or `default` as it is), for comparing specs."""
    if spec == "default":
        return spec
    path = Path(os.path.expanduser(spec))
    return str(path.resolve()) if path.exists() else spec
