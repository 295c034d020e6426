# tlstrace: `make run` starts the sidecar on its embedded defaults (`make run ARGS="--config
# FILE --trace"` passes flags to `tlstrace run`), `make test` runs the whole test suite. Both
# create the virtual environment (.venv) when it is missing or stale.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint deps bench demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

ARGS ?=

run: $(BIN)/.installed
	$(strip $(BIN)/tlstrace run $(ARGS))

demo: $(BIN)/.installed
	$(BIN)/tlstrace demo

# System packages the tests drive (Kamailio, sngrep, tshark, Prometheus) and hep-js from npm.
deps: $(BIN)/.installed
	scripts/install-test-deps.sh $(VENV)

test: deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tlstrace .pytest_cache .mypy_cache .ruff_cache .hypothesis
