"""Copying a completion somewhere the user can actually paste it from.

A terminal app can only *ask* the terminal to set the clipboard (OSC 52), and cannot tell
whether it did: tmux with `set-clipboard external`, and many terminals, drop the request. So
the text also goes to the system clipboard where a tool for it exists (wl-copy, xclip, xsel,
pbcopy, clip.exe), else to a file; the message says which of these happened.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# (command, the environment variable or sys.platform that says it reaches the user's clipboard)
TOOLS: tuple[tuple[list[str], str], ...] = (
    (["wl-copy"], "WAYLAND_DISPLAY"),
    (["xclip", "-selection", "clipboard"], "DISPLAY"),
    (["xsel", "--clipboard", "--input"], "DISPLAY"),
    (["pbcopy"], "darwin"),
    (["clip.exe"], "win32"),
    (["clip.exe"], "WSL_DISTRO_NAME"),
)


def _reaches_user(condition: str) -> bool:
    return sys.platform == condition if condition.islower() else bool(os.environ.get(condition))


def system_copy(text: str) -> str | None:
    """Put `text` on the system clipboard; the tool's name, or None where there is none."""
    for command, condition in TOOLS:
        if not _reaches_user(condition) or shutil.which(command[0]) is None:
            continue
        try:
            subprocess.run(command, input=text.encode("utf-8"), check=True, timeout=5,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            continue
        return command[0]
    return None


def write_copy(text: str, path: Path) -> None:
    """Write `text` to `path` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
