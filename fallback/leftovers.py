"""Who owns a temporary file or directory, so that only a crashed writer's leftovers are removed.

A temp name carries ``<pid>-<token>``: the pid alone is not enough in a container, where the gateway is
pid 1 after every restart and a previous incarnation's leftovers would look alive forever. The token is
random per process, so our own pid with another token is a dead predecessor.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

TOKEN = uuid.uuid4().hex[:8]
_TAG = re.compile(r"^(\d+)-([0-9a-f]{8})-")
LEGACY_AGE_S = 3600.0  # untagged leftovers (written by older releases) are removed once this old


def owner_tag() -> str:
    """``<pid>-<token>`` of this process; put it right after a temp name's prefix, then ``-``."""
    return f"{os.getpid()}-{TOKEN}"


def owner_alive(tag: str) -> bool:
    """Whether the process named by ``tag`` (``<pid>-<token>``, as made by :func:`owner_tag`) still runs."""
    pid_s, _, token = tag.partition("-")
    try:
        pid = int(pid_s)
    except ValueError:
        return False
    if pid == os.getpid():
        return token == TOKEN
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead(directory: Path, prefix: str) -> list[str]:
    """Remove entries ``<prefix><pid>-<token>-…`` of ``directory`` whose owner is gone (and untagged ones
    older than an hour). Returns the names removed; never raises for an entry that vanished meanwhile."""
    removed: list[str] = []
    try:
        entries = list(Path(directory).glob(prefix + "*"))
    except OSError:
        return removed
    for entry in entries:
        m = _TAG.match(entry.name[len(prefix):])
        if m is not None:
            if owner_alive(f"{m.group(1)}-{m.group(2)}"):
                continue
        else:
            try:
                if time.time() - entry.lstat().st_mtime < LEGACY_AGE_S:
                    continue
            except OSError:
                continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            continue
        removed.append(entry.name)
    return removed
