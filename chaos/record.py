"""Record what a failing sidecar really emits: the DogStatsD datagrams of a local-stack drill, timestamped.

    python -m chaos.record chaos/recordings/vector_db_hang.yaml --out tests/data/monitor_series/vector_db_hang.jsonl.gz

Brings up :class:`~chaos.local.LocalStack` with DogStatsD pointed at a UDP socket of this process
(flushed every second, as in production), runs the scenario with :class:`~chaos.drill.Drill` and
writes one JSON line per DogStatsD line: ``{"t": seconds since the stack started, "line": "..."}``
(gzip). The start-up is recorded too (the stack's own ``/readyz`` polling). ``--junk-rate N`` adds N
malformed requests per second (4xx in the metrics) alongside the drill's load. The recordings feed
``tests/test_monitors.py``, which runs each Datadog monitor's query over them.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import aiohttp
import yaml

from chaos.drill import Drill
from chaos.local import LocalStack, StackTimeouts
from chaos.scenario import parse_scenario
from resilience.waits import wait_event


class _Sink(asyncio.DatagramProtocol):
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lines: list[dict[str, Any]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        t = round(time.monotonic() - self.t0, 3)
        self.lines.extend({"t": t, "line": line} for line in data.decode("utf-8", "replace").splitlines() if line)


async def _junk(url: str, rate_per_s: float, stop: asyncio.Event) -> int:
    """Malformed POST /v1/query bodies at about ``rate_per_s`` (a scanner or a broken client: 4xx),
    from one sender per 10/s."""
    workers = max(1, int(rate_per_s // 10))
    sent = await asyncio.gather(*(_junk_worker(url, rate_per_s / workers, stop) for _ in range(workers)))
    return sum(sent)


async def _junk_worker(url: str, rate_per_s: float, stop: asyncio.Event) -> int:
    sent = 0
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.post(url + "/v1/query", data=b"{not json",
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
            except aiohttp.ClientError:
                pass
            sent += 1
            await wait_event(stop, 1.0 / rate_per_s)
    return sent


async def record(recipe_path: Path, out: Path, *, workdir: Path) -> dict[str, Any]:
    """Run one recipe (a scenario plus ``record:`` settings) and write its datagrams to ``out``."""
    recipe = yaml.safe_load(await asyncio.to_thread(recipe_path.read_text, encoding="utf-8"))
    settings = recipe.pop("record", {}) or {}
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    transport, sink = await loop.create_datagram_endpoint(lambda: _Sink(t0), local_addr=("127.0.0.1", 0),
                                                          family=socket.AF_INET)
    host, port = transport.get_extra_info("sockname")[:2]
    overrides = {section: dict(values) for section, values in (settings.get("overrides") or {}).items()}
    overrides["telemetry"] = {**overrides.get("telemetry", {}), "statsd_enabled": True,
                              "dogstatsd_url": f"udp://{host}:{port}", "env": "drill", "version": "recorded"}
    timeouts = StackTimeouts(**settings.get("timeouts", {}))
    age_days = settings.get("kb_age_days")

    def age_kb(stack: LocalStack) -> None:  # as if the ingest job had stopped running days ago
        for manifest in (stack.workdir / "data" / "kb" / "versions").glob("*/manifest.json"):
            data = json.loads(manifest.read_text(encoding="utf-8"))
            data["created_at"] = time.time() - float(age_days or 0) * 86400
            manifest.write_text(json.dumps(data, indent=2), encoding="utf-8")

    stack = LocalStack(workdir, open_s=float(settings.get("open_s", 2.0)), timeouts=timeouts, overrides=overrides,
                       before_gateway=age_kb if age_days else None)
    junk_stop = asyncio.Event()
    try:
        await stack.start()
        scenario = parse_scenario(recipe, variables={**stack.variables(), **settings.get("vars", {})},
                                  source=str(recipe_path))
        junk = None
        if settings.get("junk_rate"):
            junk = asyncio.create_task(_junk(stack.gateway_url, float(settings["junk_rate"]), junk_stop))
        drill_start_t = round(time.monotonic() - t0, 3)
        journal = await Drill(scenario, stack.target(), out_dir=None, png=False).run()
        junk_stop.set()
        if junk is not None:
            await junk
        await asyncio.sleep(float(settings.get("tail_s", 2.0)))
    finally:
        junk_stop.set()
        await stack.stop()
        await asyncio.sleep(1.5)  # the last flush
        transport.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"recipe": recipe_path.name, "status": journal.get("status"),
                            "phases": journal.get("phases"), "drill_start_t": drill_start_t,
                            "recorded_lines": len(sink.lines)}) + "\n")
        for entry in sink.lines:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
    return {"lines": len(sink.lines), "status": journal.get("status"), "out": str(out)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.record", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path, help="a scenario YAML with an optional `record:` section")
    parser.add_argument("--out", type=Path, required=True, help="where the .jsonl.gz recording goes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rag-record-") as tmp:
        print(asyncio.run(record(args.recipe, args.out, workdir=Path(tmp))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
