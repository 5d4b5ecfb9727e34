# Two entry points for a fresh machine: `make serve` and `make test`. Everything else is set-up they share.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The machine-wide pip config may add extra indexes and constraints: never let it decide what we install.
export PIP_CONFIG_FILE := /dev/null
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: serve test lint typecheck unit venv clean

$(BIN)/wheelfarm: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(BIN)/wheelfarm

serve: venv
	$(BIN)/wheelfarm serve $(ARGS)

lint: venv
	$(BIN)/ruff check proxy builder tests bench
	$(BIN)/ruff format --check proxy builder tests bench

typecheck: venv
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
