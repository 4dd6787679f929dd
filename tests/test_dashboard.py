"""deploy/datadog/{dashboard,monitors}.json, checked offline: they deserialize into datadog-api-client's
models with nothing unparsed or unknown, and every metric, tag and tag value they query is one the
catalogue in gateway/telemetry/catalogue.py emits. Every catalogue metric is on the dashboard (or says why not)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.model_utils import ModelComposed, ModelNormal, UnparsedObject
from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.monitor import Monitor

from gateway.telemetry import CATALOGUE, MetricSpec, monitors

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "datadog"
DASHBOARD = DEPLOY / "dashboard.json"
MONITORS = DEPLOY / "monitors.json"
SPECS: dict[str, MetricSpec] = {spec.datadog_name("rag"): spec for spec in CATALOGUE}
METRIC_USE = monitors.METRIC_USE


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
    uses, problems = [], []
    for q in queries:
        found, bad = monitors.metric_uses(q)
        uses += found
        problems += bad
    assert problems == [], "a metric name not followed by a {tag filter}"
    return uses


def check_use(use: re.Match[str]) -> list[str]:
    return monitors.query_problems(use, template_vars=monitors.TEMPLATE_VARIABLES)


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
    assert [g["title"] for g in groups] == ["Traffic", "Degradation", "Dependencies", "LLM streams (/v1/messages)",
                                             "Breakers", "Cache & fallback", "KB", "Jobs"]
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
    assert "rag.breaker.open_for" in queries  # breaker open > N min (a clock half-open probes do not reset)
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


def test_dashboard_and_monitors_pass_the_full_check(dashboard_json, monitors_json):
    """Names, tag keys and values, aggregators, formula references, template variables, thresholds."""
    assert monitors.dashboard_problems(dashboard_json) == []
    assert [p for m in monitors_json for p in monitors.monitor_problems(m)] == []


def _set_query(query: str, old: str, new: str) -> str:
    assert old in query, (old, query)
    return query.replace(old, new, 1)


def _dash_query(title: str, old: str, new: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], None]:
    def mutate(dashboard: dict[str, Any], _: list[dict[str, Any]]) -> None:
        for w in monitors._widgets(dashboard["widgets"]):
            if w.get("title") == title:
                for r in w["requests"]:
                    for q in r.get("queries", []):
                        if old in q["query"]:
                            q["query"] = q["query"].replace(old, new, 1)
                            return
        raise AssertionError(f"no widget {title!r} with {old!r}")
    return mutate


def _dash_formula(title: str, new: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], None]:
    def mutate(dashboard: dict[str, Any], _: list[dict[str, Any]]) -> None:
        for w in monitors._widgets(dashboard["widgets"]):
            if w.get("title") == title:
                w["requests"][0]["formulas"][0]["formula"] = new
                return
        raise AssertionError(title)
    return mutate


def _monitor(index: int, key: str, old: str, new: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], None]:
    def mutate(_: dict[str, Any], mons: list[dict[str, Any]]) -> None:
        mons[index][key] = _set_query(mons[index][key], old, new)
    return mutate


def _threshold(index: int, **values: float) -> Callable[[dict[str, Any], list[dict[str, Any]]], None]:
    def mutate(_: dict[str, Any], mons: list[dict[str, Any]]) -> None:
        mons[index]["options"]["thresholds"].update(values)
    return mutate


def _template_var(name: str) -> Callable[[dict[str, Any], list[dict[str, Any]]], None]:
    def mutate(dashboard: dict[str, Any], _: list[dict[str, Any]]) -> None:
        dashboard["template_variables"][0]["name"] = name
    return mutate


# Deliberate mistakes, each of a kind that has shipped somewhere: the check must catch every one.
MISTAKES: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], None]] = {
    "dashboard: misspelled metric prefix": _dash_query("Requests by route and status class", "rag.request", "rga.request"),
    "dashboard: metric prefix with underscores": _dash_query("In-flight requests", "rag.request.in_flight",
                                                             "rag_request.in_flight"),
    "dashboard: unknown metric name": _dash_query("Answer cache results", "rag.cache.results", "rag.cache.result"),
    "dashboard: wrong mode value": _dash_query("Answers by mode", "!mode:none", "mode:keyword"),
    "dashboard: wrong status_class value": _dash_query("5xx error rate (%)", "status_class:5xx", "status_class:5XX"),
    "dashboard: wrong outcome value": _dash_query("Attempt latency p95 by dependency (ms, successful attempts)",
                                                  "outcome:success", "outcome:ok"),
    "dashboard: tag key the metric does not carry": _dash_query("Breaker state by dependency", "by {dependency}",
                                                                "by {dependncy}"),
    "dashboard: formula refers to a missing query": _dash_formula("5xx error rate (%)", "100 * a / c"),
    "dashboard: bad aggregator": _dash_query("KB age (hours)", "max:rag.kb.age", "maxx:rag.kb.age"),
    "dashboard: percentile of a count": _dash_query("Answer cache results", "sum:rag.cache.results",
                                                    "p99:rag.cache.results"),
    "dashboard: .as_count() on a gauge": _dash_query("Chunks in the active KB", "max:rag.kb.chunks{$env,$service}",
                                                     "max:rag.kb.chunks{$env,$service}.as_count()"),
    "dashboard: misspelled template variable in a filter": _dash_query("In-flight requests", "$env", "$evn"),
    "dashboard: template variable renamed": _template_var("environment"),
    "monitor: misspelled metric prefix": _monitor(1, "query", "sum:rag.request.count{degraded:true",
                                                  "sum:rga.request.count{degraded:true"),
    "monitor: wrong tag value": _monitor(4, "query", "result:stale_serve", "result:stale"),
    "monitor: dependency that is no guard": _monitor(0, "query", "rag.breaker.open_for{*}",
                                                     "rag.breaker.open_for{dependency:vectordb}"),
    "monitor: bad time aggregator": _monitor(5, "query", "max(last_5m)", "mean(last_5m)"),
    "monitor: misspelled template variable in the message": _monitor(0, "message", "{{dependency.name}}",
                                                                     "{{dependancy.name}}"),
    "monitor: message variable the query does not group by": _monitor(3, "message", "{{env.name}}", "{{route.name}}"),
    "monitor: unknown message block": _monitor(0, "message", "{{#is_alert}}", "{{#is_alrt}}"),
    "monitor: critical threshold differs from the query": _threshold(2, critical=3000),
    "monitor: warning beyond critical": _threshold(1, warning=30),
    "monitor: no-data timeframe shorter than its window": _monitor(5, "query", "max(last_5m)", "max(last_30m)"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_every_deliberate_mistake_is_caught(mistake, dashboard_json, monitors_json):
    dashboard, mons = copy.deepcopy(dashboard_json), copy.deepcopy(monitors_json)
    MISTAKES[mistake](dashboard, mons)
    found = monitors.dashboard_problems(dashboard) + [p for m in mons for p in monitors.monitor_problems(m)]
    assert found, f"not caught: {mistake}"
