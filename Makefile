# One entry point for set-up, tests and the demo; every target creates .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest workers: the CI machine has 2 cores.
JOBS ?= 2

.PHONY: venv test test-slow test-all lint demo bench clean

# One stamp per install: `make demo` installs only what the demo needs (kdcache and the `demo` extra:
# scikit-learn for the digits, matplotlib for the picture); `make test` and the rest install `.[dev]`.
$(VENV)/.dev-installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

venv: $(VENV)/.dev-installed

# lint first: style, formatting, and the layering contract in pyproject.toml (import-linter).
test: lint
	$(BIN)/python -m pytest -n $(JOBS) -q

test-slow: venv
	$(BIN)/python -m pytest -n $(JOBS) -q -m slow

test-all: venv
	$(BIN)/python -m pytest -n $(JOBS) -q -m 'slow or not slow'

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

demo: $(VENV)/.demo-installed
	$(BIN)/kdcache demo --out demo-out

bench: venv
	$(BIN)/python benchmarks/performance/view_engine.py

clean:
	rm -rf demo-out .pytest_cache
