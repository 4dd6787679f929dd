"""Helpers for the benchmark's server child processes (stand-ins, floor, gateway).

A child reports on stdout as JSON lines (``{"event": "ready", ...}``) and stops on SIGTERM/SIGINT
or when its stdin closes — so it also goes away by itself if the runner dies.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from typing import Any


def emit(**fields: Any) -> None:
    """One JSON line on stdout for the parent."""
    print(json.dumps(fields), flush=True)


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM/SIGINT or when stdin reaches EOF (call inside the running loop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True, name="stdin-watch").start()
    return stop
