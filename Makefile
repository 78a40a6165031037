# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast services bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/novapurge demo

services:
	bash scripts/host-packages.sh
	bash scripts/services.sh
	bash tests/labs/cloudlab/install.sh

test: $(STAMP) services
	$(VENV)/bin/pytest

# The fast tier for iteration: leaves out the crash/resume matrix (`slow`).
test-fast: $(STAMP) services
	$(VENV)/bin/pytest -m "not slow" -x -q

bench: $(STAMP) services
	$(VENV)/bin/python bench/journal_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
