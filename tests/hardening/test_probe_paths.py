"""Issue 11 item 5: unauthenticated probes never show absolute file paths (admins still see them)."""
from __future__ import annotations

import json

from tests.conftest import make_settings, state_of

ADMIN = "admin-token-0123456789"


async def test_health_and_readyz_hide_absolute_paths_from_unauthenticated_callers(gateway_factory, data_dir):
    client = await gateway_factory(make_settings(data_dir, **{"auth.admin_token": ADMIN}))
    state = state_of(client)
    chunks = data_dir.resolve() / "kb" / "versions" / state.kb.version / "chunks.jsonl"
    # What a failed KB reload leaves on the state (the loader's own message, path included).
    state.kb_error = f"KBCorrupt: {chunks} is shorter than its manifest says"
    body = await (await client.get("/health")).text()
    assert str(data_dir.resolve()) not in body
    assert json.loads(body)["components"]["kb"]["error"] == "KBCorrupt: …/chunks.jsonl is shorter than its manifest says"
    admin = await (await client.get("/health", headers={"Authorization": f"Bearer {ADMIN}"})).text()
    assert str(chunks) in json.loads(admin)["components"]["kb"]["error"]
    state.ready.clear()
    try:
        resp = await client.get("/readyz")
        assert resp.status == 503
        text = await resp.text()
        assert str(data_dir.resolve()) not in text and json.loads(text)["error"].startswith("KBCorrupt: …/chunks.jsonl")
    finally:
        state.ready.set()
