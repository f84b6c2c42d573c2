"""The TUI's session picker screen, on a bare app: newest first, broken files shown but disabled."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import OptionList

from repl.session import save_session, session_filename
from repl.tui.screens.session_picker import SessionPickerScreen
from tests.session_factories import sample_session


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Host(App):
    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.chosen: Path | str | None = "nothing yet"

    def on_mount(self) -> None:
        self.push_screen(SessionPickerScreen(self.folder), self.picked)

    def picked(self, path: Path | None) -> None:
        self.chosen = path


def saved_sessions(folder: Path) -> tuple[Path, Path]:
    older = sample_session()
    newer = sample_session()
    newer.id, newer.created = "fedcba987654", "2026-11-24T09:30:00+00:00"
    newer.turns[0].prompt = "A newer story"
    paths = []
    for session in (older, newer):
        paths.append(folder / session_filename(session))
        save_session(session, paths[-1])
    (folder / "20261125-broken.json").write_text("{")
    return paths[0], paths[1]


@pytest.mark.anyio
async def test_picker_lists_newest_first_and_skips_broken_files(tmp_path):
    older, _newer = saved_sessions(tmp_path)
    app = Host(tmp_path)
    async with app.run_test(size=(110, 24)) as pilot:
        await pilot.pause()
        options = app.screen.query_one(OptionList)
        rows = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert rows[0].startswith("20261125-broken.json · truncated")
        assert options.get_option_at_index(0).disabled
        assert rows[1] == ("2026-11-24 09:30  2 turns · 3 completions · SmolLM2-135M-Instruct  "
                           "A newer story")
        assert rows[2].endswith("  It")
        await pilot.press("down", "enter")  # the first selectable row is highlighted already
        await pilot.pause()
    assert app.chosen == older


@pytest.mark.anyio
async def test_picker_escape_and_empty_folder(tmp_path):
    app = Host(tmp_path / "none-yet")
    async with app.run_test() as pilot:
        await pilot.pause()
        assert app.screen.query_one("#picker-empty")
        await pilot.press("escape")
        await pilot.pause()
    assert app.chosen is None
