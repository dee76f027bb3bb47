# Two commands: `make compare` runs the main job (the experiments' comparison),
# `make test` runs the tests; `make bench` runs the benchmarks and `make docs`
# builds the documentation site into site/.  Each creates
# its own virtual environment from pyproject.toml's extras, with torch pinned
# to its CPU build by constraints.txt.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sparsecore-deps

.PHONY: test bench compare data docs lint typecheck install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt '.[torch,jax,experiments,test,bench,dev,docs]'
	touch $(STAMP)

# Tests run against the installed package, reinstalled from this tree.
install: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall .

test: install
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/sparsemax.py
	$(BIN)/python benchmarks/marginalize.py
	$(BIN)/python benchmarks/structured.py

# Fashion-MNIST from Debian's package when it is not there yet (needs root and
# apt); otherwise experiments/data.py looks in --data-dir, $$SPARSECORE_DATA,
# the cache, and downloads from the canonical location.
data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } || \
	  echo "could not install dataset-fashion-mnist; experiments/data.py will look elsewhere or download"

# The main job: every estimator of the three experiments with the embedded small
# budget; the table and plots land in runs/compare/.  (The experiments' command
# lines raise glibc's mmap threshold themselves, experiments.harness.reuse_freed_memory.)
compare: install data
	$(BIN)/python -m experiments.compare all

# The documentation site (mkdocs.yml): --strict fails on a broken link, anchor
# or API reference.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check sparsecore adapters experiments tests benchmarks docs/*.py
	$(BIN)/ruff format --check sparsecore adapters experiments tests benchmarks docs/*.py

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist site .pytest_cache .hypothesis
