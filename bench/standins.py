"""The three upstream stand-ins in one process, answering at once: ``python -m bench.standins``.

FakeEmbeddings (384-d hashed vectors), FakeWeaviate (REST + gRPC, in memory) and FakeAnthropic with a
fixed short reply. Both the gateway and the Python floor call these same servers in the same run.
Prints ``{"event": "ready", ...urls and ports}`` and serves until stdin closes or SIGTERM.
"""
from __future__ import annotations

import asyncio

from bench.child import emit, stop_event
from resilience.waits import wait_event

SHORT_REPLY = "Use csv.DictReader: it reads the header row and yields one dict per row [1]."


async def _trim(servers: list, stop: asyncio.Event) -> None:
    # The HTTP stand-ins record every request (for tests' assertions); under sustained load that list
    # grows without bound, so it is emptied once a second here.
    while not stop.is_set():
        for s in servers:
            s.requests.clear()
        await wait_event(stop, 1.0)


async def main() -> None:
    from chaos.stubs.anthropic import FakeAnthropic
    from chaos.stubs.embeddings import FakeEmbeddings
    from chaos.stubs.weaviate import FakeWeaviate

    stop = stop_event()
    embeddings, anthropic = FakeEmbeddings(dim=384), FakeAnthropic(reply=SHORT_REPLY)
    weaviate = FakeWeaviate(seed=1)
    await embeddings.start()
    await anthropic.start()
    await weaviate.start()
    emit(event="ready", embeddings_url=embeddings.url + "/v1", anthropic_url=anthropic.url,
         weaviate_http_port=weaviate.http_port, weaviate_grpc_port=weaviate.grpc_port)
    trim = asyncio.create_task(_trim([embeddings, anthropic], stop))
    try:
        await stop.wait()
    finally:
        trim.cancel()
        await weaviate.stop()
        await anthropic.stop()
        await embeddings.stop()


if __name__ == "__main__":
    asyncio.run(main())
