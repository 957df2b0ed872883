# Two commands on a fresh machine: `make run` and `make test` (see README).
# A second run reuses the virtual environment: it is rebuilt only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 5000
# The PostgreSQL server the suite runs on; each run creates (and drops) a database of its own.
PG_TEST_URL ?= postgresql://127.0.0.1:5432/test

# Benchmarks on PostgreSQL ($(PG_BENCH)): the full run writes docs/performance.md (about an hour
# the first time, to generate the 5,000-subject study; its dump is reused afterwards).
PG_BENCH ?= postgresql://127.0.0.1:5432
bench: $(STAMP)
	$(BIN)/python bench/run.py --server $(PG_BENCH)

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick --server $(PG_BENCH) --docs ''

# The exports' peak memory on the embedded SQLite default (50 and 2000 subjects).
bench-exports: $(STAMP)
	$(BIN)/python bench/exports_memory.py --subjects 50 2000

.PHONY: bench bench-quick bench-exports run test lint test-sqlite test-postgres test-browser browser-deps test-slow clean translations validate

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,prod,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ecrf db upgrade
	$(BIN)/ecrf demo
	@echo "ecrf is served on http://$(HOST):$(PORT) (Ctrl-C to stop)"
	$(BIN)/ecrf run --host $(HOST) --port $(PORT)

browser-deps:
	@bash scripts/ensure-chromium.sh

lint: $(STAMP)
	$(BIN)/ruff check .

test-sqlite: $(STAMP)
	$(BIN)/pytest -m "not browser and not slow"

test-postgres: $(STAMP)
	ECRF_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/pytest -m "not browser and not slow"

test-browser: $(STAMP) browser-deps
	$(BIN)/pytest -m browser

# The whole suite: lint, SQLite, PostgreSQL and a real browser.
test: lint test-sqlite test-postgres test-browser

# Long evidence (fault injection, full fuzzing): its own target, a short version runs in `test`.
test-slow: $(STAMP)
	$(BIN)/pytest -m slow

# Validation evidence (docs/compliance.md): the suite on SQLite, then on PostgreSQL when it can be
# reached (with CI=true it must be), each pass writing its JUnit XML, then the traceability matrix
# $(VALIDATION)/traceability.html, .pdf and .json from both (a test failing on either engine is
# failing). The report is written in any case; the target fails when a pass has a failing test or
# a requirement the software claims is not shown by a passing test.
VALIDATION ?= build/validation
VALIDATE_TESTS ?= -m "not browser and not slow"
validate: $(STAMP)
	@mkdir -p $(VALIDATION) && rm -f $(VALIDATION)/junit-*.xml $(VALIDATION)/traceability.*
	@status=0; \
	sqlite=$$($(BIN)/python -c 'import sqlite3; print("SQLite", sqlite3.sqlite_version)'); \
	$(BIN)/pytest $(VALIDATE_TESTS) --junitxml=$(VALIDATION)/junit-sqlite.xml || status=1; \
	set -- --junit $(VALIDATION)/junit-sqlite.xml --database "$$sqlite"; \
	pg=$$($(BIN)/python -c 'import sys, psycopg; c = psycopg.connect(sys.argv[1], connect_timeout=5); print("PostgreSQL", c.execute("SHOW server_version").fetchone()[0].split()[0])' "$(PG_TEST_URL)" 2>/dev/null); \
	if [ -n "$$pg" ]; then \
	  ECRF_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/pytest $(VALIDATE_TESTS) --junitxml=$(VALIDATION)/junit-postgresql.xml || status=1; \
	  set -- "$$@" --junit $(VALIDATION)/junit-postgresql.xml --database "$$pg"; \
	elif [ "$${CI:-}" = "true" ]; then \
	  echo "CI: PostgreSQL at $(PG_TEST_URL) cannot be reached; the validation needs it." >&2; status=1; \
	else \
	  echo "PostgreSQL at $(PG_TEST_URL) cannot be reached: the report covers SQLite only."; \
	fi; \
	$(BIN)/ecrf validate report "$$@" -o $(VALIDATION) || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Refresh the French catalog after changing user-facing text: extract, merge, compile.
translations: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k _l -k lazy_gettext -k msg --project=ecrf -o ecrf/translations/messages.pot .
	$(BIN)/pybabel update -i ecrf/translations/messages.pot -d ecrf/translations -l fr
	$(BIN)/pybabel compile -d ecrf/translations
