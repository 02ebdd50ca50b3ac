# GPT Journey: the two set-up commands.
#   make run   -> venv + CPU torch + the project, then `journey run` (tiny preset, the whole journey)
#   make test  -> venv + CPU torch + the project + dev tools, then the default test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: setup run test test-all clean

# System packages: a C/C++ toolchain and cmake build llama.cpp (and our decode kernels); the default test
# suite runs a real redis-server and drives the web chat in chromium. Installed as root with apt-get,
# otherwise the exact install command is printed before anything else runs (scripts/system_deps.sh).
BUILD_DEPS := g++:g++ cmake:cmake
TEST_DEPS := redis-server:redis-server chromium:chromium

$(VENV)/.installed: pyproject.toml
	scripts/system_deps.sh $(BUILD_DEPS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	# llama.cpp (GGUF) built from source as a portable CPU build: the default native build segfaults on Q8_0/Q4_0 here.
	$(PY) -c "import llama_cpp" 2>/dev/null || PYTHON=$(PY) scripts/install_llama_cpp.sh
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/journey run $(ARGS)

test: setup
	scripts/system_deps.sh $(TEST_DEPS)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	scripts/system_deps.sh $(TEST_DEPS)
	$(PY) -m pytest -m "not gpu"

clean:
	rm -rf runs .pytest_cache
