"""``rag-sidecar jobs submit|status|results|cancel``: batch queries from a JSON-lines file.

``submit FILE.jsonl`` sends the file in batches (one job each), then shows progress until every job
has finished. It remembers what it submitted in ``FILE.jsonl.jobs.json``: run the same command
again after an interruption (Ctrl-C, a lost connection, a reboot) and it resumes where it was —
no batch is sent twice, also when the interruption fell between a POST and its answer (each batch
carries an ``Idempotency-Key`` derived from the file's content and the batch number).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

POLL_S = 0.5


class JobsCLIError(Exception):
    """An operator mistake or a gateway refusal; printed without a stack trace."""


# ---- HTTP ---------------------------------------------------------------------------------------
def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    if os.environ.get("RAG_SIDECAR_URL"):
        return os.environ["RAG_SIDECAR_URL"].rstrip("/")
    from gateway.config import load_settings

    server = load_settings(args.config).server
    return f"http://{server.host}:{server.port}"


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    key = args.api_key or os.environ.get("RAG_SIDECAR_API_KEY")
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(_base_url(args) + path, data=data, method=method, headers=hdrs)
    with urllib.request.urlopen(req, timeout=args.timeout) as resp:  # noqa: S310 - operator-given URL
        return json.loads(resp.read())


# ---- the input file and its state ---------------------------------------------------------------
def read_queries(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line (the /v1/query fields); a bare JSON string is a query."""
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise JobsCLIError(f"{path}:{n}: not valid JSON: {exc}") from None
            if isinstance(item, str):
                item = {"query": item}
            if not isinstance(item, dict):
                raise JobsCLIError(f"{path}:{n}: expected a JSON object like {{\"query\": \"...\"}}")
            out.append(item)
    if not out:
        raise JobsCLIError(f"{path}: no queries")
    return out


def state_path(path: Path) -> Path:
    return path.with_name(path.name + ".jobs.json")


def _load_state(path: Path, digest: str, url: str) -> dict[str, Any]:
    sp = state_path(path)
    try:
        state = json.loads(sp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"sha256": digest, "url": url, "jobs": []}
    except ValueError:
        raise JobsCLIError(f"{sp}: unreadable state file; delete it to submit the file again") from None
    if state.get("sha256") != digest:
        raise JobsCLIError(f"{path} changed since it was submitted (state in {sp}); delete {sp} to submit "
                           "the new content as new jobs")
    return state


def _save_state(path: Path, state: dict[str, Any]) -> None:
    sp = state_path(path)
    tmp = sp.with_name(sp.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, sp)  # a crash mid-write keeps the previous state


# ---- commands -----------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    from gateway.progress import progress_printer

    path = Path(args.file)
    if not path.is_file():
        raise JobsCLIError(f"no such file: {path}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    queries = read_queries(path)
    state = _load_state(path, digest, _base_url(args))
    batches = [queries[i:i + args.batch_size] for i in range(0, len(queries), args.batch_size)]
    submitted = {j["batch"] for j in state["jobs"]}
    if submitted:
        print(f"resuming: {len(submitted)} of {len(batches)} batches already submitted "
              f"(state in {state_path(path)})", file=sys.stderr)
    for n, batch in enumerate(batches):
        if n in submitted:
            continue
        body: dict[str, Any] = {"queries": batch}
        if args.webhook_url:
            body["webhook_url"] = args.webhook_url
        if args.strict:
            body["accept_degraded"] = False
        job = _call(args, "POST", "/v1/jobs", body, headers={"Idempotency-Key": f"{digest[:40]}-{n}"})
        state["jobs"].append({"batch": n, "id": job["id"], "first_line_index": n * args.batch_size,
                              "queries": len(batch)})
        _save_state(path, state)
    if args.no_wait:
        print(json.dumps({"jobs": [j["id"] for j in state["jobs"]], "queries": len(queries)}))
        return 0
    show = progress_printer()
    while True:
        views = [_call(args, "GET", f"/v1/jobs/{j['id']}?limit=0") for j in state["jobs"]]
        total = sum(v["progress"]["total"] for v in views)
        finished = sum(v["progress"]["total"] - v["progress"]["pending"] for v in views)
        show("queries", finished, total)
        if all(v["status"] in ("completed", "cancelled") for v in views):
            break
        time.sleep(POLL_S)
    summary = {"jobs": [v["id"] for v in views], "queries": total,
               **{k: sum(v["progress"][k] for v in views) for k in ("done", "failed", "cancelled")},
               "results": f"rag-sidecar jobs results {path}"}
    print(json.dumps(summary))
    return 0 if summary["failed"] == 0 and summary["cancelled"] == 0 else 1


def _jobs_of(target: str) -> list[dict[str, Any]]:
    """A job id, or an input file whose state lists its jobs."""
    path = Path(target)
    if path.is_file():
        sp = state_path(path)
        if not sp.is_file():
            raise JobsCLIError(f"{path} has not been submitted (no {sp})")
        return json.loads(sp.read_text(encoding="utf-8"))["jobs"]
    return [{"id": target, "first_line_index": 0}]


def cmd_status(args: argparse.Namespace) -> int:
    for job in _jobs_of(args.target):
        view = _call(args, "GET", f"/v1/jobs/{job['id']}?limit=0")
        view.pop("results", None)
        print(json.dumps(view))
    return 0


def _pages(args: argparse.Namespace, job_id: str) -> Iterator[dict[str, Any]]:
    offset: int | None = 0
    while offset is not None:
        page = _call(args, "GET", f"/v1/jobs/{job_id}?offset={offset}&limit={args.page_size}")
        yield from page["results"]
        offset = page["next_offset"]


def cmd_results(args: argparse.Namespace) -> int:
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        for job in _jobs_of(args.target):
            for item in _pages(args, job["id"]):
                line = {"line": job.get("first_line_index", 0) + item["index"], "job_id": job["id"], **item}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    for job in _jobs_of(args.target):
        view = _call(args, "DELETE", f"/v1/jobs/{job['id']}")
        print(json.dumps({"id": view["id"], "status": view["status"], "progress": view["progress"]}))
    return 0


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except JobsCLIError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if fn is cmd_submit:
                print(f"\ninterrupted: run the same command again to resume (state in "
                      f"{state_path(Path(args.file))})", file=sys.stderr)
            return 130
    return run


def register(sub: Any) -> None:
    """Add ``jobs`` and its commands to the ``rag-sidecar`` parser."""
    s = sub.add_parser("jobs", help="batch queries through the job queue: submit FILE.jsonl | status | results")
    jobs = s.add_subparsers(dest="jobs_cmd", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="YAML config file (for the default --url)")
    common.add_argument("--url", help="the gateway (default: $RAG_SIDECAR_URL, else server.host:server.port)")
    common.add_argument("--api-key", help="API key (default: $RAG_SIDECAR_API_KEY)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP call")

    a = jobs.add_parser("submit", parents=[common], help="submit FILE.jsonl (one query object per line), "
                        "show progress, resume after an interruption")
    a.add_argument("file")
    a.add_argument("--batch-size", type=int, default=1000, help="queries per job (the server's jobs.max_items caps it)")
    a.add_argument("--webhook-url", help="POSTed (signed) when each job finishes")
    a.add_argument("--strict", action="store_true", help="retry degraded answers (accept_degraded=false)")
    a.add_argument("--no-wait", action="store_true", help="submit and print the job ids; no progress")
    a.set_defaults(func=_guarded(cmd_submit))

    a = jobs.add_parser("status", parents=[common], help="a job's status and progress (JOB_ID or FILE.jsonl)")
    a.add_argument("target", metavar="JOB_ID|FILE")
    a.set_defaults(func=_guarded(cmd_status))

    a = jobs.add_parser("results", parents=[common], help="results as JSON lines, in input order "
                        "(JOB_ID or FILE.jsonl)")
    a.add_argument("target", metavar="JOB_ID|FILE")
    a.add_argument("--out", help="write to this file instead of stdout")
    a.add_argument("--page-size", type=int, default=500, help="results fetched per request")
    a.set_defaults(func=_guarded(cmd_results))

    a = jobs.add_parser("cancel", parents=[common], help="cancel what has not run yet (JOB_ID or FILE.jsonl)")
    a.add_argument("target", metavar="JOB_ID|FILE")
    a.set_defaults(func=_guarded(cmd_cancel))
