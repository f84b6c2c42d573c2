"""Settings remembered between TUI launches (repl/settings.py): the file, and the app started
from a command line the way `textgen` starts it (repl/tui/app.py `build_app`), on the scripted
backend. conftest points $TEXTGEN_CONFIG_DIR at a folder of each test's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input, Select

from repl.cli import build_parser
from repl.params import PRESETS, SamplingParams
from repl.paths import config_dir
from repl.settings import Settings, load_settings, save_settings, settings_path
from repl.tui.app import TextgenApp, build_app
from tests.test_tui_fixes import SIZE, ready, toasts, until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def launch(backend, tmp_path: Path, *flags: str) -> TextgenApp:
    """The app `textgen FLAGS` would open, on the scripted backend."""
    args = build_parser().parse_args([*flags, "--sessions-dir", str(tmp_path / "sessions")])
    app = build_app(args)
    app.controller.open_model = lambda spec: backend
    return app


def test_config_dir_is_the_users_own_or_the_variables(monkeypatch, tmp_path):
    monkeypatch.delenv("TEXTGEN_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "textgen"
    monkeypatch.setenv("TEXTGEN_CONFIG_DIR", str(tmp_path / "mine"))
    assert settings_path() == tmp_path / "mine" / "settings.json"


def test_settings_round_trip_atomically(config_dir):
    settings = Settings(params=SamplingParams(temperature=0.4, seed=9, stop=("###",)),
                        preset="precise", mode="chat", model="models/mine", markdown=False)
    save_settings(settings)
    assert load_settings() == (settings, None)
    assert [p.name for p in config_dir.iterdir()] == ["settings.json"]  # no temp file left
    assert load_settings(config_dir / "absent.json") == (Settings(), None)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "Expecting property name"),
    ('{"version": 99}', "version 99"),
    ('{"version": 1, "params": {"temperature": -1}}', "temperature must be 0 or more"),
    ('{"version": 1, "params": {"stop": 5}}', "not iterable"),
    ('{"version": 1, "mode": "poetry"}', "unknown mode 'poetry'"),
    ('[1, 2]', "not a JSON object"),
    ("{\x80}", "codec"),
])
def test_an_unusable_settings_file_gives_one_line_and_the_defaults(config_dir, text, problem):
    path = config_dir / "settings.json"
    path.write_bytes(text.encode("latin-1"))
    settings, note = load_settings()
    assert settings == Settings()
    assert note is not None and "\n" not in note and problem in note
    assert "kept as settings.json.bad" in note
    assert (config_dir / "settings.json.bad").read_bytes() == text.encode("latin-1")
    assert not path.exists()
    assert load_settings() == (Settings(), None)  # said once; the next start is quiet


@pytest.mark.anyio
async def test_settings_come_back_on_the_next_start_and_flags_win(scripted, tmp_path,
                                                                  config_dir):
    backend = scripted()
    app = launch(backend, tmp_path, "--model", "scripted-b")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        panel = app.panel
        panel.query_one("#preset", Select).value = "precise"
        await pilot.pause()
        panel.query_one("#top_k", Input).value = "33"
        await pilot.pause()
        await pilot.press("ctrl+t", "f9")  # chat mode, raw text
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running)
    saved = json.loads((config_dir / "settings.json").read_text())
    assert saved["model"] == "scripted-b" and saved["mode"] == "chat"
    assert saved["preset"] == "precise" and saved["markdown"] is False

    again = launch(backend, tmp_path)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot, again)
        assert again.spec == "scripted-b"
        assert again.conversation.mode == "chat" and again.panel.mode == "chat"
        assert again.conversation.params == PRESETS["precise"].replace(top_k=33)
        assert again.panel.query_one("#top_k", Input).value == "33"
        assert not again.transcript.markdown
        await pilot.press("f10")  # back to the preset the values started from
        await pilot.pause()
        assert again.conversation.params == PRESETS["precise"]
        assert again.panel.query_one("#top_k", Input).value == "20"
        assert toasts(again, "reset to the precise preset") == 1

    flagged = launch(backend, tmp_path, "--temperature", "0.9", "--model", "other")
    assert flagged.spec == "other"
    assert flagged.conversation.params == PRESETS["precise"].replace(top_k=33, temperature=0.9)
    preset = launch(backend, tmp_path, "--preset", "creative")
    assert preset.conversation.params == PRESETS["creative"] and preset.preset == "creative"


@pytest.mark.anyio
async def test_a_corrupt_settings_file_is_one_toast_and_the_defaults(scripted, tmp_path,
                                                                     config_dir):
    (config_dir / "settings.json").write_text('{"version": 1, "params": {"top_p": 7}}')
    app = launch(scripted(), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        assert app.is_running and app.conversation.params == SamplingParams()
        assert toasts(app, "could not be used (top_p must be") == 1
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running)
    assert load_settings()[0].params == SamplingParams()  # the defaults, written back
    assert "top_p" in (config_dir / "settings.json.bad").read_text()
