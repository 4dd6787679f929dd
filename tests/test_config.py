"""Config: YAML + env + vendor variables, strict validation naming the key, masked printing, docs in sync."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gateway.config import REPO_ROOT, ConfigError, config_rows, load_settings, masked_dump, render_readme


def test_defaults_are_the_offline_embedded_setup():
    s = load_settings(None, env={})
    assert s.vector_store.backend == "embedded" and s.embedder.backend == "local"
    assert s.llm.effective_backend == "extractive"
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)


def test_yaml_env_and_vendor_variables_layer_in_order(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 9000\nllm:\n  model: from-yaml\n  max_tokens: 100\n")
    env = {"RAG_SIDECAR__LLM__MODEL": "from-env", "ANTHROPIC_API_KEY": "sk-ant-test-0000000000",
           "ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "DD_ENV": "staging",
           "RAG_SIDECAR__RESILIENCE__VECTOR_DB__TIMEOUT_S": "0.8", "RAG_SIDECAR__AUTH__API_KEYS": "[a-key-123]"}
    s = load_settings(cfg, env=env)
    assert s.server.port == 9000 and s.llm.max_tokens == 100
    assert s.llm.model == "from-env"  # RAG_SIDECAR__ beats YAML
    assert s.llm.effective_backend == "anthropic" and s.llm.base_url == "http://127.0.0.1:1"
    assert s.telemetry.env == "staging"
    assert s.resilience.vector_db.timeout_s == 0.8
    assert [k.get_secret_value() for k in s.auth.api_keys] == ["a-key-123"]


def test_config_path_from_env(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {port: 9123}\n")
    assert load_settings(None, env={"RAG_SIDECAR_CONFIG": str(cfg)}).server.port == 9123


@pytest.mark.parametrize("yaml_text,path", [
    ("server:\n  prot: 1\n", "server.prot"),
    ("server:\n  port: -1\n", "server.port"),
    ("vector_store:\n  backend: pinecone\n", "vector_store.backend"),
    ("resilience:\n  vector_db:\n    breaker:\n      failure_rate: 2\n", "resilience.vector_db.breaker.failure_rate"),
    ("kb:\n  chunk_chars: 200\n  chunk_overlap: 300\n", "kb"),
    ("cache:\n  fresh_ttl_s: 300\n  stale_ttl_s: 60\n", "cache"),
    ("server:\n  request_timeout_s: 90\n", "server"),
    ("nonsense: true\n", "nonsense"),
])
def test_invalid_config_names_the_key(tmp_path, yaml_text, path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, env={})
    assert str(err.value).startswith(path)


def test_bad_env_value_names_the_key():
    with pytest.raises(ConfigError, match=r"^server\.port"):
        load_settings(None, env={"RAG_SIDECAR__SERVER__PORT": "eighty"})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, env={})


def test_masked_dump_hides_secrets():
    s = load_settings(None, env={"ANTHROPIC_API_KEY": "sk-ant-supersecret-123456",
                                 "RAG_SIDECAR__AUTH__ADMIN_TOKEN": "admintoken-987"})
    text = repr(masked_dump(s))
    assert "supersecret" not in text and "admintoken-987" not in text
    assert masked_dump(s)["llm"]["api_key"] == "**********"


def test_cli_config_print_masks_secrets_and_fails_fast_on_bad_config(tmp_path):
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-clisecret-123456", "RAG_SIDECAR__SERVER__PORT": "8181"}
    env.pop("RAG_SIDECAR_CONFIG", None)
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "config", "--print"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "port: 8181" in out.stdout and "clisecret" not in out.stdout
    env["RAG_SIDECAR__SERVER__PORT"] = "eighty"
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "config"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "server.port" in out.stderr and "Traceback" not in out.stderr


def test_every_option_is_documented_with_a_default():
    rows = config_rows()
    undocumented = [r[0] for r in rows if not r[3]]
    assert not undocumented, f"options without a description: {undocumented}"


def test_readme_config_table_is_current():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert render_readme(readme) == readme, "run `python -m gateway.config` to refresh the README table"
