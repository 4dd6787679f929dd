"""rag-sidecar's performance suite: ``make bench`` → ``python -m bench`` (see bench/__main__.py, docs/benchmarks.md).

Its tools (psutil, bm25s, rank-bm25, matplotlib) are the ``[bench]`` extra: said here, before an import fails.
"""
from gateway.extras import require

for _module in ("psutil", "matplotlib"):
    require(_module, extra="bench", purpose="python -m bench")
