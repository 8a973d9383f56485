# Two environments, both from pinned versions:
# - .venv-runtime: what the inventory runs with (make demo), the runtime dependencies only,
#   installed from requirements/runtime.txt with --require-hashes (pip checks every file's
#   sha256); the package itself editable on top (pip refuses hashes for editable installs).
# - .venv: the development environment (make test, lint, bench): the same runtime versions
#   plus the development tools (pytest, moto, mypy, ruff, ...) from constraints.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME := .venv-runtime
RUNTIME_STAMP := $(RUNTIME)/.installed

.PHONY: install runtime demo test lint bench bench-quick bench-memory clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade setuptools
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

runtime: $(RUNTIME_STAMP)

$(RUNTIME_STAMP): pyproject.toml requirements/runtime.txt
	test -x $(RUNTIME)/bin/python || $(PY) -m venv $(RUNTIME)
	$(RUNTIME)/bin/python -m pip install -q --require-hashes --no-deps -r requirements/runtime.txt
	$(RUNTIME)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(RUNTIME)/bin/python -m pip check
	touch $(RUNTIME_STAMP)

demo: runtime
	$(RUNTIME)/bin/inventory demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check inventory tests benchmarks
	$(BIN)/ruff format --check inventory tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# BENCH_ARGS: more options, e.g. make bench-quick BENCH_ARGS="--huge-answer-mb 50"
bench: install
	$(BIN)/python -m benchmarks.run --fleets 100,1000,10000 $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m benchmarks.run --fleets 100 --quick $(BENCH_ARGS)

# the memory target: 10,000 dense accounts (about 10 services each), Parquet export included
bench-memory: install
	$(BIN)/python -m benchmarks.run --fleets 10000 --no-peer --no-floor --parquet \
		--services-per-account 10 $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(RUNTIME) data/*.duckdb* data/demo-parquet data/parquet
