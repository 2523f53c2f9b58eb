# Two commands matter: `make run` (dashboard + workers) and `make test` (the whole suite).
PORT ?= 8000
WORKERS ?= 2
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test worker setup lint format bench clean

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || { PYBIN=$$(scripts/find-python) && echo "Creating $(VENV) with $$PYBIN" && "$$PYBIN" -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

setup: $(VENV)/.installed
	$(PY) manage.py bootstrap

run: setup
	$(PY) manage.py serve --port $(PORT) --workers $(WORKERS)

worker: $(VENV)/.installed
	$(PY) manage.py run_workers --workers $(WORKERS)

test: setup
	@scripts/ensure-chromium
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) staticfiles .run
