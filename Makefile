# Two entry points that work on a fresh machine with Python 3.11 and pip:
#   make run   - set up, then the main job end to end on the embedded PostgreSQL
#   make test  - set up, then lint and the whole test suite
# uv is installed with pip if missing; `uv sync --frozen` installs exactly uv.lock.

PYTHON ?= python3
UV := $(PYTHON) -m uv

.PHONY: setup run test lint bench clean

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.5"
	@$(UV) sync --frozen --all-extras --quiet

run: setup
	$(UV) run --frozen cca run

lint: setup
	$(UV) run --frozen ruff check .

test: lint
	$(UV) run --frozen pytest

bench: setup
	$(UV) run --frozen python benchmarks/cascade.py

clean:
	rm -rf .cca .pytest_cache .ruff_cache
