# Two commands: `make bench` runs the main job, `make test` runs the tests.
# Both create their own virtual environment from pyproject.toml's extras, with
# torch pinned to its CPU build by constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sparsecore-deps

.PHONY: test bench lint typecheck install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt '.[torch,jax,experiments,test,bench,dev]'
	touch $(STAMP)

# Tests run against the installed package, reinstalled from this tree.
install: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall .

test: install
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/sparsemax.py

lint: $(STAMP)
	$(BIN)/ruff check sparsecore adapters experiments tests benchmarks
	$(BIN)/ruff format --check sparsecore adapters experiments tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
