# The two commands: `make serve` and `make test`. Everything else is a convenience.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test check install bench bench-tools drill drill-mutants lock clean sample-embeddings image-check

$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Serve on 127.0.0.1:8080 with embedded defaults (ingests the sample corpus on first run).
serve: $(STAMP)
	$(BIN)/rag-sidecar serve

## What CI runs (.ci/run): lint, types, then the whole suite (unit, integration over real sockets, chaos drills).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

## The edit loop: lint, types and every test but the real-time ones (marker `slow`); under a minute.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

## The bench's compiled load generator (wrk, Debian package; see docs/benchmarks.md). Optional: without it
## `make bench` falls back to the Python load generator and the report says so.
bench-tools:
	@command -v wrk >/dev/null 2>&1 && echo "wrk: $$(command -v wrk)" || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y wrk \
	      || echo "bench-tools: could not install wrk; the bench will use its Python load generator"; \
	  else echo "bench-tools: no apt-get; install wrk 4.x yourself or the bench uses its Python load generator"; fi; }

bench: $(STAMP)
	-@$(MAKE) --no-print-directory bench-tools
	$(BIN)/python -m bench
	$(BIN)/python -m bench.embedders

drill: $(STAMP)
	$(BIN)/rag-sidecar chaos run --all --local

## The Dockerfile's install steps in a fresh venv (no container engine needed); prints the venv/image size.
image-check: $(STAMP)
	$(BIN)/python deploy/check_image.py

## The drills' mutation test (~10 min): each breaker, timeout and fallback disabled must fail a drill.
drill-mutants: $(STAMP)
	$(BIN)/rag-sidecar chaos run --mutants --write-doc

## Re-pin: resolve the newest allowed versions and write requirements.lock.
lock:
	rm -rf /tmp/rag-sidecar-lock && $(PY) -m venv /tmp/rag-sidecar-lock
	/tmp/rag-sidecar-lock/bin/python -m pip install -q --upgrade "pip>=24"
	/tmp/rag-sidecar-lock/bin/python -m pip install -q '.[test]'
	/tmp/rag-sidecar-lock/bin/python -m pip freeze --exclude rag-sidecar > requirements.lock

clean:
	rm -rf $(VENV) data

## Re-embed the sample corpus and refresh corpus/embeddings.local.npz (after changing the corpus or chunking).
sample-embeddings: $(STAMP)
	rm -rf /tmp/rag-sidecar-seed
	RAG_SIDECAR__SERVER__DATA_DIR=/tmp/rag-sidecar-seed RAG_SIDECAR__KB__SAMPLE_EMBEDDINGS=/nonexistent \
	  $(BIN)/python -c "import asyncio; from gateway.ingest import in_process; from gateway.config import load_settings; asyncio.run(in_process(load_settings(), lambda s: asyncio.sleep(0)))"
	$(BIN)/python -c "from pathlib import Path; from gateway.kb import KnowledgeBase, save_seed_vectors; kb = KnowledgeBase(Path('/tmp/rag-sidecar-seed/kb')); print(save_seed_vectors(kb.versions_dir / kb.active_version(), Path('corpus/embeddings.local.npz')), 'vectors')"
