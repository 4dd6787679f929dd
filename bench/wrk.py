"""A compiled load generator for the bench: ``wrk`` 4.1 (Debian package ``wrk``; ``make bench-tools``).

The Python load generator (bench/loadgen.py) costs 0.14–0.24 ms of CPU per request on the same cores as
the servers it measures, which caps every "2 workers vs 1" ratio (see bench/scaleout.py's ceilings). wrk
costs a few µs per request. :func:`run_wrk` takes the same :class:`~bench.loadgen.LoadSpec` and returns
the same result shape as ``loadgen.run_load`` (req/s, latency summary, statuses, ``X-RAG-Mode`` counts,
degraded count, errors, every latency for merging interleaved slices), plus ``cpu_s`` — wrk's own CPU
(user + system, from ``wait4``) for the warm-up and measured runs.

How: a generated Lua script POSTs the spec's JSON bodies (cycled; ``unique_field`` appends
`` #<run>-<n>`` so every request is a new query), tallies status codes and the ``X-RAG-Mode`` /
``X-RAG-Degraded`` headers in ``response()``, and in ``done()`` prints the exact latency histogram (µs,
``latency(i)`` = i-th distinct value and its count) as ``benchgen-*`` lines. wrk has no warm-up: a first
run of ``warmup_s`` is discarded (its requests count as ``warmup_requests``), the second is measured.
wrk reads every response whole, streamed (SSE) ones included, so a stream's latency is to its last byte.
``server_timing`` is not collected here (sections asking for it use the Python load generator).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.loadgen import LoadSpec
from bench.stats import summarize_ms

MARK = "\x00benchgen-unique\x00"
_RATE_UNITS = {"": 1.0, "k": 1e3, "m": 1e6}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk_path() -> str | None:
    """The wrk binary, or None (``RAG_BENCH_LOADGEN=python`` hides it, to force the Python generator)."""
    if os.environ.get("RAG_BENCH_LOADGEN", "").lower() == "python":
        return None
    return shutil.which("wrk")


def wrk_version(path: str) -> str:
    res = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
    m = re.search(r"wrk (\S+)", res.stdout + res.stderr)
    return m.group(1) if m else "unknown"


def lua_str(s: str) -> str:
    """A Lua 5.1 string literal for ``s`` (UTF-8 bytes; every byte outside printable ASCII as ``\\ddd``)."""
    out = []
    for b in s.encode():
        if b in (0x22, 0x5C) or b < 0x20 or b > 0x7E:
            out.append(f"\\{b:03d}")
        else:
            out.append(chr(b))
    return '"' + "".join(out) + '"'


def lua_script(spec: LoadSpec, run_id: str) -> str:
    """The wrk script for ``spec``: POST bodies and headers, status/mode tally, histogram dump."""
    import json

    parts: list[tuple[str, str]] = []
    for body in spec.bodies:
        if spec.unique_field and isinstance(body, dict):
            text = json.dumps({**body, spec.unique_field: f"{body[spec.unique_field]} #{MARK}"})
            pre, _, post = text.partition(json.dumps(MARK)[1:-1])
            parts.append((pre, post))
        else:
            parts.append((json.dumps(body), ""))
    headers = {"Content-Type": "application/json", **spec.headers}
    path = urlsplit(spec.url).path or "/"
    return "\n".join([
        "wrk.method = \"POST\"",
        *(f"wrk.headers[{lua_str(k)}] = {lua_str(v)}" for k, v in headers.items()),
        f"local unique = {'true' if spec.unique_field else 'false'}",
        "local pre = {" + ", ".join(lua_str(p) for p, _ in parts) + "}",
        "local post = {" + ", ".join(lua_str(p) for _, p in parts) + "}",
        f"local run_id = {lua_str(run_id)}",
        f"local path = {lua_str(path)}",
        "local nbodies = #pre",
        "local reqs = {}",
        "local n = 0",
        "local threads = {}",
        "statuses, modes, degraded = {}, {}, 0",
        "function setup(thread) table.insert(threads, thread); thread:set(\"tid\", #threads) end",
        "function init(args)",
        "  if not unique then",
        "    for i = 1, nbodies do reqs[i] = wrk.format(nil, path, nil, pre[i]) end",
        "  end",
        "end",
        "function request()",
        "  n = n + 1",
        "  local k = (n - 1) % nbodies + 1",
        "  if unique then",
        "    return wrk.format(nil, path, nil, pre[k] .. run_id .. \"-\" .. tid .. \"-\" .. n .. post[k])",
        "  end",
        "  return reqs[k]",
        "end",
        "function response(status, headers, body)",
        "  statuses[status] = (statuses[status] or 0) + 1",
        "  local m = headers[\"X-RAG-Mode\"]",
        "  if m then modes[m] = (modes[m] or 0) + 1 end",
        "  if headers[\"X-RAG-Degraded\"] == \"true\" then degraded = degraded + 1 end",
        "end",
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        "  io.write(string.format(\"benchgen-summary %d %d %d %d %d %d %d\\n\", summary.requests, summary.duration,",
        "    e.connect, e.read, e.write, e.status, e.timeout))",
        "  for i = 1, #latency do",
        "    local v, c = latency(i)",
        "    io.write(string.format(\"benchgen-lat %d %d\\n\", v, c))",
        "  end",
        "  for _, t in ipairs(threads) do",
        "    for k, v in pairs(t:get(\"statuses\")) do io.write(string.format(\"benchgen-status %d %d\\n\", k, v)) end",
        "    for k, v in pairs(t:get(\"modes\")) do io.write(string.format(\"benchgen-mode %s %d\\n\", k, v)) end",
        "    io.write(string.format(\"benchgen-degraded %d\\n\", t:get(\"degraded\")))",
        "  end",
        "end",
        "",
    ])


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_text(out: str) -> dict[str, Any]:
    """wrk's own report: req/s, latency percentiles (``--latency``), non-2xx/3xx count, socket errors."""
    res: dict[str, Any] = {"percentiles_ms": {}, "non_2xx_3xx": 0,
                           "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", out, re.M)
    if m:
        res["requests"] = int(m.group(1))
        res["duration_ms"] = _ms(m.group(2))
    m = re.search(r"^Requests/sec:\s+([\d.]+)([kKmM]?)", out, re.M)
    if m:
        res["rps"] = float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    m = re.search(r"Latency Distribution\n((?:\s+\d+(?:\.\d+)?%\s+\S+\n)+)", out)
    if m:
        for line in m.group(1).splitlines():
            pct, value = line.split()
            res["percentiles_ms"][pct.rstrip("%")] = _ms(value)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        res["non_2xx_3xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    return res


def parse_script(out: str) -> dict[str, Any]:
    """The ``benchgen-*`` lines of :func:`lua_script`'s ``done()``."""
    res: dict[str, Any] = {"hist_us": [], "status": Counter(), "modes": Counter(), "degraded": 0}
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        f = rest.split()
        if kind == "benchgen-summary":
            res.update(requests=int(f[0]), duration_us=int(f[1]),
                       errors=dict(zip(("connect", "read", "write", "status", "timeout"), map(int, f[2:7]))))
        elif kind == "benchgen-lat":
            res["hist_us"].append((int(f[0]), int(f[1])))
        elif kind == "benchgen-status":
            res["status"][f[0]] += int(f[1])
        elif kind == "benchgen-mode":
            res["modes"][f[0]] += int(f[1])
        elif kind == "benchgen-degraded":
            res["degraded"] += int(f[0])
    if "requests" not in res:
        raise ValueError("wrk output has no benchgen-summary line (did the script's done() run?)")
    return res


def uncorrect(hist_us: list[tuple[int, int]], duration_us: int, requests: int, connections: int) -> list[tuple[int, int]]:
    """The latencies wrk measured, without the samples its coordinated-omission correction added.

    Before ``done()`` wrk 4 runs ``stats_correct(latency, interval)``, ``interval = duration_us /
    (requests / connections)`` (integer division): for every latency n ≥ 2·interval it adds data[n] more
    samples at n − interval, n − 2·interval, … while above interval — right for an open-loop client, but
    the bench is closed-loop (as the Python load generator: one latency per answer). Reading it backwards
    (descending, each index's addition comes only from higher original values) restores the measured ones.
    """
    per_conn = requests // connections if connections else 0
    if not hist_us or per_conn <= 0:
        return hist_us
    interval = duration_us // per_conn
    if interval <= 0:
        return hist_us
    corrected = dict(hist_us)
    original: dict[int, int] = {}
    for n in sorted(corrected, reverse=True):
        added = 0
        if n > interval:
            m = n + interval
            while m <= hist_us[-1][0]:
                added += original.get(m, 0)
                m += interval
        count = corrected[n] - added
        if count > 0:
            original[n] = count
    return sorted(original.items())


def to_result(spec: LoadSpec, measured: dict[str, Any], warmup_requests: int, cpu_s: float) -> dict[str, Any]:
    """``loadgen.run_load``'s result shape from a parsed measured run."""
    hist = uncorrect(measured["hist_us"], measured["duration_us"], measured["requests"], spec.concurrency)
    latencies = [us / 1e3 for us, count in hist for _ in range(count)]
    window = max(measured["duration_us"] / 1e6, 1e-9)
    errors = {f"wrk_{k}": v for k, v in measured["errors"].items() if v and k != "status"}
    answered = sum(measured["status"].values())
    return {
        "concurrency": spec.concurrency, "requests": answered, "warmup_requests": warmup_requests,
        "window_s": round(window, 3), "rps": round(answered / window, 1) if answered else 0.0,
        **summarize_ms(latencies), "status": {k: v for k, v in sorted(measured["status"].items())},
        "modes": dict(measured["modes"]), "degraded": measured["degraded"], "errors": errors,
        "server_timing": {}, "loadgen_cpu_s": cpu_s, "loadgen": "wrk",
        **({"raw_ms": latencies} if spec.return_raw else {}),
    }


def _run(path: str, spec: LoadSpec, script: Path, seconds: float) -> tuple[str, float]:
    """One wrk run of ``seconds``; its stdout and its CPU seconds (user + system, from ``wait4``).

    wrk takes whole seconds only: it is started for a whole second more and stopped with SIGINT (its
    own clean stop: the threads finish within ~0.1 s, ``done()`` runs with the real duration)."""
    seconds = max(seconds, 0.05)
    args = [path, "-t1", f"-c{spec.concurrency}", f"-d{math.ceil(seconds) + 1}s", f"--timeout={math.ceil(spec.timeout_s)}s",
            "--latency", "-s", str(script), spec.url]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err)
        lock, reaped = threading.Lock(), False

        def interrupt() -> None:
            with lock:
                if not reaped:
                    proc.send_signal(signal.SIGINT)

        timer = threading.Timer(seconds, interrupt)
        timer.start()
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: the pid stays ours
            with lock:
                timer.cancel()
                _, status, usage = os.wait4(proc.pid, 0)
                reaped = True
        except BaseException:
            timer.cancel()
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errtext = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0 or "benchgen-summary" not in text:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {errtext[-2000:]} {text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime


def run_wrk(spec: LoadSpec, path: str) -> dict[str, Any]:
    """Run ``spec`` with wrk: a discarded warm-up run, then the measured run."""
    if spec.server_timing:
        raise ValueError("wrk does not collect Server-Timing; use the Python load generator")
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="benchgen-wrk-") as tmp:
        warm_cpu, warmup_requests = 0.0, 0
        if spec.warmup_s > 0:
            script = Path(tmp) / "warm.lua"
            script.write_text(lua_script(spec, run_id + "w"))
            text, warm_cpu = _run(path, spec, script, spec.warmup_s)
            warmup_requests = parse_script(text)["requests"]
        script = Path(tmp) / "run.lua"
        script.write_text(lua_script(spec, run_id))
        text, cpu = _run(path, spec, script, spec.duration_s)
    result = to_result(spec, parse_script(text), warmup_requests, warm_cpu + cpu)
    # wrk's own percentiles include its coordinated-omission correction; the summary above does not.
    result["wrk"] = {("percentiles_ms_co_corrected" if k == "percentiles_ms" else k): v
                     for k, v in parse_text(text).items() if k != "requests"}
    return result
