"""``rag-sidecar chaos toxic``: Toxiproxy's CLI verbs against our fault proxy or a real Toxiproxy.

    rag-sidecar chaos toxic list                                   (toxiproxy-cli list)
    rag-sidecar chaos toxic inspect weaviate_grpc                  (toxiproxy-cli inspect)
    rag-sidecar chaos toxic create redis -l 127.0.0.1:26379 -u 127.0.0.1:6379
    rag-sidecar chaos toxic toggle|enable|disable|delete redis
    rag-sidecar chaos toxic add weaviate_grpc -t latency -n slow -a latency=1000 -a jitter=50 [--upstream] [--tox 0.5]
    rag-sidecar chaos toxic update weaviate_grpc -n slow -a latency=2000 [--tox 1]
    rag-sidecar chaos toxic remove weaviate_grpc -n slow

The same names, aliases and flags as ``toxiproxy-cli`` (``toxic add``/``update``/``remove`` are
flattened one level: ``add``, ``update``, ``remove``); ``--host`` (default ``$TOXIPROXY_URL`` or
http://127.0.0.1:8474). Output is the API's JSON (``list`` also prints a table on a terminal).
Exit 0 on success, 1 on an API error (its message on stderr), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from chaos.proxy.client import ToxiproxyClient, ToxiproxyError

DEFAULT_HOST = "http://127.0.0.1:8474"


def _attributes(pairs: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--attribute {pair!r}: expected key=value")
        try:
            out[key] = int(value)
        except ValueError:
            raise SystemExit(f"--attribute {pair!r}: the value must be an integer (ms, KB/s, bytes)") from None
    return out


async def _run(args: argparse.Namespace) -> Any:
    host = args.host or os.environ.get("TOXIPROXY_URL") or DEFAULT_HOST
    if "://" not in host:
        host = "http://" + host  # toxiproxy-cli accepts host:port
    async with ToxiproxyClient(host) as client:
        verb = args.toxic_verb
        if verb == "list":
            return await client.proxies()
        if verb == "inspect":
            return await client.get_proxy(args.proxy)
        if verb == "create":
            return await client.create_proxy(args.proxy, args.upstream, args.listen)
        if verb == "toggle":
            proxy = await client.get_proxy(args.proxy)
            return await (client.disable if proxy["enabled"] else client.enable)(args.proxy)
        if verb == "enable":
            return await client.enable(args.proxy)
        if verb == "disable":
            return await client.disable(args.proxy)
        if verb == "delete":
            await client.delete_proxy(args.proxy)
            return {"deleted": args.proxy}
        if verb == "add":
            return await client.add_toxic(args.proxy, args.type, attributes=_attributes(args.attribute),
                                          stream="upstream" if args.upstream else "downstream",
                                          toxicity=args.toxicity if args.toxicity is not None else 1.0,
                                          name=args.toxic_name)
        if verb == "update":
            return await client.update_toxic(args.proxy, args.toxic_name,
                                             attributes=_attributes(args.attribute) if args.attribute else None,
                                             toxicity=args.toxicity)
        if verb == "remove":
            await client.remove_toxic(args.proxy, args.toxic_name)
            return {"removed": args.toxic_name, "proxy": args.proxy}
    raise SystemExit(f"unknown verb {verb}")


def cmd_toxic(args: argparse.Namespace) -> int:
    args.toxic_verb = getattr(args, "_aliases", {}).get(args.toxic_verb, args.toxic_verb)
    try:
        result = asyncio.run(_run(args))
    except ToxiproxyError as exc:
        print(f"toxiproxy: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"toxiproxy unreachable: {exc}", file=sys.stderr)
        return 1
    if args.toxic_verb == "list" and sys.stdout.isatty():
        for name, p in sorted(result.items()):
            toxics = ", ".join(t["name"] for t in p.get("toxics", [])) or "-"
            print(f"{name:<24} {p['listen']:<22} {p['upstream']:<22} {'enabled' if p['enabled'] else 'disabled':<9}"
                  f" {toxics}")
    else:
        print(json.dumps(result, indent=2))
    return 0


def add_parser(sub: Any) -> None:
    """``toxic`` and its verbs under ``rag-sidecar chaos``."""
    t = sub.add_parser("toxic", help="Toxiproxy's CLI verbs: list, inspect, create, toggle, delete, add/update/"
                       "remove toxics", description=__doc__.split("\n\n")[0])
    t.add_argument("--host", help=f"Toxiproxy API (default $TOXIPROXY_URL or {DEFAULT_HOST})")
    verbs = t.add_subparsers(dest="toxic_verb", required=True, metavar="VERB")
    verbs.add_parser("list", aliases=["l", "li", "ls"], help="list all proxies")
    for name, aliases, text in (("inspect", ["i", "ins"], "inspect a single proxy"),
                                ("toggle", ["tog"], "toggle enabled status on a proxy"),
                                ("enable", ["en"], "enable a proxy"), ("disable", ["dis"], "disable a proxy"),
                                ("delete", ["d"], "delete a proxy")):
        verbs.add_parser(name, aliases=aliases, help=text).add_argument("proxy")
    c = verbs.add_parser("create", aliases=["c", "new"], help="create a new proxy")
    c.add_argument("proxy")
    c.add_argument("--listen", "-l", required=True, help="listen address, e.g. 127.0.0.1:26379")
    c.add_argument("--upstream", "-u", required=True, help="upstream address, e.g. 127.0.0.1:6379")
    for name, aliases, text in (("add", ["a"], "add a toxic"), ("update", ["u"], "update a toxic"),
                                ("remove", ["r", "rm"], "remove a toxic")):
        v = verbs.add_parser(name, aliases=aliases, help=text)
        v.add_argument("proxy")
        v.add_argument("--toxicName", "-n", dest="toxic_name", required=name != "add", help="toxic name")
        if name == "remove":
            continue
        if name == "add":
            v.add_argument("--type", "-t", required=True, help="latency, bandwidth, slow_close, timeout, "
                           "reset_peer, slicer, limit_data, noop")
            stream = v.add_mutually_exclusive_group()
            stream.add_argument("--upstream", "-u", action="store_true", help="toxic on the upstream stream")
            stream.add_argument("--downstream", "-d", action="store_true", help="toxic on the downstream (default)")
        v.add_argument("--toxicity", "--tox", type=float, help="probability the toxic applies (0..1)")
        v.add_argument("--attribute", "-a", action="append", metavar="KEY=VALUE", help="a toxic attribute")
    t.set_defaults(func=cmd_toxic)
    # argparse stores the alias used; map it back to the verb's name
    t.set_defaults(_aliases={a: n for n, al in (("list", ["l", "li", "ls"]), ("inspect", ["i", "ins"]),
                                                ("toggle", ["tog"]), ("enable", ["en"]), ("disable", ["dis"]),
                                                ("delete", ["d"]), ("create", ["c", "new"]), ("add", ["a"]),
                                                ("update", ["u"]), ("remove", ["r", "rm"])) for a in al})
