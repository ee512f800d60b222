# preassign: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATE   ?= 2026-12-01
UNTIL  ?= 2026-12-14
USERS  ?= 100000

.PHONY: help install demo test test-all lint bench readme lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)  ## create .venv with the locked dependencies

demo: $(STAMP)  ## synthetic lake of 100k users under data/, then a two-week pre-assignment
	@test -f data/lake/_lake.json || $(BIN)/preassign synth --out data/lake --users $(USERS) --date $(DATE) --loglevel WARNING
	$(BIN)/preassign run --lake data/lake --date $(DATE) --until $(UNTIL) --out data/run --overwrite --loglevel WARNING

lint: $(STAMP)  ## ruff, mypy on preassign/, the README's generated parts, checkov on cluster/
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/cog --check README.md
	@test -x $(VENV)/checkov/bin/checkov -a $(VENV)/checkov/.lock -nt cluster/checkov.lock || { \
	  $(BIN)/python -m venv $(VENV)/checkov && \
	  $(VENV)/checkov/bin/python -m pip install --quiet --no-deps --require-hashes -r cluster/checkov.lock && \
	  cp cluster/checkov.lock $(VENV)/checkov/.lock; }
	$(VENV)/checkov/bin/checkov --directory cluster --framework cloudformation dockerfile \
	  --skip-download --quiet --compact

test: $(STAMP)  ## the default test suite (about 11 minutes on 2 cores)
	$(BIN)/python -m pytest

test-all: $(STAMP)  ## everything, including tests marked slow
	$(BIN)/python -m pytest -m "slow or not slow"

bench: $(STAMP)  ## benchmarks (see benchmarks/README.md)
	$(BIN)/python -m benchmarks.run

readme: $(STAMP)  ## regenerate the README's generated parts (command reference, example)
	$(BIN)/cog -r README.md

lock:  ## re-resolve the locks from pyproject.toml (needs uv)
	uv pip compile pyproject.toml --python-version 3.11 -o requirements.lock
	uv pip compile pyproject.toml --extra dev --python-version 3.11 -c requirements.lock -o requirements-dev.lock

clean:  ## remove generated data and the virtualenv
	rm -rf data $(VENV)
