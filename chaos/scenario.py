"""Chaos scenarios: YAML files shaped after Chaos Toolkit's experiment format, validated with pydantic.

A scenario says what "healthy" means (the *steady-state hypothesis*: probes with tolerances, each
checked in some of the phases ``before`` / ``during`` / ``after``), what to break and when (the
*method*: a timeline of actions, each optionally undone after ``duration_s``), what to undo whatever
happens (*rollbacks*) and the traffic to drive meanwhile (*load*, bounded in count and time)::

    title: Vector DB blackhole
    target: vector_db
    configuration: {vector_db_timeout_ms: 1500}      # defaults for ${...}; --var / the local stack override
    steady-state-hypothesis:
      before_s: 2          # baseline load before the method
      after_s: 3           # recovery window after the method
      probes:
        - {name: no 5xx, type: availability, tolerance: {min: 0.995}}
        - {name: p99, type: latency_p99, phases: [during], tolerance: {max: "${vector_db_timeout_ms} + 50"}}
    method:
      - {at_s: 0, action: toxic_add, target: vector_db, duration_s: 4,
         attributes: {type: timeout, stream: downstream, attributes: {timeout: 0}}}
    rollbacks:
      - {action: toxic_remove, target: vector_db, attributes: {name: blackhole}}
    load: {rate_per_s: 8, concurrency: 16, max_requests: 200, queries_file: corpus/golden.jsonl}

Differences from Chaos Toolkit, on purpose: actions name an *operation* (``toxic_add``, ``stub_fault``…)
instead of a Python/HTTP provider, the method is a timeline (``at_s``) rather than a sequence with
pauses, and probes are measured from the drill's own load instead of being called once.

``${name}`` in any string is replaced from ``configuration`` (overridden by caller variables); a
string that is then plain arithmetic (``"1500 + 50"``) becomes a number. :func:`load_scenario`
raises :class:`ScenarioError` naming the file and the field's path.
"""
from __future__ import annotations

import ast
import operator
import re
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chaos.stubs.faults import Faults
from gateway.contract import Mode

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
REPO_ROOT = Path(__file__).resolve().parent.parent

# shared_state: the breakers' Redis; clients: the gateway's own clients (slow_clients, noisy_client)
DEPENDENCIES = ("embedder", "vector_db", "llm", "shared_state", "clients")
Phase = Literal["before", "during", "after"]
PHASES: tuple[Phase, ...] = ("before", "during", "after")
ProbeType = Literal["availability", "latency_p99", "mode", "degraded_labelled", "upstream_attempts_ratio",
                    "breaker_transitions", "hung_requests", "recovery_time", "degraded_rate",
                    "breaker_opened", "breaker_closed", "blame", "resets_fired", "truncated_streams",
                    "kb_switched", "shared_state", "upstream_concurrency", "slow_headers_cut",
                    "noisy_client_accepted"]
ActionType = Literal["toxic_add", "toxic_update", "toxic_remove", "proxy_disable", "proxy_enable",
                     "stub_fault", "stub_clear", "gateway_fault", "gateway_fault_clear",
                     "breaker_open", "breaker_close", "breaker_reset", "kb_activate", "kb_rollback",
                     "slow_clients", "noisy_client"]
MODES = tuple(m.value for m in Mode)  # /v1/query's modes, and /v1/messages' fallback_model
SHARED_STATES = ("off", "starting", "ok", "degraded")  # /health components.shared_state.status
# Actions that start a fault (a "during" window) and may carry ``duration_s`` (undone after it).
FAULT_ACTIONS = frozenset({"toxic_add", "proxy_disable", "stub_fault", "gateway_fault", "breaker_open",
                           "kb_activate", "kb_rollback", "slow_clients", "noisy_client"})
TOXIC_TYPES = ("latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data", "noop")
_FAULT_FIELDS = frozenset(f.name for f in dc_fields(Faults))


class ScenarioError(ValueError):
    """An invalid scenario; the message names the file and the offending field's path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Tolerance(_Model):
    """Limits for one probe; which keys apply depends on the probe type (see :class:`Probe`)."""

    min: float | None = Field(None, description="lower bound of the measured value")
    max: float | None = Field(None, description="upper bound of the measured value")
    expect: list[str] = Field(default_factory=list, description="mode probe: the modes that count")
    max_per_min: float | None = Field(None, ge=0, description="breaker_transitions: allowed per minute, "
                                      "scaled to the window (never below one open + close)")
    allow_undegraded: list[str] = Field(default_factory=list, description="degraded_labelled: modes that may "
                                        "be undegraded besides full (e.g. cached, against a fresh answer cache)")
    plus_fallback_p99: bool = Field(False, description="latency_p99: add the p99 of the phase's "
                                    "short-circuited (fallback-only) requests to max")

    @field_validator("allow_undegraded")
    @classmethod
    def _known_modes(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; known: {list(MODES)}")
        return value


# (required tolerance keys, default phases) per probe type.
_PROBE_RULES: dict[str, tuple[tuple[str, ...], tuple[Phase, ...]]] = {
    "availability": (("min",), PHASES),
    "latency_p99": (("max",), PHASES),
    "mode": (("expect", "min"), ("during",)),
    "degraded_labelled": (("min",), PHASES),
    "upstream_attempts_ratio": (("max",), ("during",)),
    "breaker_transitions": ((), ("during",)),
    "hung_requests": (("max",), PHASES),
    "recovery_time": (("max",), ("after",)),
    "degraded_rate": ((), ("after",)),
    "breaker_opened": (("min",), ("during",)),
    "breaker_closed": ((), ("after",)),
    "blame": (("min",), ("during",)),
    "resets_fired": (("min",), ("during",)),
    "truncated_streams": (("max",), PHASES),
    "kb_switched": (("min",), ("during", "after")),
    "shared_state": (("expect", "min"), ("during",)),
    "upstream_concurrency": (("max",), ("during",)),
    "slow_headers_cut": (("max",), ("during",)),
    "noisy_client_accepted": (("max",), ("during",)),
}


class Probe(_Model):
    """One measurable property. Units: ratios 0..1, latency in ms, time in seconds, counts.

    - ``availability``: share of requests answered without a 5xx, transport error or hang ≥ ``min``
    - ``latency_p99``: p99 latency (ms) ≤ ``max`` (+ the fallback p99 with ``plus_fallback_p99``)
    - ``mode``: share of 200 answers whose mode is in ``expect`` ≥ ``min``
    - ``degraded_labelled``: share of answers correctly labelled ≥ ``min`` (mode ≠ full ⇒ degraded and
      degradations; body and X-RAG-* headers agree)
    - ``upstream_attempts_ratio``: ``dependency``'s upstream attempts ÷ requests ≤ ``max``
    - ``breaker_transitions``: state changes of ``dependency``'s breaker ≤ ``max`` (or ``max_per_min``)
    - ``hung_requests``: requests unfinished at their deadline + slack ≤ ``max``
    - ``recovery_time``: seconds from the last fault's removal until the breaker is closed ≤ ``max``
    - ``degraded_rate``: share of degraded answers within ``min``..``max`` (``since: recovered`` starts
      the count when the breaker was seen closed again)
    - ``breaker_opened``: times ``dependency``'s breaker opened in the phase ≥ ``min`` (the fault was
      seen by the breaker, not just survived by luck)
    - ``breaker_closed``: ``dependency``'s breaker is closed at the end of the phase (it recovered)
    - ``blame``: share of degraded answers whose degradations name the faulted dependency and no
      healthy upstream ≥ ``min``
    - ``resets_fired``: TCP resets the fault proxy sent on ``dependency``'s proxy in the phase ≥ ``min``
      (read from our proxy's ``/__stats__``; a real Toxiproxy has no such counter: no data)
    - ``truncated_streams``: streams that ended without their end event (``message_stop`` / ``done``)
      *and* without an Anthropic ``event: error`` ≤ ``max`` (a silently truncated "success")
    - ``kb_switched``: during, the share of answers whose ``kb_version`` differs from the one served
      before the method ≥ ``min`` (the switch took effect under load); after, the share served by that
      version again ≥ ``min`` (the switch back took effect)
    - ``shared_state``: share of the phase's samples in which ``GET /health`` reported
      ``components.shared_state.status`` in ``expect`` ≥ ``min`` (Redis down/slow → ``degraded``)
    - ``upstream_concurrency``: the most calls ``dependency``'s stand-in served at once (``model``'s alone
      if given) since the drill started ≤ ``max`` (a bulkhead bounds it however many requests wait)
    - ``slow_headers_cut``: the longest any ``slow_clients`` header-trickling connection stayed open (s)
      ≤ ``max`` (the gateway closes slowloris connections after its header timeout)
    - ``noisy_client_accepted``: requests per second the gateway took on (answered other than 429) from
      the ``noisy_client`` actions ≤ ``max`` (the rate limiter holds a flooding client to its rate)
    """

    name: str
    type: ProbeType
    tolerance: Tolerance
    phases: list[Phase] = Field(default_factory=list, description="default depends on the type")
    dependency: str | None = Field(None, description="breaker/attempt probes: default the scenario's target")
    source: Literal["auto", "stub", "gateway"] = Field(
        "auto", description="upstream_attempts_ratio: stand-in /__stats__ or the gateway's guard stats")
    skip_s: float = Field(0.0, ge=0, description="ignore requests in the first skip_s seconds of each window")
    model: str | None = Field(None, description="upstream_concurrency: count this model's calls alone")
    since: Literal["phase_start", "recovered"] = "phase_start"

    @model_validator(mode="after")
    def _rules(self) -> "Probe":
        required, default_phases = _PROBE_RULES[self.type]
        tol = self.tolerance
        for key in required:
            if getattr(tol, key) in (None, []):
                raise ValueError(f"tolerance.{key} is required for a {self.type} probe")
        if self.type == "degraded_rate" and tol.max is None and tol.min is None:
            raise ValueError("tolerance.min or tolerance.max is required for a degraded_rate probe")
        if self.type == "breaker_transitions" and tol.max is None and tol.max_per_min is None:
            raise ValueError("tolerance.max or tolerance.max_per_min is required for a breaker_transitions probe")
        if self.type in ("availability", "mode", "degraded_labelled", "degraded_rate", "blame"):
            for key in ("min", "max"):
                value = getattr(tol, key)
                if value is not None and not 0 <= value <= 1:
                    raise ValueError(f"tolerance.{key} is a ratio (0..1) for a {self.type} probe")
        known = SHARED_STATES if self.type == "shared_state" else MODES
        unknown = [m for m in tol.expect if m not in known]
        if unknown:
            raise ValueError(f"tolerance.expect: unknown value(s) {unknown} for a {self.type} probe; "
                             f"known: {list(known)}")
        if not self.phases:
            self.phases = list(default_phases)
        if self.dependency is not None and self.dependency not in (*DEPENDENCIES, "llm_fallback"):
            raise ValueError(f"dependency must be one of {[*DEPENDENCIES, 'llm_fallback']}")
        return self


class Safeguard(_Model):
    """Stop the fault early when the steady state is already lost (Chaos Toolkit's safeguards control):
    while the method runs, if fewer than ``availability_min`` of the requests finished in the last
    ``window_s`` seconds (at least ``min_requests`` of them) were available, every fault is undone, the
    rest of the method is skipped and the journal says ``aborted_by_safeguard``."""

    availability_min: float = Field(0.5, ge=0, le=1, description="0 = no safeguard")
    window_s: float = Field(5.0, gt=0, le=600)
    min_requests: int = Field(10, ge=1)


class Hypothesis(_Model):
    title: str = "the gateway degrades honestly"
    before_s: float = Field(2.0, ge=0.5, le=600, description="baseline load before the method (s)")
    after_s: float = Field(3.0, ge=0, le=600, description="load kept up after the method (s)")
    probes: list[Probe] = Field(..., min_length=1)


class Action(_Model):
    """One step of the method timeline (``at_s`` seconds after the method starts)."""

    at_s: float = Field(0.0, ge=0, le=3600)
    action: ActionType
    target: str = Field(..., min_length=1, description="a dependency, a proxy/stub name or a breaker name")
    attributes: dict[str, Any] = Field(default_factory=dict)
    duration_s: float | None = Field(None, gt=0, le=3600, description="undo the fault after this long")
    name: str | None = None

    @model_validator(mode="after")
    def _attributes(self) -> "Action":
        _check_action(self.action, self.attributes)
        if self.duration_s is not None and self.action not in FAULT_ACTIONS:
            raise ValueError(f"duration_s only applies to {sorted(FAULT_ACTIONS)}")
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.action} {self.target}"


class Rollback(_Model):
    action: ActionType
    target: str = Field(..., min_length=1)
    attributes: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None

    @model_validator(mode="after")
    def _attributes(self) -> "Rollback":
        _check_action(self.action, self.attributes)
        return self


class Load(_Model):
    """Open-loop load: ``rate_per_s`` arrivals, at most ``concurrency`` in flight (more are counted as
    ``skipped``, never queued), at most ``max_requests`` in all; the drill's phases set its length and
    ``duration_s`` (if set) caps it."""

    rate_per_s: float = Field(..., gt=0, le=500)
    concurrency: int = Field(16, ge=1, le=512)
    max_requests: int = Field(..., ge=1, le=100_000)
    duration_s: float | None = Field(None, gt=0, le=3600, description="hard cap on the load's length (s)")
    queries: list[str] = Field(default_factory=list)
    queries_file: str | None = Field(None, description=".txt (one per line) or .jsonl with a query field")
    endpoint: Literal["query", "messages"] = Field(
        "query", description="query = POST /v1/query (the contract body); messages = POST /v1/messages "
        "(Anthropic-compatible; mode/degradations from the X-RAG-* headers)")
    model: str = Field("claude-sonnet-4-6", description="endpoint messages: the model asked for")
    stream_share: float = Field(0.0, ge=0, le=1, description="share of requests sent with stream: true")
    top_k: int | None = Field(None, ge=1, le=100)
    request_timeout_s: float = Field(5.0, gt=0, le=120, description="sent as X-Request-Timeout (the deadline)")
    slack_s: float = Field(1.5, ge=0, le=60, description="a request not done by deadline + slack is hung")
    clients: int = Field(1, ge=1, le=64, description=(
        "spread the arrivals round-robin over this many clients (loopback targets only: each from its own "
        "127.0.1.N address, so a per-client rate limit sees many users, not one)"))

    @model_validator(mode="after")
    def _has_queries(self) -> "Load":
        if not self.queries and not self.queries_file:
            raise ValueError("load needs queries or queries_file")
        return self


class Scenario(_Model):
    title: str = Field(..., min_length=1)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    target: list[str] = Field(..., min_length=1, description="the dependencies this scenario breaks")
    configuration: dict[str, Any] = Field(default_factory=dict)
    steady_state_hypothesis: Hypothesis = Field(..., alias="steady-state-hypothesis")
    method: list[Action] = Field(..., min_length=1)
    rollbacks: list[Rollback] = Field(default_factory=list)
    load: Load
    safeguard: Safeguard = Field(default_factory=Safeguard)
    # Filled by the loader, not the file.
    id: str = Field("", exclude=True)
    path: str | None = Field(None, exclude=True)

    @field_validator("target", mode="before")
    @classmethod
    def _target_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.replace("+", ",").split(",") if v.strip()]
        return value

    @field_validator("target")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in DEPENDENCIES]
        if unknown:
            raise ValueError(f"unknown dependency {unknown}; known: {list(DEPENDENCIES)}")
        return value

    @property
    def method_duration_s(self) -> float:
        """Seconds from the method's start to the end of its last action or fault window."""
        return max(a.at_s + (a.duration_s or 0.0) for a in self.method)

    @property
    def total_s(self) -> float:
        h = self.steady_state_hypothesis
        return h.before_s + self.method_duration_s + h.after_s

    def fault_windows(self) -> list[tuple[float, float]]:
        """Merged ``[start, end]`` of the fault windows, seconds from the method's start."""
        spans = sorted((a.at_s, a.at_s + a.duration_s if a.duration_s else self.method_duration_s)
                       for a in self.method if a.action in FAULT_ACTIONS)
        merged: list[list[float]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return [(s, e) for s, e in merged]

    def queries_list(self) -> list[str]:
        """The load's queries (inline plus file), resolved relative to the scenario, then the repo."""
        out = list(self.load.queries)
        if self.load.queries_file:
            out.extend(read_queries(resolve_path(self.load.queries_file, self.path)))
        if not out:
            raise ScenarioError(f"{self.path or self.id}: load.queries_file has no queries")
        return out


def _check_action(action: str, attrs: dict[str, Any]) -> None:
    if action == "toxic_add":
        kind = attrs.get("type")
        if kind not in TOXIC_TYPES:
            raise ValueError(f"attributes.type must be one of {list(TOXIC_TYPES)} for toxic_add")
        stream = attrs.get("stream", "downstream")
        if stream not in ("upstream", "downstream"):
            raise ValueError("attributes.stream must be upstream or downstream")
        toxicity = attrs.get("toxicity", 1.0)
        if not isinstance(toxicity, (int, float)) or not 0 <= toxicity <= 1:
            raise ValueError("attributes.toxicity must be a number within 0..1")
        extra = set(attrs) - {"type", "stream", "toxicity", "attributes", "name"}
        if extra:
            raise ValueError(f"unknown toxic_add attribute(s) {sorted(extra)}")
        if not isinstance(attrs.get("attributes", {}), dict):
            raise ValueError("attributes.attributes must be a mapping of toxic attributes")
    elif action in ("toxic_update", "toxic_remove"):
        if not isinstance(attrs.get("name"), str):
            raise ValueError(f"attributes.name (the toxic's name) is required for {action}")
    elif action == "stub_fault":
        unknown = set(attrs) - _FAULT_FIELDS
        if unknown:
            raise ValueError(f"unknown stand-in fault field(s) {sorted(unknown)}; known: {sorted(_FAULT_FIELDS)}")
        if not attrs:
            raise ValueError("stub_fault needs at least one fault field in attributes")
    elif action == "slow_clients":
        unknown = set(attrs) - {"trickle", "slow_readers", "trickle_headers", "bytes_per_s"}
        if unknown:
            raise ValueError(f"unknown slow_clients attribute(s) {sorted(unknown)}")
        for key in ("trickle", "slow_readers", "trickle_headers"):
            default = 0 if key == "trickle_headers" else 4
            if not isinstance(attrs.get(key, default), int) or not 0 <= attrs.get(key, default) <= 256:
                raise ValueError(f"attributes.{key} must be an integer within 0..256")
        if not isinstance(attrs.get("bytes_per_s", 20.0), (int, float)) or not attrs.get("bytes_per_s", 20.0) > 0:
            raise ValueError("attributes.bytes_per_s must be a positive number")
    elif action == "noisy_client":
        unknown = set(attrs) - {"rate_per_s", "source", "concurrency"}
        if unknown:
            raise ValueError(f"unknown noisy_client attribute(s) {sorted(unknown)}")
        rate = attrs.get("rate_per_s")
        if not isinstance(rate, (int, float)) or not 0 < rate <= 500:
            raise ValueError("attributes.rate_per_s (requests per second, 0 < r ≤ 500) is required for noisy_client")
        source = attrs.get("source", "127.0.0.2")
        if not isinstance(source, str) or not source.startswith("127."):
            raise ValueError("attributes.source must be a loopback address (127.x.y.z) other than the load's")
        if not isinstance(attrs.get("concurrency", 64), int) or not 1 <= attrs.get("concurrency", 64) <= 256:
            raise ValueError("attributes.concurrency must be an integer within 1..256")
    elif action == "kb_activate":
        if not isinstance(attrs.get("version"), str) or not attrs["version"]:
            raise ValueError("attributes.version (the KB version to activate) is required for kb_activate")
    elif action == "gateway_fault":
        from gateway.upstreams.faultinject import FaultSpec

        FaultSpec.model_validate(attrs)


# -- ${var} substitution ------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ARITH = re.compile(r"^[\d\s.+\-*/()eE]+$")
_OPS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.USub: operator.neg, ast.UAdd: operator.pos}


def _arith(text: str) -> float:
    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {text!r}")

    return ev(ast.parse(text.strip(), mode="eval"))


def substitute(tree: Any, variables: Mapping[str, Any], path: str = "") -> Any:
    """``tree`` with ``${name}`` replaced; raises ScenarioError naming the path of an unknown variable."""
    if isinstance(tree, dict):
        return {k: substitute(v, variables, f"{path}.{k}" if path else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [substitute(v, variables, f"{path}.{i}") for i, v in enumerate(tree)]
    if not isinstance(tree, str) or "${" not in tree:
        return tree
    whole = _VAR.fullmatch(tree.strip())
    if whole:
        if whole.group(1) not in variables:
            raise ScenarioError(f"{path}: unknown variable ${{{whole.group(1)}}}")
        return variables[whole.group(1)]

    def repl(m: re.Match[str]) -> str:
        if m.group(1) not in variables:
            raise ScenarioError(f"{path}: unknown variable ${{{m.group(1)}}}")
        return str(variables[m.group(1)])

    text = _VAR.sub(repl, tree)
    if _ARITH.match(text):
        try:
            value = _arith(text)
        except (ValueError, SyntaxError, ZeroDivisionError):
            return text
        return int(value) if float(value).is_integer() else value
    return text


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_scenario(data: Any, *, variables: Mapping[str, Any] | None = None, source: str = "<scenario>",
                   scenario_id: str = "") -> Scenario:
    """Validate a scenario given as data. Raises :class:`ScenarioError` (``source: field.path: message``)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping (title, target, steady-state-hypothesis, ...)")
    config = data.get("configuration") or {}
    if not isinstance(config, dict):
        raise ScenarioError(f"{source}: configuration: must be a mapping")
    merged = {**config, **(variables or {})}
    try:
        tree = substitute({k: v for k, v in data.items() if k != "configuration"}, merged)
        scenario = Scenario.model_validate({**tree, "configuration": merged})
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_format_errors(exc)}") from None
    scenario.id = scenario_id or scenario.id
    return scenario


def load_scenario(path: str | Path, variables: Mapping[str, Any] | None = None) -> Scenario:
    """Read and validate one YAML scenario (a bare name is looked up in ``chaos/scenarios/``)."""
    p = find_scenario(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{p}: not valid YAML: {exc}") from None
    scenario = parse_scenario(data, variables=variables, source=str(p), scenario_id=p.stem)
    scenario.path = str(p)
    return scenario


def find_scenario(name: str | Path) -> Path:
    p = Path(name)
    if p.exists():
        return p
    for candidate in (SCENARIO_DIR / f"{name}.yaml", SCENARIO_DIR / str(name)):
        if candidate.exists():
            return candidate
    raise ScenarioError(f"no scenario {str(name)!r} (a path, or a name in {SCENARIO_DIR})")


def all_scenarios(directory: Path = SCENARIO_DIR) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


def resolve_path(name: str, scenario_path: str | None) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    candidates = [Path(scenario_path).parent / p] if scenario_path else []
    candidates += [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.exists():
            return c
    raise ScenarioError(f"load.queries_file: not found: {name}")


def read_queries(path: Path) -> list[str]:
    """Queries from a .jsonl file (``query`` field) or a text file (one per line, # comments)."""
    import json

    out: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            item = json.loads(line)
            if isinstance(item, dict) and isinstance(item.get("query"), str):
                out.append(item["query"])
        else:
            out.append(line)
    return out
