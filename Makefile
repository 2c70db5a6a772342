# hrnn: the two commands a user needs are `make demo` and `make test`.
# Both create/refresh .venv when it is missing or stale (pyproject.toml or constraints.txt changed).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hrnn-installed
export HRNN_DATA_DIR ?= $(CURDIR)/data
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-fast test-all bench clean-data help

help:
	@echo "make demo   - set up .venv and run the pipeline end to end on MovieLens-100k"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make bench  - run the benchmark scripts (bench/)"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=26'
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hrnn demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/bench_ingest.py

clean-data:
	rm -rf $(HRNN_DATA_DIR)
