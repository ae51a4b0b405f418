# trimta: the two commands a newcomer needs are `make run` and `make test`.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run demo test test-fast lint deps system-deps bench-reception bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

deps: $(STAMP)

# Debian packages the interop tests use (swaks, Postfix's smtp-source/smtp-sink, dnsmasq, openssl).
system-deps:
	sh scripts/install-system-deps.sh

## run: create the virtualenv, install, start `trimta serve` on the embedded default
run: deps
	$(BIN)/trimta serve

## demo: trimta delivering to two local receivers (local DNS too); shows the mail and its records, runs until Ctrl-C
demo: deps
	$(BIN)/python scripts/demo.py

## test: install what the tests need (Debian packages too) and run the whole suite
test: deps system-deps
	$(BIN)/pytest -q -p no:cacheprovider

## lint: ruff, mypy (plain on trimta, --strict on protocol and core), no import cycles
lint: deps
	$(BIN)/ruff check trimta tests bench scripts
	$(BIN)/mypy
	$(BIN)/mypy --strict --no-warn-unused-configs trimta/protocol trimta/core
	$(BIN)/python scripts/check_import_cycles.py trimta

## test-fast: unit and service tests only (no real peers; tests/conftest.py marks the others interop)
test-fast: deps
	$(BIN)/pytest -q -m "not interop"

## bench-reception: durable accepts/s of trimta and Postfix side by side
bench-reception: deps system-deps
	$(BIN)/python bench/reception.py

## bench: issue 7's suite (accept, relay, fan-out, tenants, backlog), trimta next to Postfix
bench: deps system-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) trimta-data demo-data .pytest_cache

## soak: trimta relaying at half its measured capacity for 30 minutes; RSS, fds, p99 latency per minute
soak: deps system-deps
	$(BIN)/python bench/soak.py
