"""rag-sidecar's performance suite: ``make bench`` → ``python -m bench`` (see bench/__main__.py, docs/benchmarks.md)."""
