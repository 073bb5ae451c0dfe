# Two commands on a fresh machine: `make run` (the whole system) and `make test` (every test).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck check bench system-deps web-assets clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# PostgreSQL and Redis servers, Java and Maven, npm, Chromium and its driver come from Debian's packages when missing.
system-deps:
	@./infra/provision/system-deps.sh

# The docs pages' scripts (Swagger UI, ReDoc, GraphiQL), pinned npm packages fetched once into the cache.
web-assets: system-deps $(STAMP)
	@$(PY) -m infra.provision.web_assets

run: system-deps $(STAMP) web-assets
	$(PY) -m infra.cli run

test: system-deps $(STAMP) web-assets
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

check: lint typecheck test

bench: $(STAMP)
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
