"""Parent side of the benchmark's child processes: start, wait for ready, sample CPU/RSS, stop.

Only processes started here are ever signalled, by their own pid.
"""
from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class ServerProcess:
    """``python -m <module> <args>`` with stdout JSON lines; ready when it prints ``{"event": "ready"}``."""

    def __init__(self, name: str, module: str, args: list[str], log_dir: Path, *, ready_timeout_s: float = 120.0,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it until stop() closes it
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env)
        self.ps = psutil.Process(self.proc.pid)
        self.info: dict[str, Any] = {}
        try:
            self.info = self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        last_progress = 0.0
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: not ready within {timeout_s:.0f} s (log: {self.log_path})")
            if not sel.select(timeout=min(left, 1.0)):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} (log: {self.log_path})")
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"{self.name} exited before ready (log: {self.log_path})")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                event = msg.get("event")
                if event == "ready":
                    sel.close()
                    return msg
                if event == "failed":
                    raise RuntimeError(f"{self.name} failed to start: {msg} (log: {self.log_path})")
                if event == "progress" and time.monotonic() - last_progress > 5:
                    last_progress = time.monotonic()
                    log(f"  {self.name}: {msg.get('stage')} {msg.get('done', '')}/{msg.get('total', '')}")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process and its threads so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def rss_split_mb(self) -> dict[str, float]:
        """RSS split into anonymous (heap: Python objects, models) and file-backed (mmapped files, libraries)."""
        out: dict[str, float] = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    out[key[3:].lower() + "_mb"] = round(int(value.split()[0]) / 1024, 1)
        except (OSError, ValueError):
            pass
        return out

    def uss_mb(self) -> float | None:
        try:
            return self.ps.memory_full_info().uss / 2**20
        except (psutil.AccessDenied, AttributeError):
            return None

    def stop(self) -> None:
        """Close stdin (the child's stop signal), then SIGTERM, then SIGKILL — this pid only."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RssSampler:
    """Samples a process's RSS every ``interval_s`` in a thread; ``peak_mb`` and ``samples``."""

    def __init__(self, proc: ServerProcess, interval_s: float = 0.1) -> None:
        self.proc, self.interval_s = proc, interval_s
        self.samples: list[tuple[float, float]] = []
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                mb = self.proc.rss_mb()
            except psutil.Error:
                return
            self.samples.append((round(time.monotonic() - self._t0, 2), round(mb, 1)))
            self.peak_mb = max(self.peak_mb, mb)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def http_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
              timeout_s: float = 30.0) -> tuple[int, Any, dict[str, str]]:
    """One blocking request from the runner (set-up calls, not measurements)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return status, parsed, hdrs
