"""One local drill stack (stand-ins + fault proxy + gateway subprocesses) shared by the chaos tests.

The stack's asyncio subprocess handles belong to the loop that started them, so that loop lives in a
thread of its own for the whole session; the tests run their drills from their own loops — drills
only talk HTTP to the stack, as they would to staging.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Coroutine, Iterator

import pytest

from chaos.drill import DrillTarget
from chaos.local import LocalStack

OPEN_S = 2.0  # breakers re-try after 2 s, so recovery fits inside a short drill


class StackThread:
    """A :class:`LocalStack` whose event loop runs in a daemon thread."""

    def __init__(self, workdir: Path, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chaos-stack", daemon=True)
        self.thread.start()
        self.stack = LocalStack(workdir, say=lambda msg: None, **kwargs)

    def _call(self, coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self) -> None:
        self._call(self.stack.start(), 180)

    def stop(self) -> None:
        try:
            self._call(self.stack.stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    # What tests use (from any loop):
    def target(self) -> DrillTarget:
        return self.stack.target()

    def variables(self) -> dict[str, Any]:
        return self.stack.variables()

    async def reset(self) -> None:
        """No faults, breakers reset, counters zeroed, the gateway answering in full mode again."""
        await self.stack.reset()

    def log_tail(self, name: str = "gateway.log") -> str:
        return self.stack._tail(name, 30)


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackThread]:
    stack = StackThread(tmp_path_factory.mktemp("chaos-stack"), open_s=OPEN_S)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()
