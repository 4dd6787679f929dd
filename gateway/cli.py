"""The gateway's commands: serve | ingest | query | config | kb | eval | jobs (``python -m gateway.cli``).

The ``rag-sidecar`` entry point (:mod:`rag_sidecar.cli`) adds the ``chaos`` commands on top: the
gateway never imports the chaos tools.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any, Callable, Sequence

from gateway.config import ConfigError, Settings, load_settings, masked_dump
from gateway.ingest import in_process
from gateway.progress import progress_printer


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    ov = {k: v for k, v in overrides.items() if v is not None}
    return load_settings(args.config, overrides=ov)


# ---- commands -------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import heap
    from gateway.app import create_app
    from gateway.shutdown import serve
    from gateway.workers import WorkerContext, supervise

    settings = _settings(args, **{"server.host": args.host, "server.port": args.port})
    worker = WorkerContext.from_env()  # set when this process is one of a supervisor's workers
    if args.workers > 1 and worker is None:
        from gateway.logs import resource_fields, setup_logging

        setup_logging(settings.logging.level, settings.logging.format, service=resource_fields(settings.telemetry))
        return supervise(count=args.workers, host=settings.server.host, port=settings.server.port,
                         config=args.config, grace_s=settings.server.shutdown_grace_s)
    heap.enable(settings.server.gc_freeze, settings.server.gc_gen0_threshold)
    app = create_app(settings)
    if worker is not None:
        worker.attach(app)
    print(f"rag-sidecar serving on http://{settings.server.host}:{settings.server.port} "
          f"(llm={settings.llm.effective_backend}, vector_store={settings.vector_store.backend}, "
          f"embedder={settings.embedder.backend}, data_dir={settings.server.data_dir})", file=sys.stderr, flush=True)
    # Own serve loop, not web.run_app: the grace is honoured exactly and cut requests are 503s (shutdown.py).
    asyncio.run(serve(app, settings.server.host, settings.server.port, settings.server.shutdown_grace_s,
                      **(worker.site_options() if worker is not None else {})))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = _settings(args)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: no such path: {', '.join(missing)}", file=sys.stderr)
        return 2
    from gateway.ingest import ingest

    from gateway.quality import QualityGateFailed

    if args.golden and not Path(args.golden).is_file():
        print(f"error: --golden: no such file: {args.golden}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(ingest(settings, [Path(p) for p in args.paths], activate=not args.no_activate,
                                    label=args.label or "", progress=progress_printer(),
                                    golden=Path(args.golden) if args.golden else None, min_mrr=args.min_mrr,
                                    max_mrr_drop=args.max_mrr_drop, wait_quality=args.wait_quality))
    except QualityGateFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(json.dumps({"version": exc.version, "activated": False, "evaluation": exc.evaluation}))
        return 1
    out = result.as_dict()
    if args.golden:
        from gateway.ingest import open_kb

        out["evaluation"] = next(v for v in open_kb(settings).list_versions()
                                 if v["version"] == result.version).get("evaluation")
    print(json.dumps(out))
    return 0


async def _query_in_process(settings: Settings, question: str, top_k: int | None) -> dict[str, Any]:
    from gateway.pipeline import LadderExhausted, QueryRequest
    from resilience import Deadline

    async def ask(state: Any) -> dict[str, Any]:
        req = QueryRequest(query=question, top_k=top_k or settings.server.default_top_k, request_id="cli")
        try:
            result = await state.pipeline.answer(req, Deadline(settings.server.request_timeout_s))
        except LadderExhausted as exc:
            return {"answer": None, "mode": "unavailable", "degradations": exc.trace.degradations}
        return result.contract()

    return await in_process(settings, ask)


async def _evaluate(settings: Settings, golden_path: Path, depth: int) -> dict[str, Any]:
    """Retrieval metrics for the normal path and the forced keyword fallback over a golden set."""
    from fallback.evaluation import evaluate, load_golden, qrels_of, ranked_sources
    from gateway.pipeline import QueryRequest, Trace
    from resilience import Deadline

    golden = load_golden(golden_path)
    qrels = qrels_of(golden)

    async def run(state: Any) -> dict[str, Any]:
        normal: dict[str, list[str]] = {}
        keyword: dict[str, list[str]] = {}
        modes: dict[str, int] = {}
        show = progress_printer("eval ")
        for n, q in enumerate(golden, 1):
            trace = Trace()
            req = QueryRequest(query=q.query, top_k=depth, request_id=f"eval-{q.id}")
            chunks = await state.pipeline.retrieve(req, Deadline(settings.server.request_timeout_s), trace)
            normal[q.id] = ranked_sources(chunks)
            modes[trace.mode] = modes.get(trace.mode, 0) + 1
            index = state.kb.keyword_index
            keyword[q.id] = ranked_sources(index.search(q.query, depth)) if index is not None else []
            show("queries", n, len(golden))
        return {"normal": evaluate(normal, qrels), "keyword_fallback": evaluate(keyword, qrels),
                "normal_path_modes": modes, "kb_version": state.kb.version if state.kb else None}

    return await in_process(settings, run)


def cmd_eval(args: argparse.Namespace) -> int:
    from fallback.evaluation import format_table

    settings = _settings(args)
    out = asyncio.run(_evaluate(settings, Path(args.golden), args.depth))
    results = {k: {m: v for m, v in out[k].items() if m != "per_query"} for k in ("normal", "keyword_fallback")}
    if args.json:
        print(json.dumps({**out, **({} if args.per_query else {k: results[k] for k in results})}, indent=2))
    else:
        print(f"golden set: {args.golden}  kb_version: {out['kb_version']}  "
              f"normal path modes: {out['normal_path_modes']}\n")
        print(format_table(results))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    if args.url:
        import urllib.request

        body = json.dumps({"query": args.question, **({"top_k": args.top_k} if args.top_k else {})}).encode()
        req = urllib.request.Request(args.url.rstrip("/") + "/v1/query", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - operator-given URL
            out = json.loads(resp.read())
    else:
        out = asyncio.run(_query_in_process(_settings(args), args.question, args.top_k))
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(out.get("answer"))
        print(f"\nmode={out.get('mode')} degraded={out.get('degraded')} kb_version={out.get('kb_version')}")
        for i, s in enumerate(out.get("sources", []), 1):
            print(f"  [{i}] {s['source']} — {s['title']} (score {s['score']}, {s['retriever']})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.print:
        import yaml

        print(yaml.safe_dump(masked_dump(settings), sort_keys=False))
    else:
        print("config OK", file=sys.stderr)
    return 0


def cmd_kb(args: argparse.Namespace) -> int:
    from gateway.ingest import open_kb, sync
    from gateway.kb import KBError
    from gateway.progressive import vectors_label

    settings = _settings(args)
    kb = open_kb(settings)
    try:
        if args.kb_cmd == "list":
            for v in kb.list_versions():
                mark = "*" if v["active"] else " "
                ev = v.get("evaluation") or {}
                quality = (f"  mrr={ev['normal']['mrr']:.3f} (keyword {ev['keyword_fallback']['mrr']:.3f}, "
                           f"{ev['golden']})" if ev else "")
                vectors = vectors_label(kb, v["version"], v)
                print(f"{mark} {v['version']}  chunks={v['chunk_count']:<6} docs={v['document_count']:<4} "
                      f"created={time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(v['created_at']))}  "
                      f"{f'vectors: {vectors}  ' if vectors else ''}{v.get('label', '')}{quality}")
        elif args.kb_cmd == "activate":
            print(json.dumps(kb.activate(args.version)))
        elif args.kb_cmd == "rollback":
            print(json.dumps(kb.rollback()))
        elif args.kb_cmd == "upgrade":
            print(json.dumps(asyncio.run(_upgrade(settings, args.version))))
        elif args.kb_cmd == "sync":
            version = asyncio.run(sync(settings, activate=not args.no_activate, progress=progress_printer()))
            print(json.dumps({"version": version}))
    except KBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _upgrade(settings: Settings, version: str | None) -> dict[str, Any]:
    """``kb upgrade``: embed a progressive version's quality vectors here (or wait for the gateway doing it)."""
    from gateway.ingest import open_kb
    from gateway.kb import KBError
    from gateway.progressive import wait_or_upgrade
    from gateway.upstreams.factory import build_embedder

    kb = open_kb(settings)
    version = version or kb.active_version()
    if version is None:
        raise KBError("no active version to upgrade")
    embedder = build_embedder(settings)
    if embedder is None:
        raise KBError("embedder.backend is none: there is no quality model to upgrade with")
    try:
        t0 = time.perf_counter()
        await wait_or_upgrade(kb, version, embedder, batch_size=settings.embedder.batch_size,
                              progress=progress_printer())
        return {"version": version, "vectors": "quality", "seconds": round(time.perf_counter() - t0, 2)}
    finally:
        await embedder.close()


def _workers(value: str) -> int:
    from gateway.workers import parse_workers

    return parse_workers(value)


Register = Callable[[Any], None]  # adds commands to the subparsers (argparse's _SubParsersAction)


def build_parser(*commands: Register) -> argparse.ArgumentParser:
    """The gateway's commands, plus what each of ``commands`` registers (see :func:`main`)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: `--config` works before or after the command without one overwriting the other.
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="YAML config file (default: $RAG_SIDECAR_CONFIG, else built-in defaults)")
    p = argparse.ArgumentParser(prog="rag-sidecar", description=__doc__, parents=[common])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    s = sub.add_parser("serve", help="serve the gateway (default 127.0.0.1:8080)")
    s.add_argument("--host", help="listen address (default: server.host)")
    s.add_argument("--port", type=int, help="listen port (default: server.port)")
    s.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="processes sharing the port (default 1; auto = one per CPU); SIGHUP reloads them")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("ingest", help="ingest documents (.md .txt .html) into a new KB version")
    s.add_argument("paths", nargs="+", help="files or directories")
    s.add_argument("--no-activate", action="store_true", help="build the version but keep the current one active")
    s.add_argument("--label", help="free text stored in the version's manifest")
    s.add_argument("--golden", help="golden set (JSON lines): evaluate the new version before activating it")
    s.add_argument("--min-mrr", type=float, help="with --golden: refuse activation below this MRR")
    s.add_argument("--wait-quality", action="store_true",
                   help="progressive ingest: return only once the quality vectors are done (embedded here, "
                        "or by the gateway already upgrading the version)")
    s.add_argument("--max-mrr-drop", type=float, default=0.02,
                   help="with --golden: refuse activation when MRR drops more than this below the active "
                        "version's on the same golden file (default 0.02)")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("query", help="ask a question (in-process, or against --url)")
    s.add_argument("question")
    s.add_argument("--top-k", type=int, help="chunks to retrieve (default: server.default_top_k)")
    s.add_argument("--url", help="a running gateway, e.g. http://127.0.0.1:8080")
    s.add_argument("--json", action="store_true", help="print the whole response contract")
    s.set_defaults(func=cmd_query)

    s = sub.add_parser("config", help="validate the config; --print shows the effective config, secrets masked")
    s.add_argument("--print", action="store_true", help="print the effective config as YAML")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("kb", help="KB versions: list | activate VERSION | rollback | sync")
    kb_sub = s.add_subparsers(dest="kb_cmd", required=True)
    kb_sub.add_parser("list", parents=[common], help="list versions (* = active)")
    a = kb_sub.add_parser("activate", parents=[common],
                          help="make VERSION active (atomic; a running gateway picks it up)")
    a.add_argument("version")
    kb_sub.add_parser("rollback", parents=[common], help="activate the version before the active one")
    a = kb_sub.add_parser("upgrade", parents=[common],
                          help="embed a progressive version's quality vectors now (default: the active one)")
    a.add_argument("version", nargs="?")
    a = kb_sub.add_parser("sync", parents=[common],
                          help="rebuild the keyword index from the vector store's collection (cursor)")
    a.add_argument("--no-activate", action="store_true", help="build the version but keep the current one active")
    s.set_defaults(func=cmd_kb)

    s = sub.add_parser("eval", help="retrieval metrics (P@5, R@5, nDCG@10, MRR) over a golden set, "
                                    "normal path and forced keyword fallback")
    s.add_argument("golden", help="JSON lines: {id, query, relevant: {source: grade}}")
    s.add_argument("--depth", type=int, default=10, help="chunks retrieved per query")
    s.add_argument("--json", action="store_true", help="print the metrics as JSON")
    s.add_argument("--per-query", action="store_true", help="with --json: include per-query scores")
    s.set_defaults(func=cmd_eval)

    from gateway.jobs.cli import register as register_jobs

    register_jobs(sub)
    for register in commands:
        register(sub)
    return p


def main(argv: Sequence[str] | None = None, *, commands: Sequence[Register] = ()) -> int:
    """Run one command; ``commands`` add subcommands (the ``rag-sidecar`` entry point adds ``chaos``)."""
    args = build_parser(*commands).parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    from gateway.kb import KBError
    from resilience import DependencyUnavailable, UpstreamError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as exc:
        print(f"error: {exc.url} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"error: cannot reach the gateway: {exc.reason}", file=sys.stderr)
        return 1
    except (UpstreamError, DependencyUnavailable, ConnectionError, TimeoutError) as exc:
        # An operator command against an unreachable upstream: say which, no stack trace.
        print(f"error: upstream failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
