"""Progress lines for operator commands (ingest, sync, eval, jobs) on stderr."""
from __future__ import annotations

import sys
import time

from gateway.kb import Progress


def progress_printer(prefix: str = "") -> Progress:
    """Progress on stderr: a rewritten line on a terminal, a line per 10% otherwise."""
    tty = sys.stderr.isatty()
    last: dict[str, int] = {}
    started: dict[str, tuple[float, int]] = {}  # stage -> (monotonic start, done at start)

    def show(stage: str, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        t0, done0 = started.setdefault(stage, (time.monotonic(), done))
        elapsed = time.monotonic() - t0
        rate = (done - done0) / elapsed if elapsed > 0 and done > done0 else 0.0
        speed = ""
        if rate > 0:  # items/s and the time left at that rate
            left = (total - done) / rate if total else 0.0
            speed = f" {rate:,.1f}/s ETA {int(left // 60)}:{int(left % 60):02d}" if done < total else \
                f" {rate:,.1f}/s in {elapsed:.1f} s"
        if tty:
            print(f"\r{prefix}{stage}: {done}/{total} ({pct}%){speed}\033[K", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)
        elif pct // 10 != last.get(stage, -1) or done == total:
            last[stage] = pct // 10
            print(f"{prefix}{stage}: {done}/{total} ({pct}%){speed}", file=sys.stderr, flush=True)
    return show
