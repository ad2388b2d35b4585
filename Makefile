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

# the system copy of Fashion-MNIST, which the tests read: installed if missing, else an error
data:
	@[ -e $(FMNIST) ] || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist) || true
	@[ -e $(FMNIST) ] || { echo "make data: $(FMNIST) is missing and the package dataset-fashion-mnist could not be installed; install it (apt-get install dataset-fashion-mnist) and rerun" >&2; exit 1; }

# the pipeline does not need the package: without it, ingest downloads from ingest.mirror
run: $(VENV)/.installed
	@$(MAKE) --no-print-directory data 2>/dev/null || echo "dataset-fashion-mnist is not available here: ingest will download the files"
	$(BIN)/squeeze run

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m benchmarks.compare
