"""The package as pip builds it: the wheel holds every file the code reads, its metadata says the
right name, version and commands, and every third-party import is a declared dependency.

The wheel is built the way `make test` and a user's pip build it (`python -m build`: the sdist
first, then the wheel from the sdist), without build isolation so it needs no network, from a
copy of the checkout's files as a fresh clone has them: a stale `*.egg-info` left in the
checkout would otherwise put files into the sdist that pyproject.toml no longer asks for.
tests/smoke_wheel.sh then installs such a wheel into a fresh venv and runs it.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import repl
from repl import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("repl", "trainer")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def checkout_files() -> list[str]:
    """The checkout's files, tracked or new, without what git ignores (build output, venvs)."""
    result = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist?): no list of its files")
    return [name for name in result.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel_names(dist: Path) -> set[str]:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def tracked_files() -> list[str]:
    """The files git tracks under the packages (what a fresh clone has)."""
    result = subprocess.run(["git", "ls-files", "--", *PACKAGES], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist?): no list of tracked files")
    return [name for name in result.stdout.splitlines() if (ROOT / name).is_file()]


def test_the_wheel_holds_every_file_of_the_packages(wheel_names: set[str]) -> None:
    """Stylesheets and any other data file next to the code, not only the .py modules."""
    files = tracked_files()
    assert any(name.endswith(".tcss") for name in files)
    missing = [name for name in files if name not in wheel_names]
    assert not missing, ("missing from the wheel (add them to [tool.setuptools.package-data] "
                         f"in pyproject.toml): {missing}")


def test_every_stylesheet_the_tui_names_is_in_the_wheel(wheel_names: set[str]) -> None:
    from repl.tui import app

    named = {Path(app.__file__).parent / obj.CSS_PATH for obj in vars(app).values()
             if isinstance(getattr(obj, "CSS_PATH", None), (str, Path)) and obj.CSS_PATH}
    assert named
    for path in named:
        assert path.relative_to(ROOT).as_posix() in wheel_names


def test_the_sdist_holds_what_the_wheel_is_built_from(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md"} <= names
    missing = [name for name in tracked_files() if name not in names]
    assert not missing, f"missing from the sdist: {missing}"


def test_the_wheel_metadata_names_the_distribution_and_its_commands(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        info = next(n.split("/")[0] for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    fields = dict(re.findall(r"^(Name|Version): (.+)$", meta, re.M))
    assert fields == {"Name": "textgen-tui", "Version": PYPROJECT["version"]}
    assert wheel.name.startswith(f"textgen_tui-{PYPROJECT['version']}-py3-none-any")
    assert "textgen = repl.cli:main" in entry_points
    assert "textgen-train = trainer.cli:main" in entry_points
    requires = {Requirement(line.removeprefix("Requires-Dist: ")).name
                for line in meta.splitlines() if line.startswith("Requires-Dist:")
                and "extra ==" not in line}
    assert requires == {Requirement(r).name for r in PYPROJECT["dependencies"]}


def test_one_version_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """pyproject.toml, repl.__version__, the newest CHANGELOG entry and `textgen --version`."""
    version = PYPROJECT["version"]
    assert repl.__version__ == version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\S+)", changelog, re.M)
    assert newest and newest.group(1) == version, "CHANGELOG.md's newest entry is another version"
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"textgen {version}"


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the modules a file imports, except optional ones: those it guards with
    `except ImportError` or probes with `find_spec("name")` first (a backend that says what to
    install)."""
    tree = ast.parse(path.read_text(), str(path))
    probed = {node.args[0].value.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("find_spec")
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)}
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                handler.type is None or "ImportError" in ast.unparse(handler.type)
                or "ModuleNotFoundError" in ast.unparse(handler.type)
                for handler in node.handlers):
            optional.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {name for name in names - probed
            if name not in sys.stdlib_module_names and name not in PACKAGES}


def declared_closure() -> set[str]:
    """Every distribution the declared dependencies bring in (as installed here)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in PYPROJECT["dependencies"]]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonical(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        # One not installed here adds nothing; the import check reports what that leaves out.
        with contextlib.suppress(metadata.PackageNotFoundError):
            todo += [Requirement(r) for r in metadata.requires(requirement.name) or []]
    return seen


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """What the smoke test's fresh venv would show at run time, for every module at once."""
    providers = metadata.packages_distributions()
    closure = declared_closure()
    undeclared: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in third_party_imports(path):
                dists = {canonical(d) for d in providers.get(name, [])}
                if not dists & closure:
                    undeclared[name] = path.relative_to(ROOT).as_posix()
    assert not undeclared, ("imported but not brought in by pyproject.toml's dependencies "
                            f"(module: first file): {undeclared}")
