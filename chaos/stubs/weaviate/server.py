"""The stand-in: the REST and gRPC halves over one shared state, and its command line."""
from __future__ import annotations

import argparse
import asyncio
import json

import grpc
from aiohttp import web
from weaviate.proto.v1 import weaviate_pb2_grpc

from chaos.stubs.httpfaults import FaultInjector, serve_until_signalled
from gateway.extras import require
from chaos.stubs.weaviate.core import _rest_error_body
from chaos.stubs.weaviate.grpc_api import GrpcHalf, _Servicer
from chaos.stubs.weaviate.rest_api import RestHalf
from chaos.stubs.weaviate.store import GRPC_MAX_MESSAGE_SIZE, hashing_vectorizer


class FakeWeaviate(RestHalf, GrpcHalf):
    """In-memory Weaviate over real sockets: aiohttp REST + grpc.aio, with switchable faults.

    ``vectorizer`` turns text into a vector for near_text, hybrid without a vector, and inserts
    without a vector into collections configured with a vectorizer module; without it those
    answer UNKNOWN like a real server whose collection has no usable vectorizer. ``seed`` seeds
    the RNG behind ``faults.error_rate``. ``api_key`` (optional) makes REST demand
    ``Authorization: Bearer <key>`` and gRPC the same metadata, as a server with API-key auth.
    """

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0) -> None:
        """Bind REST and gRPC (port 0 = ephemeral) and serve; sets ``http_port``/``grpc_port``."""
        if self.injector.closing:  # restarted after stop(): a closed injector releases holds at once
            self.injector = FaultInjector(self.faults, seed=self._seed, error_body=_rest_error_body)
        self._runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, http_port)
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])

        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_SIZE),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_SIZE),
        ])
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), server)
        # The client's is_live() and connect-time ping use grpc.health.v1 (grpcio-health-checking: [chaos] extra).
        require("grpc_health", extra="chaos", purpose="the Weaviate stand-in")
        from grpc_health.v1 import health_pb2_grpc
        from grpc_health.v1.health import aio as health_aio

        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        self.grpc_port = server.add_insecure_port(f"{host}:{grpc_port}")
        await server.start()
        self._grpc_server = server

    async def stop(self) -> None:
        """Release hung calls (they answer UNAVAILABLE), then stop both servers."""
        self.injector.close()
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=0.5)
            self._grpc_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeWeaviate":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()



# --------------------------------------------------------------------------------------------
# Standalone entry point


async def _serve_forever(args: argparse.Namespace) -> None:
    vectorizer = hashing_vectorizer(args.hash_dim) if args.hash_dim else None
    fake = FakeWeaviate(vectorizer=vectorizer, seed=args.seed, api_key=args.api_key)
    await fake.start(args.host, args.http_port, args.grpc_port)
    print(json.dumps({"http_port": fake.http_port, "grpc_port": fake.grpc_port}), flush=True)
    await serve_until_signalled(fake.stop)


def main(argv: list[str] | None = None) -> None:
    """``python -m chaos.stubs.weaviate``: serve until SIGINT/SIGTERM; prints the bound ports as JSON."""
    parser = argparse.ArgumentParser(prog="python -m chaos.stubs.weaviate", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="seed for faults.error_rate")
    parser.add_argument("--api-key", default=None, help="require this API key (REST and gRPC)")
    parser.add_argument("--hash-dim", type=int, default=0,
                        help="enable near_text with a hashing vectorizer of this dimension (0 = none)")
    asyncio.run(_serve_forever(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
