# tlstrace: `make run` starts the sidecar on its embedded defaults (`make run ARGS="--config
# FILE --trace"` passes flags to `tlstrace run`), `make test` runs the whole test suite. Both
# create the virtual environment (.venv) when it is missing or stale.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test unit lint deps bench demo clean

# The install compiles the modules listed in pyproject.toml ([tool.tlstrace.mypyc]) with mypyc
# (setup.py), so it runs again when one of their sources changes; it falls back to pure Python
# when compiling fails (TLSTRACE_PURE_PYTHON=1 skips compiling), and then says so here.
COMPILED = $(shell sed -n '/^\[tool\.tlstrace\.mypyc\]/,/^]/s/^ *"\([a-z_.]*\)",*$$/\1/p' \
             pyproject.toml | tr . / | sed 's/$$/.py/')

C_SOURCES = $(shell sed -n '/^\[tool\.tlstrace\.c\]/,/^]/s/^ *"\([a-z_.]*\)",*$$/\1/p' \
             pyproject.toml | tr . / | sed 's/$$/.c/')

$(BIN)/.installed: pyproject.toml setup.py $(COMPILED) $(C_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@$(BIN)/python -c 'import importlib, tomllib; \
	    names = tomllib.load(open("pyproject.toml", "rb"))["tool"]["tlstrace"]["mypyc"]["modules"]; \
	    pure = [n for n in names if not importlib.import_module(n).__file__.endswith(".so")]; \
	    pure and print("WARNING: tlstrace: not compiled with mypyc, running as pure Python (slower):", \
	                   ", ".join(pure))'
	touch $@

ARGS ?=

run: $(BIN)/.installed
	$(strip $(BIN)/tlstrace run $(ARGS))

demo: $(BIN)/.installed
	$(BIN)/tlstrace demo

# System packages the tests drive (Kamailio, sngrep, tshark, Prometheus) and hep-js from npm.
deps: $(BIN)/.installed
	scripts/install-test-deps.sh $(VENV)

test: deps lint
	$(BIN)/pytest

# The in-memory tests alone (sans-IO parts: framing, ClientHello, registrations, trunk routes,
# rate limits, HEP codec, tracing fit, reloader, fuzzers, the relay core in tests/core):
# half a minute, no sockets.
UNIT = tests/test_framing.py tests/test_clienthello.py tests/test_registration.py \
       tests/test_sip_route.py tests/test_ratelimit.py tests/test_trace_fit.py \
       tests/test_trace_units.py tests/test_tls_records.py tests/test_keepalive_budget.py \
       tests/test_reloader.py tests/test_feed.py tests/test_trunk_config.py tests/test_docs.py \
       tests/hep/test_codec.py tests/hep/test_codec_fuzz.py \
       tests/hardening/test_fuzz_framer.py tests/hardening/test_fuzz_hep.py \
       tests/test_layers.py tests/test_control_seam.py tests/core \
       tests/test_bench_report.py tests/test_compiled.py tests/test_headscan.py \
       tests/test_trace_fastpath.py

unit: $(BIN)/.installed
	$(BIN)/pytest $(UNIT)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every regime beside HAProxy (Debian's package, installed here when missing and apt can be
# used), and the plot (matplotlib, the `bench` extra, installed here).
# make bench ARGS="--quick" (or --regime NAME ...) passes flags to python -m bench.
bench: $(BIN)/.installed
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,bench]'
	@command -v haproxy >/dev/null 2>&1 || scripts/install-bench-deps.sh
	$(strip $(BIN)/python -m bench $(ARGS))

clean:
	rm -rf $(VENV) .tlstrace .pytest_cache .mypy_cache .ruff_cache .hypothesis
