# The one entry point: `make help` lists every target. .ci/run calls the same targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
CORE := rating_core/Cargo.toml

.PHONY: help setup core proto proto-check run serve migrate test test-core test-py lint fmt bench ci clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml rating_core/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet maturin==1.*
	$(MAKE) core
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## create .venv, build the Rust core, install the app and dev tools

core: ## build the Rust core into the venv (release, maturin)
	$(BIN)/maturin develop --release --quiet -m $(CORE)

proto: setup ## regenerate isp_rating/v1 from proto/
	./scripts/gen_proto.sh

proto-check: setup ## fail when the committed stubs differ from proto/
	@tmp=$$(mktemp -d); ./scripts/gen_proto.sh $$tmp >/dev/null; \
	  diff -r --exclude=__pycache__ isp_rating $$tmp/isp_rating && echo "stubs match proto/" ; \
	  status=$$?; rm -rf $$tmp; exit $$status

run: setup core ## set up and start the server on the embedded SQLite default
	$(BIN)/rating serve

serve: run

migrate: setup ## apply migrations to RATING_DATABASE_URL (or the embedded default)
	$(BIN)/rating migrate

test: setup core test-core test-py ## set up and run every test (Rust, then Python on SQLite and PostgreSQL)

test-core: ## Rust core tests without Python (cargo test)
	cargo test --quiet --manifest-path $(CORE)

test-py: setup ## Python tests on SQLite and PostgreSQL
	./scripts/ensure_postgres.sh
	$(BIN)/pytest

lint: setup ## ruff, mypy --strict, stubtest, rustfmt, clippy (models vs migrations: tests/test_migrations.py)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest rating_core._native --mypy-config-file pyproject.toml
	cargo fmt --manifest-path $(CORE) -- --check
	cargo clippy --quiet --manifest-path $(CORE) --all-targets -- -D warnings
	cargo clippy --quiet --manifest-path $(CORE) --features python -- -D warnings

fmt: setup ## format Python and Rust
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	cargo fmt --manifest-path $(CORE)

bench: setup core ## benchmarks (not tests): results go to benchmarks/RESULTS.md by hand
	./scripts/ensure_postgres.sh
	$(BIN)/pytest benchmarks --benchmark-only -p no:cacheprovider -o addopts="" -o testpaths=benchmarks

ci: proto-check lint test ## what .ci/run runs

clean: ## remove the venv and build outputs
	rm -rf $(VENV) rating_core/target var
