"""Prompt history for the TUI's prompt box: the plain REPL's history file (prompt_toolkit's
format, `sessions/.plain-history`), so a prompt typed in either face comes back in both."""

from __future__ import annotations

from pathlib import Path


class PromptHistory:
    """Earlier prompts, oldest first, read once on first use; `add` appends to the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[str] | None = None

    @property
    def entries(self) -> list[str]:
        if self._entries is None:
            from repl.plain import QuietFileHistory

            newest_first = QuietFileHistory(str(self.path)).load_history_strings()
            self._entries = list(reversed(list(newest_first)))
        return self._entries

    def add(self, text: str) -> None:
        if not text.strip() or (self.entries and self.entries[-1] == text):
            return
        self.entries.append(text)
        from repl.plain import QuietFileHistory

        QuietFileHistory(str(self.path)).store_string(text)


def history_path(sessions_dir: Path) -> Path:
    from repl.plain import HISTORY_FILE

    return sessions_dir / HISTORY_FILE
