"""The TUI's structure rules (docs/DESIGN.md, TUI): no module of repl/tui reads another object's
private names (the App none of a screen's or widget's, no screen or widget the App's), and the
controller imports no Textual."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TUI = Path(__file__).resolve().parents[1] / "repl" / "tui"
# Private names of other objects that are not ours to avoid: the interpreter's and a base
# class's (a widget overriding Textual's key handler calls it through super()).
ALLOWED = {"os._exit", "super()._on_key"}


def foreign_private_names(source: str) -> list[str]:
    """`x._name` where x is not `self` / `cls` (dunders are not private)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        text = ast.unparse(node)
        if text not in ALLOWED:
            found.append(f"{node.lineno}: {text}")
    return found


def test_the_checker_sees_a_reach_into_the_app():
    source = "def f(self):\n    self.app._begin()\n    app._x = 1\n"
    assert sorted(foreign_private_names(source)) == ["2: self.app._begin", "3: app._x"]
    assert foreign_private_names("def f(self):\n    self._own()\n    x.__class__\n") == []


def test_no_tui_module_reads_another_objects_private_names():
    offences = {str(path.relative_to(TUI)): found for path in sorted(TUI.rglob("*.py"))
                if (found := foreign_private_names(path.read_text(encoding="utf-8")))}
    assert offences == {}


def test_the_controller_imports_no_textual():
    code = ("import sys, repl.tui.controller, repl.tui.live; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=TUI.parents[1]).stdout
    assert out.strip() == "[]"


def test_the_transcript_and_the_inspect_screen_import_no_circle():
    """transcript.py and inspect_view.py share token_colours.py; neither imports the other."""
    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert "repl.tui.screens.inspect_view" not in imported(TUI / "widgets" / "transcript.py")
    assert "repl.tui.widgets.transcript" not in imported(TUI / "screens" / "inspect_view.py")
