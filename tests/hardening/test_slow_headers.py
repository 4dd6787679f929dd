"""Issue 11 item 5: slow-header clients cannot make the gateway unreachable.

Before: nothing timed out a connection trickling its request headers and nothing capped connections, so
1,100 such clients exhausted the process's file descriptors and nobody else got in.
"""
from __future__ import annotations

import asyncio
import resource
import subprocess
import sys

import aiohttp
import pytest

from gateway.connguard import GUARD
from tests.conftest import make_settings
from tests.serve_proc import ServeProcess

pytestmark = pytest.mark.timeout(120)
PARTIAL = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: "  # never finished


async def _open_tricklers(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(n):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            break
        w.write(PARTIAL)
        writers.append(w)
    await asyncio.gather(*(w.drain() for w in writers), return_exceptions=True)
    return writers


async def test_a_connection_that_never_finishes_its_headers_is_closed(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"server.header_timeout_s": 0.5}))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(PARTIAL)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed by the gateway, no answer
    writer.close()
    assert client.server.app[GUARD][0].snapshot()["header_timeouts"] == 1
    assert (await client.get("/livez")).status == 200  # a normal request is not affected


async def test_tricklers_beyond_the_cap_evict_each_other_not_real_clients(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"server.max_connections": 50}))
    writers = await _open_tricklers(client.port, 120)
    try:
        resp = await asyncio.wait_for(client.get("/livez"), timeout=5)
        assert resp.status == 200
        snap = client.server.app[GUARD][0].snapshot()
        assert snap["open"] <= 50 and snap["evicted"] >= 70
    finally:
        for w in writers:
            w.close()


async def test_a_serve_process_stays_reachable_past_its_file_descriptor_limit(data_dir, tmp_path):
    # The serve process gets 512 file descriptors; 1,100 tricklers (the finding) exhaust them without the cap.
    serve = ServeProcess(data_dir, tmp_path / "serve.log", RAG_SIDECAR__LOGGING__LEVEL="ERROR")

    def few_fds() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))

    with open(serve.log_path, "ab") as log:
        serve.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=serve.env,
                                      preexec_fn=few_fds, stdout=subprocess.DEVNULL, stderr=log)
    writers: list[asyncio.StreamWriter] = []
    try:
        await serve.start(spawn=False)
        writers = await _open_tricklers(serve.port, 1100)
        assert len(writers) == 1100
        ok = 0
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                try:
                    async with http.get(serve.url + "/livez", timeout=aiohttp.ClientTimeout(total=3)) as r:
                        ok += r.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    pass
        assert ok == 5
    finally:
        for w in writers:
            w.close()
        serve.stop()
