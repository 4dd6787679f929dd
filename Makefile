# The two commands: `make serve` and `make test`. Everything else is a convenience.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test install bench drill lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Serve on 127.0.0.1:8080 with embedded defaults (ingests the sample corpus on first run).
serve: $(STAMP)
	$(BIN)/rag-sidecar serve

## The whole test suite (unit, integration over real sockets, chaos).
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench

drill: $(STAMP)
	$(BIN)/rag-sidecar chaos run --all --local

## Re-pin: resolve the newest allowed versions and write requirements.lock.
lock:
	rm -rf /tmp/rag-sidecar-lock && $(PY) -m venv /tmp/rag-sidecar-lock
	/tmp/rag-sidecar-lock/bin/python -m pip install -q --upgrade "pip>=24"
	/tmp/rag-sidecar-lock/bin/python -m pip install -q '.[test]'
	/tmp/rag-sidecar-lock/bin/python -m pip freeze --exclude rag-sidecar > requirements.lock

clean:
	rm -rf $(VENV) data
