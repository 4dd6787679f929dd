"""deploy/datadog/{dashboard,monitors}.json, checked offline: they deserialize into datadog-api-client's
models with nothing unparsed or unknown, and every metric, tag and tag value they query is one the
catalogue in gateway/telemetry/catalogue.py emits. Every catalogue metric is on the dashboard (or says why not)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.model_utils import ModelComposed, ModelNormal, UnparsedObject
from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.monitor import Monitor

from gateway.telemetry import CATALOGUE, MetricSpec

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "datadog"
DASHBOARD = DEPLOY / "dashboard.json"
MONITORS = DEPLOY / "monitors.json"
SPECS: dict[str, MetricSpec] = {spec.datadog_name("rag"): spec for spec in CATALOGUE}
CONSTANT_TAGS = {"env", "service", "version", "host"}  # env/service/version are DogStatsd constant tags
# <aggregation>:<metric>{<filter>} [by {<group>}] [.as_count()]
METRIC_USE = re.compile(r"(?:(?P<agg>\w+):)?(?P<metric>rag\.[a-z_]+(?:\.[a-z_]+)+)\{(?P<filter>[^}]*)\}"
                        r"(?:\s*by\s*\{(?P<by>[^}]*)\})?(?P<as_count>\.as_count\(\))?")
PERCENTILE = re.compile(r"p\d{1,2}(\.\d+)?")


def model_problems(obj: Any, path: str = "$") -> Iterator[str]:
    """Every part the client could not parse (``_unparsed``) and every key its model does not know.

    Unknown keys matter: the models accept them silently as "additional properties", and the
    Datadog API then rejects or ignores them (a typo like ``"titel"`` would go unnoticed).
    """
    if isinstance(obj, UnparsedObject):
        yield f"{path}: not parseable as any schema: {obj.to_dict()}"
        return
    if isinstance(obj, ModelComposed):
        if obj._unparsed:
            yield f"{path}: {type(obj).__name__} matched none of its oneOf schemas"
        for inst in obj._composed_instances:
            yield from model_problems(inst, path)
        return
    if isinstance(obj, ModelNormal):
        if obj._unparsed:
            yield f"{path}: {type(obj).__name__} has unparsed parts"
        for key in sorted(set(obj._data_store) - set(obj.openapi_types)):
            yield f"{path}.{key}: unknown key for {type(obj).__name__}"
        for key, value in obj._data_store.items():
            yield from model_problems(value, f"{path}.{key}")
        return
    if isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from model_problems(value, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from model_problems(value, f"{path}.{key}")


def deserialize(raw: Any, model: type) -> Any:
    """What the client does with an API response: strict types, spec (JSON) key names."""
    return ApiClient(Configuration()).deserialize(json.dumps(raw), (model,), True)


def strings(node: Any, keys: tuple[str, ...] = ("q", "query")) -> Iterator[str]:
    """Every query string in a JSON tree (widget requests' ``q``/``query``, a monitor's ``query``)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in keys and isinstance(v, str):
                yield v
            else:
                yield from strings(v, keys)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v, keys)


def metric_uses(queries: list[str]) -> list[re.Match[str]]:
    uses = [m for q in queries for m in METRIC_USE.finditer(q)]
    bare = {name for q in queries for name in re.findall(r"rag\.[a-z_.]+", q)}
    assert bare == {m["metric"] for m in uses}, "a metric name not followed by a {tag filter}"
    return uses


def check_use(use: re.Match[str]) -> list[str]:
    """Problems of one ``agg:metric{filter} by {group}`` against the catalogue."""
    name = use["metric"]
    spec = SPECS.get(name)
    if spec is None:
        return [f"{name}: not in the catalogue (gateway/telemetry/catalogue.py)"]
    problems = []
    agg = use["agg"]
    if agg and PERCENTILE.fullmatch(agg) and spec.type != "distribution":
        problems.append(f"{name}: {agg} needs a distribution, it is a {spec.type}")
    if use["as_count"] and spec.type != "count":
        problems.append(f"{name}: .as_count() on a {spec.type}")
    allowed_keys = set(spec.tags) | CONSTANT_TAGS
    for item in filter(None, (i.strip() for i in use["filter"].split(","))):
        if item == "*" or item.startswith("$"):
            continue
        key, _, value = item.lstrip("!").partition(":")
        if key not in allowed_keys:
            problems.append(f"{name}: filters on tag {key!r}, which it does not carry")
        elif key in spec.values and value not in spec.values[key]:
            problems.append(f"{name}: {key}:{value} is never emitted (values: {spec.values[key]})")
    for key in filter(None, (k.strip() for k in (use["by"] or "").split(","))):
        if key not in allowed_keys:
            problems.append(f"{name}: groups by tag {key!r}, which it does not carry")
    return problems


@pytest.fixture(scope="module")
def dashboard_json() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def monitors_json() -> list[dict[str, Any]]:
    return json.loads(MONITORS.read_text(encoding="utf-8"))


def test_dashboard_deserializes_completely(dashboard_json):
    dashboard = deserialize(dashboard_json, Dashboard)
    assert isinstance(dashboard, Dashboard)
    assert list(model_problems(dashboard)) == []
    assert dashboard.layout_type.value == "ordered"
    assert [v.name for v in dashboard.template_variables] == ["env", "service"]
    assert [v.prefix for v in dashboard.template_variables] == ["env", "service"]


def test_dashboard_groups_by_component_with_the_expected_widget_types(dashboard_json):
    groups = [w["definition"] for w in dashboard_json["widgets"]]
    assert all(g["type"] == "group" for g in groups)
    assert [g["title"] for g in groups] == ["Traffic", "Degradation", "Dependencies", "Breakers",
                                             "Cache & fallback", "KB", "Jobs"]
    kinds = {w["definition"]["type"] for g in groups for w in g["widgets"]}
    assert kinds == {"timeseries", "query_value", "toplist", "note"}


def test_dashboard_queries_are_scoped_by_the_template_variables(dashboard_json):
    queries = list(strings(dashboard_json))
    assert queries
    for use in metric_uses(queries):
        assert {"$env", "$service"} <= {i.strip() for i in use["filter"].split(",")}, use[0]


def test_monitors_deserialize_completely(monitors_json):
    assert isinstance(monitors_json, list) and len(monitors_json) >= 5
    for i, raw in enumerate(monitors_json):
        monitor = deserialize(raw, Monitor)
        assert isinstance(monitor, Monitor)
        assert list(model_problems(monitor, f"monitors[{i}]")) == []
        # A metric monitor's critical threshold must be the one in its query, or the API rejects it.
        threshold = float(re.search(r"[<>]=?\s*(-?[\d.]+)\s*$", raw["query"]).group(1))
        assert raw["options"]["thresholds"]["critical"] == threshold, raw["name"]


def test_monitors_cover_the_alerts_sres_asked_for(monitors_json):
    queries = " ".join(m["query"] for m in monitors_json)
    assert "rag.breaker.state" in queries  # breaker open > N min
    assert "degraded:true" in queries  # degraded rate > X%
    assert re.search(r"percentile\(last_\w+\):p99:rag\.request\.duration", queries)  # p99 > SLO
    assert "status_class:5xx" in queries  # error rate
    assert "result:stale_serve" in queries  # cache stale-serve spike
    assert "rag.kb.age" in queries  # KB age


def test_every_queried_metric_tag_and_value_is_emitted(dashboard_json, monitors_json):
    uses = metric_uses(list(strings(dashboard_json)) + list(strings(monitors_json)))
    problems = [p for use in uses for p in check_use(use)]
    assert problems == []


def test_every_catalogue_metric_is_plotted_or_says_why_not(dashboard_json):
    on_dashboard = {use["metric"] for use in metric_uses(list(strings(dashboard_json)))}
    for name, spec in SPECS.items():
        if spec.plotted:
            assert name in on_dashboard, f"{name} is in the catalogue but on no dashboard widget"
        else:
            assert spec.unplotted_reason and name not in on_dashboard, name


def test_the_checker_catches_what_it_claims_to():
    """The validators above are only as good as their misses: feed them known-bad inputs."""
    bad_widget = {"title": "t", "layout_type": "ordered", "widgets": [
        {"definition": {"type": "timeseries", "titel": "typo", "requests": [{"q": "avg:rag.kb.age{*}"}]}},
        {"definition": {"type": "timeseriez", "requests": []}}]}
    found = list(model_problems(deserialize(bad_widget, Dashboard)))
    assert any("titel" in p for p in found) and any("unparsed" in p or "oneOf" in p for p in found)
    assert check_use(next(METRIC_USE.finditer("sum:rag.request.cnt{*}.as_count()")))
    assert check_use(next(METRIC_USE.finditer("p99:rag.request.count{*}")))
    assert check_use(next(METRIC_USE.finditer("sum:rag.cache.results{result:stale}.as_count()")))
    assert check_use(next(METRIC_USE.finditer("max:rag.breaker.state{*} by {dependncy}")))
    assert not check_use(next(METRIC_USE.finditer("p99:rag.request.duration{$env,route:/v1/query} by {mode}")))
