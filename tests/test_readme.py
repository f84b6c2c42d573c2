"""The README stays true: its key table is the app's, its pictures exist, its commands parse."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _screenshots_module():
    spec = importlib.util.spec_from_file_location("docs_screenshots", ROOT / "docs/screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_two_commands_come_first():
    first_block = README.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block
    assert README.index("make run") < README.index("## ")


def test_key_table_is_the_apps_own():
    screenshots = _screenshots_module()
    assert screenshots.with_key_table(README) == README, (
        "the key table is stale: run `.venv/bin/python docs/screenshots.py --keys-only`")
    assert "| `ctrl+q` |" in README and "| `f1` |" in README


def test_pictures_exist_and_are_svg():
    for name in re.findall(r"\]\((docs/[\w.-]+)\)", README):
        path = ROOT / name
        assert path.is_file(), f"{name} is missing: run `make screenshots`"
        assert path.read_text()[:200].lstrip().startswith("<svg")
    assert {"docs/main.svg", "docs/help.svg"} <= set(re.findall(r"\((docs/[\w.]+)\)", README))


def _readme_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith((".venv/bin/textgen", "echo")):
                line = line.split("|")[-1].strip()
                commands.append(shlex.split(line))
    return commands


@pytest.mark.parametrize("argv", _readme_commands(), ids=" ".join)
def test_readme_commands_parse(argv):
    """Every textgen / textgen-train line of the README is accepted by today's parsers."""
    if argv[0].endswith("textgen-train"):
        from trainer.cli import build_parser
    else:
        from repl.cli import build_parser
    build_parser().parse_args(argv[1:])
