# `make run`: set up and run the pipeline on the default data; `make test`: set up and test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup packages data run test test-fast lint bench

setup: $(VENV)/.installed packages

# pinned: requirements.lock holds every package version the tests ran with (torch 2.13.0 CPU)
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# Debian packages the tests need, each with the check that it is there: the system copy of
# Fashion-MNIST (the data the tests read), PostgreSQL's server binaries (the Prefect API server's
# database in the integration tests, see tests/prefect_server.py), Chromium (the UI test's
# browser) and xz-utils (the standard tool a consumer opens the shipped model.onnx.xz with, which
# a test runs). Those missing are installed with one quiet apt-get; if that fails, an error says
# what to install.
PACKAGES ?= dataset-fashion-mnist postgresql chromium xz-utils
HAVE.dataset-fashion-mnist := [ -e $(FMNIST) ]
HAVE.postgresql := [ -x "$$(pg_config --bindir 2>/dev/null)/initdb" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
HAVE.chromium := [ -x /usr/bin/chromium ]
HAVE.xz-utils := command -v xz >/dev/null
MISSING = $(foreach p,$(PACKAGES),$$({ $(HAVE.$(p)); } || echo $(p)))
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

packages:
	@missing=$$(echo $(MISSING)); if [ -n "$$missing" ]; then echo "installing $$missing"; \
	  $(APT) update -qq && $(APT) install -y -qq $$missing >/dev/null || true; fi
	@missing=$$(echo $(MISSING)); [ -z "$$missing" ] || { echo "make: Debian packages missing: $$missing, and apt-get could not install them; install them as root (apt-get install $$missing) and rerun" >&2; exit 1; }

data:
	@$(MAKE) --no-print-directory packages PACKAGES=dataset-fashion-mnist

# the pipeline does not need the package: without it, ingest downloads from ingest.mirror
run: $(VENV)/.installed
	@$(MAKE) --no-print-directory data 2>/dev/null || echo "dataset-fashion-mnist is not available here: ingest will download the files"
	$(BIN)/squeeze run

# two pytest workers (pytest-xdist): the end-to-end tests spend much of their time waiting on
# servers, a cron minute and subprocesses, which the other worker fills; each worker starts its
# own PostgreSQL, Prefect server and S3 endpoint on free ports
test: setup
	$(BIN)/pytest -n 2 --dist worksteal

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m benchmarks.compare
