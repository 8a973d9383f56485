# Everything installs itself into .venv from the pinned constraints file.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/inventory demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check inventory tests benchmarks
	$(BIN)/ruff format --check inventory tests benchmarks
	$(BIN)/mypy

# BENCH_ARGS: more options, e.g. make bench-quick BENCH_ARGS="--huge-answer-mb 50"
bench: install
	$(BIN)/python -m benchmarks.run --fleets 100,1000,10000 $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m benchmarks.run --fleets 100 --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data/*.duckdb* data/demo-parquet data/parquet
