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

bench: install
	$(BIN)/python -m benchmarks.run --fleets 100,1000,10000

bench-quick: install
	$(BIN)/python -m benchmarks.run --fleets 100 --quick

clean:
	rm -rf $(VENV) data/*.duckdb* data/demo-parquet data/parquet
