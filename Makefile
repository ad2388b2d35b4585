# `make run`: set up and run the pipeline on the default data; `make test`: set up and test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data run test test-fast lint bench

setup: $(VENV)/.installed data

# pinned: requirements.lock holds every package version the tests ran with (torch 2.13.0 CPU)
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# the system copy of Fashion-MNIST; without the package, ingest downloads from ingest.mirror
data:
	@[ -e $(FMNIST) ] || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "dataset-fashion-mnist is not available here: ingest will download the files"

run: setup
	$(BIN)/squeeze run

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m benchmarks.compare
