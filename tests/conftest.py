"""Shared fixtures: a tiny random GPT-2 on disk and loaded, and the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import save_random_gpt2


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Path):
    from repl.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture
def tiny_generator(tiny_loaded):
    from repl.engine import Generator

    return Generator(tiny_loaded)


@pytest.fixture(scope="session")
def default_loaded():
    """The real SmolLM2-135M-Instruct (converted at set-up; loads in well under a second)."""
    from repl.models import load_model

    return load_model("default", device="cpu")
