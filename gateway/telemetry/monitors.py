"""Datadog queries, checked and evaluated offline against the catalogue and recorded DogStatsD traffic.

Two jobs, both for ``deploy/datadog/{dashboard,monitors}.json``:

* :func:`query_problems` / :func:`dashboard_problems` / :func:`monitor_problems` — every metric name,
  tag key, tag value, aggregator, formula reference, template variable (``$env`` in a dashboard,
  ``{{dependency.name}}`` in a monitor message) and threshold is one the catalogue and Datadog accept.
* :func:`evaluate` — the subset of Datadog's metric-monitor semantics our monitors use, run over a
  recording of what a sidecar sent (:func:`read_recording`, made by ``python -m chaos.record``):
  ``<time_agg>(last_<N><m|h>):<formula over metric queries> <cmp> <threshold>``, with

  - a metric query ``<space_agg>:<metric>{<filters>} [by {<tags>}][.as_count()]``; filters ``k:v``,
    ``!k:v``, ``*``; space aggregation across the series of a group at each flush second;
  - ``percentile(...)`` with ``pNN:`` over every distribution value in the window (nearest rank);
  - ``sum(...)`` time aggregation applies to each query before the formula (Datadog's evaluation of
    ``as_count()`` monitors); ``min``/``max``/``avg`` apply to the formula's per-second values;
  - ``notify_no_data``: a group seen before the window but silent in the last ``no_data_timeframe``
    minutes is ``No Data``.

It is not Datadog: rollups are per second, percentiles exact. Good enough to show that a monitor
crosses its threshold on the failure it is named for, and stays quiet on a healthy sidecar.
"""
from __future__ import annotations

import ast
import gzip
import json
import math
import operator
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, cast

from gateway.telemetry.catalogue import CATALOGUE, MetricSpec

NAMESPACE = "rag"
SPECS: dict[str, MetricSpec] = {spec.datadog_name(NAMESPACE): spec for spec in CATALOGUE}
# env/service/version are DogStatsd constant tags; host comes from the Agent; worker from `serve --workers`.
CONSTANT_TAGS = frozenset({"env", "service", "version", "host", "worker"})
TEMPLATE_VARIABLES = ("env", "service")  # the dashboard's $env / $service
SPACE_AGGREGATORS = frozenset({"avg", "sum", "min", "max"})
TIME_AGGREGATORS = frozenset({"avg", "sum", "min", "max", "last", "percentile"})
PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?)")
# <aggregation>:<metric>{<filter>} [by {<group>}] [.as_count()|.as_rate()]
METRIC_USE = re.compile(r"(?:(?P<agg>[A-Za-z0-9_.]+):)?(?P<metric>[A-Za-z_][\w]*(?:\.[\w]+)+)\{(?P<filter>[^}]*)\}"
                        r"(?:\s*by\s*\{(?P<by>[^}]*)\})?(?P<suffix>\.as_count\(\)|\.as_rate\(\))?")
MONITOR_QUERY = re.compile(r"^(?P<time_agg>\w+)\(last_(?P<n>\d+)(?P<unit>[mh])\):(?P<expr>.+?)\s*"
                           r"(?P<cmp>>=|<=|>|<)\s*(?P<threshold>-?[\d.]+)\s*$")
MESSAGE_VARIABLE = re.compile(r"\{\{\s*([#^/]?)([\w.]+)\s*\}\}")
MESSAGE_BUILTINS = frozenset({"value", "threshold", "warn_threshold", "last_triggered_at", "comparator",
                              "first_triggered_at", "triggered_duration_sec", "ok_threshold"})
MESSAGE_BLOCKS = frozenset({"is_alert", "is_warning", "is_recovery", "is_no_data", "is_alert_recovery",
                            "is_warning_recovery", "is_renotify", "is_alert_to_warning", "is_no_data_recovery"})
COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


# ---- static checks ---------------------------------------------------------------------------------
def _filters(text: str) -> list[str]:
    return [i.strip() for i in text.split(",") if i.strip()]


def query_problems(use: re.Match[str], *, template_vars: Iterable[str] = ()) -> list[str]:
    """Problems of one ``agg:metric{filter} by {group}`` against the catalogue."""
    name, agg = use["metric"], use["agg"]
    spec = SPECS.get(name)
    if spec is None:
        return [f"{name}: not in the catalogue (gateway/telemetry/catalogue.py)"]
    problems = []
    if agg is None:
        problems.append(f"{name}: no space aggregator (avg|sum|min|max|pNN)")
    elif PERCENTILE.fullmatch(agg):
        if spec.type != "distribution":
            problems.append(f"{name}: {agg} needs a distribution, it is a {spec.type}")
    elif agg not in SPACE_AGGREGATORS:
        problems.append(f"{name}: unknown aggregator {agg!r}")
    if use["suffix"] and spec.type != "count":
        problems.append(f"{name}: {use['suffix']} on a {spec.type}")
    if spec.type == "count" and not use["suffix"]:
        problems.append(f"{name}: a count read without .as_count() (Datadog would show a per-second rate)")
    allowed_keys = set(spec.tags) | CONSTANT_TAGS
    variables = set(template_vars)
    for item in _filters(use["filter"]):
        if item == "*":
            continue
        if item.startswith("$"):
            if item[1:] not in variables:
                problems.append(f"{name}: template variable {item} is not defined")
            continue
        key, sep, value = item.lstrip("!").partition(":")
        if not sep or not value:
            problems.append(f"{name}: filter {item!r} is not key:value")
        elif key not in allowed_keys:
            problems.append(f"{name}: filters on tag {key!r}, which it does not carry")
        elif key in spec.values and value not in spec.values[key]:
            problems.append(f"{name}: {key}:{value} is never emitted (values: {spec.values[key]})")
        elif key == "dependency" and value not in KNOWN_DEPENDENCIES:
            problems.append(f"{name}: dependency:{value} is not a guard (known: {sorted(KNOWN_DEPENDENCIES)})")
    for key in _filters(use["by"] or ""):
        if key not in allowed_keys:
            problems.append(f"{name}: groups by tag {key!r}, which it does not carry")
    return problems


# The guards a gateway creates (resilience.* config sections); per-model LLM guards keep these prefixes.
KNOWN_DEPENDENCIES = frozenset({"embedder", "vector_db", "llm", "llm_fallback"})


def metric_uses(query: str) -> tuple[list[re.Match[str]], list[str]]:
    """The metric queries in ``query`` and the problems of names that are not one (a misspelled prefix)."""
    uses = list(METRIC_USE.finditer(query))
    problems = []
    covered = [(m.start("metric"), m.end("metric")) for m in uses]
    for m in re.finditer(r"[A-Za-z_][\w]*(?:\.[\w]+)+", query):
        if any(a <= m.start() < b for a, b in covered) or re.fullmatch(r"\d+(\.\d+)?", m[0]):
            continue
        if m[0].startswith(("as_count", "as_rate")) or m[0] in ("dependency.name", "env.name", "service.name"):
            continue
        problems.append(f"{m[0]}: a metric name without a {{tag filter}} (or not a metric at all)")
    for use in uses:
        if not use["metric"].startswith(NAMESPACE + "."):
            problems.append(f"{use['metric']}: not under the {NAMESPACE}. namespace")
    return uses, problems


def dashboard_problems(dashboard: dict[str, Any]) -> list[str]:
    """Every metric/tag/value/aggregator/formula/template-variable problem of a dashboard JSON."""
    variables = [v.get("name") for v in dashboard.get("template_variables", [])]
    problems = [f"template variable {v!r} has no prefix tag the catalogue carries"
                for v in dashboard.get("template_variables", []) if v.get("prefix") not in CONSTANT_TAGS]
    for widget in _widgets(dashboard.get("widgets", [])):
        title = widget.get("title") or widget.get("type")
        for request in widget.get("requests", []) or []:
            names = set()
            for q in request.get("queries", []) or []:
                names.add(q.get("name"))
                problems += [f"{title}: {p}" for p in _query_string_problems(q.get("query", ""), variables)]
            if "q" in request:
                problems += [f"{title}: {p}" for p in _query_string_problems(request["q"], variables)]
            for formula in request.get("formulas", []) or []:
                text = formula.get("formula", "")
                for ref in set(re.findall(r"\b([a-z][a-z0-9_]*)\b", text)) - {"abs", "log2", "log10", "cumsum",
                                                                              "integral", "per_second", "per_minute"}:
                    if ref not in names:
                        problems.append(f"{title}: formula {text!r} refers to query {ref!r}, which is not defined")
    return problems


def _widgets(widgets: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for w in widgets:
        definition = w.get("definition", {})
        yield definition
        yield from _widgets(definition.get("widgets", []) or [])


def _query_string_problems(query: str, variables: Iterable[str]) -> list[str]:
    uses, problems = metric_uses(query)
    for use in uses:
        problems += query_problems(use, template_vars=variables)
    return problems


def monitor_problems(monitor: dict[str, Any]) -> list[str]:
    """Problems of one monitor: its query (as :func:`dashboard_problems`), its time aggregator,
    thresholds agreeing with the query, and every ``{{variable}}`` of its message and name."""
    name = monitor.get("name", "?")
    query = monitor.get("query", "")
    m = MONITOR_QUERY.match(query)
    if m is None:
        return [f"{name}: query is not <time_agg>(last_N):<expr> <cmp> <threshold>"]
    problems = [f"{name}: {p}" for p in _query_string_problems(m["expr"], ())]
    if m["time_agg"] not in TIME_AGGREGATORS:
        problems.append(f"{name}: unknown time aggregator {m['time_agg']!r}")
    uses = list(METRIC_USE.finditer(m["expr"]))
    if m["time_agg"] == "percentile" and not all(u["agg"] and PERCENTILE.fullmatch(u["agg"]) for u in uses):
        problems.append(f"{name}: percentile() needs pNN: queries")
    thresholds = monitor.get("options", {}).get("thresholds", {})
    critical, warning = thresholds.get("critical"), thresholds.get("warning")
    if critical is None or float(critical) != float(m["threshold"]):
        problems.append(f"{name}: options.thresholds.critical {critical} != the query's {m['threshold']}")
    if warning is not None and critical is not None and COMPARATORS[m["cmp"]](float(warning), float(critical)):
        problems.append(f"{name}: warning {warning} is beyond critical {critical} for {m['cmp']}")
    window_min = int(m["n"]) * (60 if m["unit"] == "h" else 1)
    options = monitor.get("options", {})
    if options.get("notify_no_data") and float(options.get("no_data_timeframe") or 0) < 2 * window_min:
        problems.append(f"{name}: no_data_timeframe {options.get('no_data_timeframe')} min is under twice the "
                        f"{window_min} min window (Datadog's rule; the window would still hold data)")
    groups = set().union(*(set(_filters(u["by"] or "")) for u in uses)) if uses else set()
    for text in (monitor.get("message", ""), name):
        for block, var in MESSAGE_VARIABLE.findall(text):
            if block:
                if var not in MESSAGE_BLOCKS:
                    problems.append(f"{name}: unknown message block {{{{{block}{var}}}}}")
            elif var in MESSAGE_BUILTINS:
                continue
            elif var.endswith(".name"):
                if var[:-5] not in groups:
                    problems.append(f"{name}: {{{{{var}}}}} is not a group of the query (groups: {sorted(groups)})")
            else:
                problems.append(f"{name}: unknown message variable {{{{{var}}}}}")
    return problems


# ---- recordings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    t: float
    name: str
    type: str  # c | g | d | h
    values: tuple[float, ...]
    tags: tuple[tuple[str, str], ...]

    @property
    def tag(self) -> dict[str, str]:
        return dict(self.tags)


def parse_line(t: float, line: str) -> Point | None:
    """One DogStatsD line ``name:v[:v…]|type[|@rate][|#k:v,…]`` (events ``_e{`` and checks are skipped)."""
    if line.startswith(("_e{", "_sc|")):
        return None
    head, kind, *fields = line.split("|")
    name, *values = head.split(":")
    tags: list[tuple[str, str]] = []
    for f in fields:
        if f.startswith("#"):
            tags = [tuple(x.split(":", 1)) if ":" in x else (x, "") for x in f[1:].split(",")]  # type: ignore[misc]
    return Point(t, name, kind, tuple(float(v) for v in values), tuple(sorted(tags)))


@dataclass
class Recording:
    meta: dict[str, Any]
    points: list[Point] = field(default_factory=list)

    @property
    def end_t(self) -> float:
        return max((p.t for p in self.points), default=0.0)


def read_recording(path: Path) -> Recording:
    """A ``python -m chaos.record`` file: a JSON header line, then ``{"t", "line"}`` per DogStatsD line."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        meta = json.loads(f.readline())
        points = [p for p in (parse_line(e["t"], e["line"]) for e in map(json.loads, f)) if p is not None]
    return Recording(meta, points)


# ---- evaluation ------------------------------------------------------------------------------------
STATES = ("OK", "Warn", "Alert", "No Data")


@dataclass(frozen=True)
class Verdict:
    state: str
    value: float | None


def _matches(point: Point, filters: list[str]) -> bool:
    tags = point.tag
    for item in filters:
        if item == "*":
            continue
        negate = item.startswith("!")
        key, _, value = item.lstrip("!").partition(":")
        if (tags.get(key) == value) == negate:
            return False
    return True


def _space(agg: str, values: list[float]) -> float:
    if agg == "sum":
        return sum(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    return sum(values) / len(values)


def _time(agg: str, values: list[float]) -> float:
    if agg == "last":
        return values[-1]
    return _space(agg, values)


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100.0 * len(ordered))) - 1]


def _series(use: re.Match[str], points: list[Point], start: float, end: float
            ) -> dict[tuple[str, ...], dict[int, float] | list[float]]:
    """Group → per-second values (counts summed, gauges space-aggregated) or, for pNN, all values."""
    filters = _filters(use["filter"])
    groups = _filters(use["by"] or "")
    agg = use["agg"] or "avg"
    percentile = PERCENTILE.fullmatch(agg)
    raw: dict[tuple[str, ...], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        if p.name != use["metric"] or not (start <= p.t < end) or not _matches(p, filters):
            continue
        key = tuple(p.tag.get(g, "N/A") for g in groups)
        raw[key][int(p.t)].extend(p.values)
    out: dict[tuple[str, ...], Any] = {}
    for key, per_second in raw.items():
        if percentile:
            out[key] = [v for vs in per_second.values() for v in vs]
        else:
            out[key] = {s: _space(agg, vs) for s, vs in per_second.items()}
    return out


_ALLOWED_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load, ast.Add, ast.Sub,
                  ast.Mult, ast.Div, ast.USub)


def _formula(expr: str, uses: list[re.Match[str]]) -> Callable[[dict[str, float]], float]:
    text, shift = expr, 0
    for i, use in enumerate(uses):
        a, b = use.start() + shift, use.end() + shift
        text = text[:a] + f"q{i}" + text[b:]
        shift += len(f"q{i}") - (use.end() - use.start())
    tree = ast.parse(text.strip(), mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(f"unsupported formula element {type(node).__name__} in {expr!r}")
    code = compile(tree, "<monitor>", "eval")

    def run(values: dict[str, float]) -> float:
        try:
            return float(eval(code, {"__builtins__": {}}, values))  # noqa: S307 - AST checked above
        except ZeroDivisionError:
            return math.nan
    return run


def evaluate(monitor: dict[str, Any], points: list[Point], at_t: float, *,
             first_seen: dict[tuple[str, ...], float] | None = None) -> dict[tuple[str, ...], Verdict]:
    """The monitor's state per group at time ``at_t`` (seconds, the recording's clock)."""
    m = MONITOR_QUERY.match(monitor["query"])
    if m is None:
        raise ValueError(f"unsupported monitor query {monitor['query']!r}")
    window_s = int(m["n"]) * (60 if m["unit"] == "m" else 3600)
    time_agg, cmp = m["time_agg"], COMPARATORS[m["cmp"]]
    options = monitor.get("options", {})
    critical = float(options.get("thresholds", {}).get("critical", m["threshold"]))
    warning = options.get("thresholds", {}).get("warning")
    uses = list(METRIC_USE.finditer(m["expr"]))
    formula = _formula(m["expr"], uses)
    series = [_series(u, points, at_t - window_s, at_t) for u in uses]
    groups = set().union(*(set(s) for s in series))
    out: dict[tuple[str, ...], Verdict] = {}
    for key in sorted(groups):
        per_query = [s.get(key) for s in series]
        if time_agg == "percentile":
            q = float(PERCENTILE.fullmatch(uses[0]["agg"])[1])  # type: ignore[index]
            samples = cast("list[float] | None", per_query[0])  # pNN series hold every value
            value = _nearest_rank(samples, q) if samples else math.nan
        else:
            per_second_of = cast("list[dict[int, float] | None]", per_query)  # per-second series
            if time_agg == "sum":  # each query summed over the window, then the formula
                value = formula({f"q{i}": sum(v.values()) if v else 0.0 for i, v in enumerate(per_second_of)})
            else:  # the formula per second, then the time aggregation
                seconds = sorted(set().union(*(set(v) for v in per_second_of if v)))
                per_second = [formula({f"q{i}": (v or {}).get(s, 0.0) for i, v in enumerate(per_second_of)})
                              for s in seconds]
                per_second = [v for v in per_second if not math.isnan(v)]
                value = _time(time_agg, per_second) if per_second else math.nan
        if math.isnan(value):
            continue
        state = "Alert" if cmp(value, critical) else "Warn" if warning is not None and cmp(value, float(warning)) \
            else "OK"
        out[key] = Verdict(state, value)
    if options.get("notify_no_data") and first_seen:
        timeframe_s = float(options.get("no_data_timeframe") or 2 * window_s / 60) * 60
        for key, seen_at in first_seen.items():
            if key not in out and seen_at < at_t - timeframe_s:
                recent = [_series(u, points, at_t - timeframe_s, at_t).get(key) for u in uses]
                if not any(recent):
                    out[key] = Verdict("No Data", None)
    return out


def groups_seen(monitor: dict[str, Any], points: list[Point]) -> dict[tuple[str, ...], float]:
    """Each group of the monitor's first query → when it first reported (for no-data detection)."""
    m = MONITOR_QUERY.match(monitor["query"])
    assert m is not None
    use = next(METRIC_USE.finditer(m["expr"]))
    filters, groups = _filters(use["filter"]), _filters(use["by"] or "")
    seen: dict[tuple[str, ...], float] = {}
    for p in points:
        if p.name == use["metric"] and _matches(p, filters):
            seen.setdefault(tuple(p.tag.get(g, "N/A") for g in groups), p.t)
    return seen


def worst_state(monitor: dict[str, Any], points: list[Point], *, step_s: float = 10.0,
                until_t: float | None = None) -> tuple[str, dict[str, Any]]:
    """Step the evaluation through the recording every ``step_s``; the worst state reached (OK < Warn <
    Alert; No Data counted separately) and where: ``{"state", "group", "value", "at_t"}``."""
    end = until_t if until_t is not None else max((p.t for p in points), default=0.0)
    seen = groups_seen(monitor, points)
    worst, where = "OK", dict[str, Any](state="OK", group=None, value=None, at_t=None)
    t = step_s
    while t <= end + 1e-9:
        for key, verdict in evaluate(monitor, points, t, first_seen=seen).items():
            if STATES.index(verdict.state) > STATES.index(worst) and verdict.state != "No Data":
                worst, where = verdict.state, {"state": verdict.state, "group": key, "value": verdict.value,
                                               "at_t": round(t, 1)}
        t += step_s
    return worst, where
