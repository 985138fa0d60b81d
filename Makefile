# Two entry points that work on a fresh machine with Python 3.11 and pip:
#   make run   - set up, then the main job end to end on the embedded PostgreSQL
#   make test  - set up, then lint and the whole test suite
# uv is installed with pip if missing; `uv sync --frozen` installs exactly uv.lock.

PYTHON ?= python3
UV := $(PYTHON) -m uv

CCA_HOME ?= .cca

.PHONY: setup run test lint bench bench-serve bench-webhooks mlflow-ui browser test-deps airflow-test clean

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.5"
	@$(UV) sync --frozen --all-extras --quiet

run: setup
	$(UV) run --frozen cca run

# ruff, then the one import direction of docs/ARCHITECTURE.md (import-linter contracts in
# pyproject.toml).
lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen lint-imports

test: lint test-deps
	$(UV) run --frozen pytest

bench: setup
	$(UV) run --frozen python benchmarks/cascade.py
	$(UV) run --frozen python benchmarks/lifecycle.py
	$(UV) run --frozen python benchmarks/pii.py

# The HTTP service under load (after `make run`); add ARGS=--soak for the 10-minute soak.
bench-serve: setup
	$(UV) run --frozen python benchmarks/serve_load.py $(ARGS)

# The ticketing loop: signed webhooks in, write-back to a Zendesk stand-in (after `make run`).
bench-webhooks: setup
	$(UV) run --frozen python benchmarks/webhooks.py $(ARGS)

# The MLflow UI on the local store the main job writes (http://127.0.0.1:5000); one worker:
# a single reader needs no more, and MLflow's default of 4 crowds a 2-core machine.
# How to read it: docs/mlflow.md.
mlflow-ui: setup
	$(UV) run --frozen mlflow ui --backend-store-uri sqlite:///$(abspath $(CCA_HOME))/mlflow/mlflow.db --port 5000 --workers 1

# Debian packages the tests run for real: headless Chromium (tests/integration/test_mlflow_ui.py
# renders the MLflow UI with it) and redis-server (the Redis fault tests start private servers).
# Installed only when missing, and only as root with apt-get; otherwise those tests skip saying
# why, except in CI (CI=true), where a missing one fails them.
TEST_DEBS := chromium:chromium redis-server:redis-server
test-deps:
	@missing=""; for pair in $(TEST_DEBS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing:$$missing (installing needs root and apt-get)"; fi; fi

browser: test-deps

# One DAG run without a scheduler, e.g. `make airflow-test DAG=prepare_tickets`.
DAG ?= prepare_tickets
airflow-test: setup
	$(UV) run --frozen cca airflow db migrate
	$(UV) run --frozen cca airflow dags reserialize
	$(UV) run --frozen cca airflow dags test $(DAG)

clean:
	rm -rf .cca .pytest_cache .ruff_cache
