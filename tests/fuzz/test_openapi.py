"""The OpenAPI document and the fuzz suite (issue 11 item 4).

``/openapi.json`` is built from the routes' own pydantic models; schemathesis generates requests from it
(valid and invalid: bodies, headers, path parameters) against a live gateway over real sockets, in front
of the fake Anthropic, and checks every answer: no 5xx, and each status, content type and body is one the
document describes. Bounded: a fixed seed and a fixed number of examples per operation (well under two
minutes on the shared 2-core box).
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from gateway.openapi import build_document
from tests.conftest import anthropic_overrides, make_settings

pytestmark = pytest.mark.timeout(240)
ADMIN = "admin-fuzz-token-0123456789"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


async def test_every_route_is_documented(gateway):
    doc = (await (await gateway.get("/openapi.json")).json())
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(r.method, r.resource.canonical) for r in gateway.server.app.router.routes()
              if r.method not in ("HEAD", "OPTIONS", "*")}
    assert served == documented


def test_the_document_is_valid_openapi_3_1():
    from jsonschema_rs import validator_for  # noqa: F401  (schemathesis' validator: the schemas must compile)
    import schemathesis

    schema = schemathesis.openapi.from_dict(build_document())
    assert len(list(schema.get_all_operations())) == sum(len(ops) for ops in build_document()["paths"].values())


async def test_fuzz_every_route_no_5xx_and_no_schema_violation(gateway_factory, data_dir, fake_anthropic, tmp_path):
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(
        fake_anthropic, **{"auth.admin_token": ADMIN, "cache.enabled": False})))
    cli = Path(sys.executable).parent / "schemathesis"
    report = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        str(cli), "run", f"http://127.0.0.1:{client.port}/openapi.json", "--checks", CHECKS,
        "--max-examples", "25", "--seed", "11", "--workers", "1", "--request-timeout", "30",
        "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all", "--no-shrink",
        "-H", f"Authorization: Bearer {ADMIN}", "--report", "json", "--report-json-path", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=200)
    text = out.decode(errors="replace")
    print(text[-3000:])
    assert proc.returncode == 0, text[-6000:]
