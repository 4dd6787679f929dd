"""``python -m chaos.proxy`` / ``rag-sidecar chaos proxy``: run the fault proxy like ``toxiproxy-server``."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos.proxy.errors import ApiError
from chaos.proxy.server import FaultProxyServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.proxy",
        description="TCP fault proxy speaking Toxiproxy's HTTP API (flags as toxiproxy-server).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="API host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8474, help="API port (default 8474; 0 picks a free one)")
    parser.add_argument("--config", type=Path, help="JSON list of proxies to create at start-up, as for /populate")
    parser.add_argument("--seed", type=int, help="seed for toxicity draws, jitter and slicer sizes")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM. Prints ``fault proxy API listening on <url>`` once ready.

    Returns 0 on a clean stop, 2 for an unreadable ``--config`` (checked before binding anything),
    1 when the config's proxies cannot be created.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    proxies: list[Any] = []
    if args.config is not None:
        try:
            proxies = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            print(f"--config {args.config}: {exc}", file=sys.stderr)
            return 2
        if not isinstance(proxies, list):
            print(f"--config {args.config}: expected a JSON list of proxies", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_serve(args.host, args.port, proxies, args.seed))
    except KeyboardInterrupt:
        return 0


async def _serve(host: str, port: int, proxies: list[Any], seed: int | None) -> int:
    server = FaultProxyServer(seed=seed)
    await server.start(host, port)
    try:
        if proxies:
            try:
                created = await server.populate(proxies)
            except ApiError as exc:
                print(f"--config: {exc.message}", file=sys.stderr)
                return 1
            for proxy in created:
                print(f"proxy {proxy.name}: {proxy.listen} -> {proxy.upstream}", flush=True)
        print(f"fault proxy API listening on {server.api_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        await server.stop()
