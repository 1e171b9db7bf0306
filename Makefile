# The two commands: `make run` (embedded default: SQLite, database counters, filesystem broker)
# and `make test` (the whole suite against the real PostgreSQL and Redis).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The test suite's services; override to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/warmup_portal
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
PYTEST_ARGS ?=

.PHONY: run test venv dev-venv migrate lint check-services browser bench clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

dev-venv: $(BIN)/.installed-dev

migrate: venv
	$(BIN)/python manage.py migrate --no-input

run: venv
	@mkdir -p var/broker/out var/broker/processed
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py seed_demo --history
	$(BIN)/python manage.py ensure_admin
	@echo "Admin: http://127.0.0.1:$${WEB_PORT:-8000}/admin/  (web, worker and beat run below; Ctrl-C stops all three)"
	$(BIN)/honcho start

check-services: dev-venv
	@DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/python scripts/check_services.py

# The browser test's Chromium (Debian's package), installed when missing; one line says so when it cannot be.
browser:
	@bash .ci/install-browser

test: check-services browser
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: dev-venv
	@bash bench/install-tools
	@DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) QUICK=$(QUICK) $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) staticfiles var .pytest_cache .ruff_cache
