"""``rag-sidecar chaos run | proxy | list`` (also ``python -m chaos.cli ...``).

    chaos run SCENARIO... --target URL [--toxiproxy URL] [--stub NAME=URL ...] [--admin-token T] [--out DIR]
    chaos run --all --local [--out DIR]        # the SRE's one-command drill: local stack + every scenario
    chaos proxy [--host H] [--port P] [--config proxies.json]   # the Toxiproxy-compatible fault proxy
    chaos list                                  # the scenarios shipped in chaos/scenarios/, validated

Exit status of ``run``: 0 every drill passed, 1 some deviated or failed, 2 bad arguments or an invalid
scenario, 130 interrupted (rollbacks ran; the journal says ``aborted``).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from chaos.scenario import SCENARIO_DIR, Scenario, ScenarioError, all_scenarios, load_scenario, read_queries

ADMIN_TOKEN_ENV = "RAG_SIDECAR__AUTH__ADMIN_TOKEN"
DESCRIPTION = ("Chaos drills: run scenarios against a gateway (or a local stack), serve the Toxiproxy-compatible "
               "fault proxy, list the scenarios. See docs/chaos.md.")


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"{flag} expects NAME=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _parse_var(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=sys.stderr)
    sys.stderr.flush()


# ---- run ----------------------------------------------------------------------------------------
def _missing_extras(args: argparse.Namespace) -> str:
    """Why the drill could not finish, said before it starts (the PNG is drawn at the end)."""
    from gateway.extras import MissingExtra, require

    needs = [] if args.no_png else [("matplotlib", "timeline.png")]
    if args.local:
        needs.append(("grpc_health", "the local stack's Weaviate stand-in"))
    for module, purpose in needs:
        try:
            require(module, extra="chaos", purpose=purpose)
        except MissingExtra as exc:
            return str(exc) + (" (or pass --no-png)" if module == "matplotlib" else "")
    return ""


def cmd_run(args: argparse.Namespace) -> int:
    if args.mutants:
        from chaos.mutants import main_sync

        return main_sync(args.mutant, write=args.write_doc, out=Path(args.out) / "mutants.json" if args.out else None)
    names = [str(p) for p in all_scenarios()] if args.all else list(args.scenarios)
    if not names:
        _say("chaos run: name a SCENARIO (file or name in chaos/scenarios/), or --all")
        return 2
    if not args.local and not args.target:
        _say("chaos run: --target URL (a running gateway) or --local (bring up the local stack)")
        return 2
    if args.local and (args.target or args.toxiproxy or args.stub):
        _say("chaos run: --local brings up its own gateway, fault proxy and stand-ins; "
             "drop --target/--toxiproxy/--stub")
        return 2
    missing = _missing_extras(args)
    if missing:
        _say(f"chaos run: {missing}")
        return 2
    out = Path(args.out) if args.out else Path("drills") / time.strftime("%Y%m%dT%H%M%S")
    try:
        return asyncio.run(_run(args, names, out))
    except ScenarioError as exc:
        _say(f"scenario error: {exc}")
        return 2


def _targets_shared_state(name: str) -> bool:
    """The scenario file breaks the breakers' shared state (so the local stack needs its Redis)."""
    import yaml

    from chaos.scenario import find_scenario

    try:
        target = (yaml.safe_load(find_scenario(name).read_text(encoding="utf-8")) or {}).get("target")
    except (OSError, ValueError, yaml.YAMLError, ScenarioError):
        return False
    return "shared_state" in (target if isinstance(target, list) else str(target or "").replace("+", ","))


async def _run(args: argparse.Namespace, names: list[str], out: Path) -> int:
    from chaos.events import dogstatsd_url
    from chaos.drill import DEFAULT_PROXIES, Drill, DrillTarget, write_summary

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            _say("rollback in progress; it is bounded and will finish shortly")
            return
        interrupted = True
        _say("interrupted: rolling back ...")
        if main_task is not None:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # kill -USR1 <pid>: what is the drill waiting for?

    variables = {k: _parse_var(v) for k, v in _pairs(args.var, "--var").items()}
    queries = read_queries(Path(args.queries)) if args.queries else None
    stack = None
    journals: list[dict[str, Any]] = []
    try:
        if args.local:
            from chaos.local import LocalStack

            stack_dir = out / "stack" if args.keep_stack_files else Path(tempfile.mkdtemp(prefix="rag-sidecar-drill-"))
            # Two KB versions for the KB switch drills; Redis for the drills that break the shared state.
            stack = LocalStack(stack_dir, open_s=args.open_s, say=_say, kb_versions=2,
                               redis=any(_targets_shared_state(n) for n in names))
            await stack.start()
            target = stack.target()
            target.dogstatsd = dogstatsd_url(args.dogstatsd)
            variables = {**stack.variables(), **variables}
        else:
            stubs = {}
            from chaos.drill import STUB_ALIASES

            for name, url in _pairs(args.stub, "--stub").items():
                if name not in STUB_ALIASES:
                    _say(f"--stub {name}=...: unknown stand-in (one of {sorted(STUB_ALIASES)})")
                    return 2
                stubs[STUB_ALIASES[name]] = url
            target = DrillTarget(url=args.target, toxiproxy=args.toxiproxy, stubs=stubs,
                                 admin_token=args.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None,
                                 proxies={**DEFAULT_PROXIES, **_pairs(args.proxy, "--proxy")},
                                 dogstatsd=dogstatsd_url(args.dogstatsd))
        scenarios: list[Scenario] = [load_scenario(n, variables) for n in names]  # validate all up front
        many = len(scenarios) > 1
        for sc in scenarios:
            if stack is not None:
                await stack.reset()
            drill = Drill(sc, target, out_dir=out / sc.id if many else out, png=not args.no_png,
                          sample_interval_s=args.sample_interval, queries=queries, on_event=_say)
            try:
                journal = await drill.run()
            except asyncio.CancelledError:
                if drill.journal is not None:
                    journals.append(drill.journal)
                raise
            journals.append(journal)
            _say(f"[{sc.id}] {journal['verdict'].upper()} — {(journal.get('outputs') or {}).get('report')}")
    except asyncio.CancelledError:
        interrupted = True
    finally:
        if stack is not None:
            await asyncio.shield(stack.stop())
            if not args.keep_stack_files:
                shutil.rmtree(stack.workdir, ignore_errors=True)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
    if len(journals) > 1 or (args.all and journals):
        summary = write_summary(journals, out)
        from chaos.report import render_summary

        print(render_summary(summary, out))
        _say(f"summary: {out / 'summary.md'}")
    elif journals:
        j = journals[0]
        print(f"{j['scenario']}: {j['verdict']} — {out / 'report.md'}")
    if interrupted:
        return 130
    return 0 if journals and all(j["verdict"] == "pass" for j in journals) else 1


# ---- proxy / list ---------------------------------------------------------------------------------
def cmd_proxy(args: argparse.Namespace) -> int:
    from chaos.proxy.cli import main as proxy_main

    argv = ["--host", args.host, "--port", str(args.port), "--log-level", args.log_level]
    if args.proxy_config:
        argv += ["--config", str(args.proxy_config)]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    return proxy_main(argv)


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from chaosragsidecar.export import to_experiment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(args.scenarios) or [str(p) for p in all_scenarios()]
    for name in names:
        try:
            sc = load_scenario(name)
        except ScenarioError as exc:
            _say(f"scenario error: {exc}")
            return 2
        # A shipped scenario by name; any other by its absolute path.
        shipped = sc.path is not None and Path(sc.path).resolve().parent == SCENARIO_DIR.resolve()
        reference = sc.id if shipped else str(Path(sc.path or name).resolve())
        path = out / f"{sc.id}.json"
        path.write_text(json.dumps(to_experiment(sc, reference=reference), indent=2) + "\n", encoding="utf-8")
        print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    status = 0
    print(f"{'scenario':32} {'target':18} {'length':>7}  title")
    for path in all_scenarios(Path(args.dir) if args.dir else SCENARIO_DIR):
        try:
            sc = load_scenario(path)
        except ScenarioError as exc:
            print(f"{path.stem:32} INVALID: {exc}")
            status = 1
            continue
        print(f"{sc.id:32} {'+'.join(sc.target):18} {sc.total_s:6.1f}s  {sc.title}")
    return status


# ---- wiring -----------------------------------------------------------------------------------------
def _add_commands(chaos: argparse.ArgumentParser) -> None:
    sub = chaos.add_subparsers(dest="chaos_cmd", required=True, metavar="{run,proxy,toxic,list,export}")

    r = sub.add_parser("run", help="run drills: steady state, faults under load, rollbacks, journal + report + PNG",
                       description="Run chaos drills against a gateway (or --local: a stack brought up here).")
    r.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="YAML file or name in chaos/scenarios/")
    r.add_argument("--all", action="store_true", help="every scenario in chaos/scenarios/")
    r.add_argument("--local", action="store_true",
                   help="bring up stand-ins + fault proxy + gateway on loopback (offline) and drill them")
    r.add_argument("--target", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    r.add_argument("--toxiproxy", help="fault proxy / Toxiproxy API URL, e.g. http://127.0.0.1:8474")
    r.add_argument("--stub", action="append", metavar="NAME=URL",
                   help="a stand-in's base URL for stub_* actions and attempt counters "
                        "(NAME: vector_db|embedder|llm or weaviate|embeddings|anthropic); repeatable")
    r.add_argument("--proxy", action="append", metavar="DEP=PROXY",
                   help="Toxiproxy proxy name fronting a dependency (default vector_db=weaviate_grpc, "
                        "embedder=embeddings, llm=anthropic); repeatable")
    r.add_argument("--admin-token", help=f"gateway admin token (default ${ADMIN_TOKEN_ENV}): breaker states, "
                                         "breaker and gateway_fault actions")
    r.add_argument("--var", action="append", metavar="NAME=VALUE", help="set a scenario ${NAME}; repeatable")
    r.add_argument("--queries", help="override the scenarios' queries (.txt one per line, or .jsonl)")
    r.add_argument("--out", help="output directory (default drills/<timestamp>)")
    r.add_argument("--open-s", type=float, default=2.0, help="--local: breaker open interval (s), default 2")
    r.add_argument("--sample-interval", type=float, default=1.0, help="breaker/attempt polling period (s)")
    r.add_argument("--no-png", action="store_true", help="skip timeline.png")
    r.add_argument("--keep-stack-files", action="store_true",
                   help="--local: keep the stack's config, data and logs under OUT/stack")
    r.add_argument("--dogstatsd", metavar="URL", help="post drill start/end events to this DogStatsD "
                   "(udp://host:port or unix:///path; default $DD_DOGSTATSD_URL or $DD_AGENT_HOST)")
    r.add_argument("--mutants", action="store_true",
                   help="the drills' mutation test: disable each breaker, timeout and fallback in turn (a local "
                        "stack per mutant) and check that some drill fails (chaos/mutants.py)")
    r.add_argument("--mutant", action="append", metavar="NAME", help="--mutants: only this one (repeatable)")
    r.add_argument("--write-doc", action="store_true", help="--mutants: rewrite the table in docs/chaos.md")
    r.set_defaults(func=cmd_run)

    p = sub.add_parser("proxy", help="serve the Toxiproxy-compatible fault proxy",
                       description="TCP fault proxy speaking Toxiproxy's HTTP API (as toxiproxy-server).")
    p.add_argument("--host", default="127.0.0.1", help="API host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8474, help="API port (default 8474; 0 picks a free one)")
    p.add_argument("--config", dest="proxy_config", type=Path,
                   help="JSON list of proxies to create at start-up, as for /populate")
    p.add_argument("--seed", type=int, help="seed for toxicity draws, jitter and slicer sizes")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_proxy)

    from chaos.toxic_cli import add_parser as add_toxic_parser

    add_toxic_parser(sub)

    ex = sub.add_parser("export", help="write scenarios as Chaos Toolkit experiments (chaosragsidecar extension)",
                        description="Write each scenario as a Chaos Toolkit experiment (JSON) that `chaos run` "
                                    "executes through the chaosragsidecar extension.")
    ex.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="YAML file or name (default: all shipped)")
    ex.add_argument("--out", default="experiments", help="output directory (default experiments/)")
    ex.set_defaults(func=cmd_export)

    li = sub.add_parser("list", help="list (and validate) the scenarios")
    li.add_argument("--dir", help=f"scenario directory (default {SCENARIO_DIR})")
    li.set_defaults(func=cmd_list)


def register(subparsers: Any) -> None:
    """Add ``chaos`` (with run/proxy/list) to ``rag-sidecar``'s subparsers; each sets ``func(args) -> int``."""
    chaos = subparsers.add_parser("chaos", help="chaos drills: run scenarios, the fault proxy, list scenarios",
                                  description=DESCRIPTION)
    _add_commands(chaos)


add_parser = register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos.cli", description=DESCRIPTION)
    _add_commands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
