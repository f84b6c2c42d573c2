"""A browser tab's app (`textgen serve` sets $TEXTGEN_SERVED): pilot tests of what it refuses,
and the session picker that no file in the folder can take down."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList

from repl.serve.policy import ENV_VAR, ServedPolicy
from repl.session import save_session, session_filename
from repl.tui.screens.compare import CompareScreen
from repl.tui.screens.dialogs import ModelScreen
from repl.tui.screens.session_picker import SessionPickerScreen, session_options
from repl.tui.screens.train_screen import TrainScreen
from tests.session_factories import sample_session
from tests.test_tui import make_app, until

SIZE = (120, 34)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def models_dir(tmp_path, tiny_model_dir) -> Path:
    folder = tmp_path / "allowed"
    shutil.copytree(tiny_model_dir, folder / "copy")
    (folder / "escape").symlink_to(tiny_model_dir.parent)  # inside, but pointing outside
    return folder


def serve_env(monkeypatch, tiny_loaded, models_dir: Path | None = None, **flags) -> None:
    policy = ServedPolicy(model=tiny_loaded.info.spec,
                          models_dir=str(models_dir.resolve()) if models_dir else None, **flags)
    monkeypatch.setenv(ENV_VAR, policy.to_env())


def errors(app) -> str:
    return " ".join(n.message for n in app._notifications if n.severity == "error")


@pytest.mark.anyio
async def test_a_served_tab_cannot_train(tiny_loaded, tmp_path, monkeypatch):
    serve_env(monkeypatch, tiny_loaded)
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await until(pilot, lambda: "Training is off in a browser tab" in errors(app))
        assert not isinstance(app.screen, TrainScreen)
        assert "--allow-training" in errors(app)


@pytest.mark.anyio
async def test_allow_training_opens_the_trainer(tiny_loaded, tmp_path, monkeypatch):
    serve_env(monkeypatch, tiny_loaded, allow_training=True)
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await until(pilot, lambda: isinstance(app.screen, TrainScreen))


async def switch_to(pilot, app, spec: str) -> None:
    await pilot.press("ctrl+l")
    await until(pilot, lambda: isinstance(app.screen, ModelScreen))
    app.screen.query_one("#model-spec", Input).value = spec
    await pilot.press("enter")
    await pilot.pause()


@pytest.mark.anyio
async def test_a_served_tab_loads_only_allowed_models(tiny_loaded, tmp_path, monkeypatch,
                                                      models_dir):
    serve_env(monkeypatch, tiny_loaded, models_dir)
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        refused = [str(tmp_path), "/etc", "/no/such/place", str(models_dir / "escape"),
                   str(models_dir / ".." / "x"), "gpt2", "../../etc"]
        for spec in refused:
            await switch_to(pilot, app, spec)
            # The dialog stays open with the refusal; nothing loads, nothing is probed.
            assert isinstance(app.screen, ModelScreen), spec
            assert "a browser tab may load only" in errors(app), spec
            assert "no such" not in errors(app), spec
            app._notifications.clear()
            await pilot.press("escape")
            await pilot.pause()
        assert not app.loading
        await switch_to(pilot, app, str(models_dir / "copy"))  # inside the allowlist: loads
        await until(pilot, lambda: not isinstance(app.screen, ModelScreen))
        assert errors(app) == ""


@pytest.mark.anyio
async def test_compare_in_a_served_tab_refuses_models_outside_the_allowlist(
        tiny_loaded, tmp_path, monkeypatch, models_dir):
    serve_env(monkeypatch, tiny_loaded, models_dir)
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        screen.query_one("#model-B", Input).value = "/etc"
        screen.query_one("#compare-prompt", Input).value = "The river"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "a browser tab may load only" in errors(app))
        assert not screen.running and app.conversation.session.turns == []


@pytest.mark.anyio
async def test_a_tab_on_the_shared_engine_says_it_cannot_switch(tiny_loaded, tmp_path,
                                                                 monkeypatch, models_dir):
    """With one engine for all tabs the switch refuses every other model, even one that would
    be allowed with an engine per tab, and says how the owner can allow it."""
    url = "http://127.0.0.1:9/v1#tiny-gpt2"
    monkeypatch.setenv(ENV_VAR, ServedPolicy(model=url, shared_engine=True).to_env())
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        for spec in (str(models_dir / "copy"), tiny_loaded.info.spec, "default", "/etc"):
            await switch_to(pilot, app, spec)
            assert isinstance(app.screen, ModelScreen), spec
            message = errors(app)
            assert "share one engine, which runs tiny-gpt2" in message, spec
            assert "--engine-per-tab --models-dir" in message and "no such" not in message
            app._notifications.clear()
            await pilot.press("escape")
            await pilot.pause()
        assert not app.loading
    # The engine's own URL is the one model a tab may (re)open.
    assert ServedPolicy.from_env({ENV_VAR: ServedPolicy(model=url, shared_engine=True)
                                  .to_env()}).model_refusal(url) is None


def test_unserved_apps_are_not_restricted(monkeypatch):
    from repl.tui import served

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert served.training_refusal() is None and served.model_refusal("/etc") is None
    monkeypatch.setenv(ENV_VAR, "not json")  # a garbled policy restricts everything
    assert served.training_refusal() and served.model_refusal("/etc")


# --- the session picker -------------------------------------------------------------------------

def folder_with_a_lone_surrogate(folder: Path) -> tuple[Path, Path]:
    good = sample_session()
    good_path = folder / session_filename(good)
    save_session(good, good_path)
    bad = sample_session().to_dict()
    bad["id"] = "badbadbadbad"
    bad["turns"][0]["prompt"] = "\ud800 broken title"
    bad_path = folder / "20261201-000000-badbadbadbad.json"
    # json writes the lone surrogate as the escape \ud800: valid JSON, invalid Unicode.
    bad_path.write_text(json.dumps(bad))
    (folder / "20261201-000001-ctrl.json").write_bytes(
        json.dumps({**sample_session().to_dict(), "id": "ctrlctrlctrl"})
        .replace("It", "\\u001b]52;c;aGk=\\u0007It", 1).encode())
    return good_path, bad_path


def test_the_picker_reports_a_file_no_terminal_can_draw_and_lists_the_rest(tmp_path):
    good, bad = folder_with_a_lone_surrogate(tmp_path)
    options = {option.id: option for option in session_options(tmp_path)}
    assert len(options) == 3
    assert options[str(bad)].disabled
    assert "lone surrogate U+D800" in str(options[str(bad)].prompt)
    assert not options[str(good)].disabled
    for option in options.values():  # every row can be drawn: no surrogate, no escape
        text = str(option.prompt)
        text.encode("utf-8")
        assert "\x1b" not in text and "\x07" not in text


@pytest.mark.anyio
async def test_f6_opens_the_picker_over_a_broken_folder_and_opens_a_good_session(
        tiny_loaded, tmp_path, monkeypatch):
    serve_env(monkeypatch, tiny_loaded)
    good, _ = folder_with_a_lone_surrogate(tmp_path)
    (tmp_path / "20261201-000002-huge.json").write_text('{"version": 1, "turns": [' * 5000)
    app = make_app(tiny_loaded, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.conversation.generator is not None)
        await pilot.press("f6")
        await until(pilot, lambda: isinstance(app.screen, SessionPickerScreen))
        options = app.screen.query_one(OptionList)
        enabled = [options.get_option_at_index(i) for i in range(options.option_count)
                   if not options.get_option_at_index(i).disabled]
        assert [Path(o.id) for o in enabled] == [tmp_path / "20261201-000001-ctrl.json", good]
        options.highlighted = next(i for i in range(options.option_count)
                                   if options.get_option_at_index(i).id == str(good))
        await pilot.press("enter")
        await until(pilot, lambda: app.conversation.path == good)
        assert len(app.conversation.session.turns) == 2
