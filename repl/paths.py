"""Where textgen keeps its files: the one place that decides.

Run from a source checkout (an editable install, `make run`), everything stays in the checkout as
it always has: trained models in `models/`, the converted default model in `models/.cache/`,
sessions in `sessions/`. Installed as a tool (a wheel, pipx), the user's own directories, as
platformdirs names them (on Linux `~/.local/share/textgen/` and `~/.cache/textgen/`, or wherever
$XDG_DATA_HOME and $XDG_CACHE_HOME point).

Environment variables move each one, checkout or not:
  $TEXTGEN_SESSIONS_DIR  sessions
  $TEXTGEN_MODELS_DIR    models (and the cache inside it, `models/.cache/`, as a whole)
  $TEXTGEN_CACHE_DIR     the cache alone (converted models; derived, safe to delete)
  $TEXTGEN_CONFIG_DIR    settings the TUI remembers (always the user's config directory,
                         `~/.config/textgen/`, checkout or not: they are the user's, not the
                         project's)
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "textgen"  # the command's name; the directories follow it, not the distribution's
# The folder above the `repl` package: the checkout's root in a source tree, site-packages when
# installed. Tests point it elsewhere to see both cases.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def checkout_root() -> Path | None:
    """The source checkout this code runs from, or None when it is installed (site-packages)."""
    if (PACKAGE_PARENT / "pyproject.toml").is_file():
        return PACKAGE_PARENT
    return None


def sessions_dir() -> Path:
    """Saved sessions: $TEXTGEN_SESSIONS_DIR, else `sessions/` of the checkout, else the user's
    data directory (`~/.local/share/textgen/sessions`)."""
    if env := os.environ.get("TEXTGEN_SESSIONS_DIR"):
        return Path(env).expanduser()
    if root := checkout_root():
        return root / "sessions"
    return user_data_dir() / "sessions"


def models_dir() -> Path:
    """Trained models (the TUI's trainer saves here by default): $TEXTGEN_MODELS_DIR, else
    `models/` of the checkout, else the user's data directory (`~/.local/share/textgen/models`)."""
    if env := os.environ.get("TEXTGEN_MODELS_DIR"):
        return Path(env).expanduser()
    if root := checkout_root():
        return root / "models"
    return user_data_dir() / "models"


def cache_dir() -> Path:
    """Derived files that can be rebuilt, such as the converted default model:
    $TEXTGEN_CACHE_DIR, else `.cache/` inside an explicit $TEXTGEN_MODELS_DIR or the checkout's
    `models/`, else the user's cache directory (`~/.cache/textgen`)."""
    if env := os.environ.get("TEXTGEN_CACHE_DIR"):
        return Path(env).expanduser()
    if os.environ.get("TEXTGEN_MODELS_DIR") or checkout_root():
        return models_dir() / ".cache"
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """Settings remembered between launches: $TEXTGEN_CONFIG_DIR, else the user's config
    directory (`~/.config/textgen`, or under $XDG_CONFIG_HOME)."""
    if env := os.environ.get("TEXTGEN_CONFIG_DIR"):
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def user_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
