# Two commands matter: `make run` (dashboard + workers) and `make test` (the whole suite).
PORT ?= 8000
WORKERS ?= 2
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test worker web setup lint format bench clean

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || { PYBIN=$$(scripts/find-python) && echo "Creating $(VENV) with $$PYBIN" && "$$PYBIN" -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

setup: $(VENV)/.installed
	$(PY) manage.py bootstrap

# The local run is a development run: DEBUG on (so `bootstrap` makes the admin/admin superuser).
run: export DEBUG ?= 1
run: setup
	$(PY) manage.py serve --port $(PORT) --workers $(WORKERS)

worker: $(VENV)/.installed
	$(PY) manage.py run_workers --workers $(WORKERS)

# The production web server (README, "Production"): gunicorn on 0.0.0.0:PORT.
WEB_CONCURRENCY ?= 4
web: $(VENV)/.installed
	$(VENV)/bin/gunicorn project.wsgi --bind 0.0.0.0:$(PORT) --workers $(WEB_CONCURRENCY) \
		--timeout 30 --access-logfile - --forwarded-allow-ips "$${FORWARDED_ALLOW_IPS:-127.0.0.1}"

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
