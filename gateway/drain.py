"""The requests one server is handling, and where its shutdown is (used by ``gateway.shutdown``)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Drain:
    """The requests a server is handling, and where its shutdown is."""

    tasks: set[asyncio.Task] = field(default_factory=set)
    cut_tasks: set[asyncio.Task] = field(default_factory=set)
    draining: bool = False  # SIGTERM seen: no new requests
    grace_s: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def enter(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        self.idle.clear()

    def leave(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.idle.set()

    def was_cut(self, task: asyncio.Task | None) -> bool:
        """Whether ``task`` was cancelled by the end of the grace (not by its client going away)."""
        return task is not None and task in self.cut_tasks

    def cut(self) -> int:
        """Cancel every request still running; returns how many."""
        running = [t for t in self.tasks if not t.done()]
        for task in running:
            self.cut_tasks.add(task)
            task.cancel()
        return len(running)
