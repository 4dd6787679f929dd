"""A real `rag-sidecar serve` process on a free loopback port, for what only a process can show (a signal,
a SIGBUS, a restart). Logs are JSON lines on stderr, kept in a file and parsed on demand."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

ADMIN_TOKEN = "adm-token-1234"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``await start()`` waits (bounded) until /readyz answers 200 (or, with ``wait_ready=False``, anything)."""

    def __init__(self, data_dir: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "RAG_SIDECAR__SERVER__DATA_DIR": str(data_dir),
                    "RAG_SIDECAR__SERVER__PORT": str(self.port), "RAG_SIDECAR__KB__AUTO_INGEST_SAMPLE": "false",
                    "RAG_SIDECAR__AUTH__ADMIN_TOKEN": ADMIN_TOKEN, "RAG_SIDECAR__TELEMETRY__STATSD_ENABLED": "false",
                    "RAG_SIDECAR__LOGGING__LEVEL": "WARNING", **env}
        for name in ("RAG_SIDECAR_CONFIG", "ANTHROPIC_API_KEY"):
            self.env.pop(name, None)
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, *, wait_ready: bool = True, spawn: bool = True) -> "ServeProcess":
        """``spawn=False``: the caller has started ``self.proc`` itself (e.g. in a namespace)."""
        if spawn:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=self.env,
                                             stdout=subprocess.DEVNULL, stderr=log)
        assert self.proc is not None
        async with aiohttp.ClientSession() as http:
            for _ in range(600):  # bounded: 60 s for the process to listen and load its KB
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited with {self.proc.returncode}: {self.log_path.read_text()}")
                try:
                    async with http.get(self.url + "/readyz") as r:
                        if r.status == 200 or not wait_ready:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("rag-sidecar serve did not become ready")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
