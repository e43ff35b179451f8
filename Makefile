# The plain runner. `make repro` and `make test` set up .venv first when it is missing.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
REPRO_ARGS ?=

.PHONY: setup repro check-params test test-fast lint format clean-env

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml scripts/setup-env
	scripts/setup-env

repro: $(VENV)/.ready ## check params.yaml, run the whole pipeline (dvc repro), summarise
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/repro $(REPRO_ARGS)

check-params: $(VENV)/.ready ## validate the whole of params.yaml (every key, profile, setting)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ctgan check-params params.yaml

test: $(VENV)/.ready ## lint + every test, slow ones included (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.ready ## the fast tests only
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.ready
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.ready
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-env:
	rm -rf $(VENV)
