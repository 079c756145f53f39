# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
DEV     = $(VENV)/.installed-dev

.PHONY: run test lint bench peers clean help

help:
	@echo "make run    install into $(VENV) and start the hub on http://127.0.0.1:8080 (SQLite in ./var)"
	@echo "make test   install test dependencies and peers, then run the whole suite"
	@echo "make bench  run the benchmarks (JSON lines)"
	@echo "make lint   ruff and mypy"

# Debian ships venv separately (python3-venv); install it when we can, else say what to do.
$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
	  else echo "Python's venv module is missing: sudo apt-get install python3-venv"; exit 1; fi; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

run: $(STAMP)
	$(BIN)/hub serve

peers:
	@sh tests/peers/install.sh

test: $(DEV) peers
	$(BIN)/ruff check .
	$(BIN)/mypy hub channels storage routing
	$(BIN)/python -m pytest

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy hub channels storage routing

bench: $(DEV)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var *.egg-info .pytest_cache .ruff_cache
