# hrnn: the two commands a user needs are `make demo` and `make test`.
# Both create/refresh .venv when it is missing or stale (pyproject.toml or constraints.txt changed).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hrnn-installed
export HRNN_DATA_DIR ?= $(CURDIR)/data
export BENTOML_HOME ?= $(HRNN_DATA_DIR)/bentoml
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-all airflow serve bench clean-data help

help:
	@echo "make demo   - set up .venv and run the pipeline end to end on MovieLens-100k"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make airflow - the Airflow UI on 127.0.0.1:8080 with these DAGs (Ctrl-C stops it)"
	@echo "make serve  - the BentoML service on 127.0.0.1:3000 (the champion model)"
	@echo "make bench  - run the benchmark scripts (bench/)"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=26'
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hrnn demo

airflow: $(STAMP)
	$(VENV)/bin/hrnn airflow

serve: $(STAMP)
	cd bento && ../$(VENV)/bin/bentoml serve --host 127.0.0.1 --port 3000

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_service.py

clean-data:
	rm -rf $(HRNN_DATA_DIR)
