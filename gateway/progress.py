"""Progress lines for operator commands (ingest, sync, eval, jobs) on stderr."""
from __future__ import annotations

import sys

from gateway.kb import Progress


def progress_printer(prefix: str = "") -> Progress:
    """Progress on stderr: a rewritten line on a terminal, a line per 10% otherwise."""
    tty = sys.stderr.isatty()
    last: dict[str, int] = {}

    def show(stage: str, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if tty:
            print(f"\r{prefix}{stage}: {done}/{total} ({pct}%)", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)
        elif pct // 10 != last.get(stage, -1) or done == total:
            last[stage] = pct // 10
            print(f"{prefix}{stage}: {done}/{total} ({pct}%)", file=sys.stderr, flush=True)
    return show
