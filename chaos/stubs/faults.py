"""Run-time switchable faults for the stand-in upstreams (HTTP and gRPC alike).

A stand-in holds one :class:`Faults`; tests (and the drill runner, over the stand-in's
``/__faults__`` control endpoint) change it while the stand-in is serving.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Faults:
    latency_s: float = 0.0          # added before answering
    status: int | None = None       # answer with this HTTP status (gRPC: mapped code) instead of serving
    retry_after_s: float | None = None  # sent as Retry-After with ``status``
    hang: bool = False              # accept the request, never answer (until faults are cleared)
    reset: bool = False             # close the connection without answering
    error_rate: float = 1.0         # share of requests ``status``/``hang``/``reset`` applies to (0..1)
    malformed: bool = False         # answer 200 with a body that is not valid JSON
    stream_cut_after: int | None = None   # SSE: drop the connection after N events
    stream_stall_after: int | None = None  # SSE: stop sending (keep the socket open) after N events
    models: list[str] = field(default_factory=list)  # LLM stand-in: apply only to these models ([] = all)
    times: int | None = None        # fault only the next N requests it applies to, then serve normally
    error_message: str | None = None  # message of the error body sent with ``status``
    # LLM stand-in only:
    first_token_delay_s: float = 0.0  # SSE: wait this long before the first content delta
    event_interval_s: float = 0.0   # SSE: pacing between content deltas (a long, healthy stream)
    no_stop: bool = False           # SSE: end the stream cleanly but without message_stop
    malformed_after: int | None = None  # SSE: after N events send one whose data is not JSON, then end
    reject_prefill: bool = False    # 400 when the conversation ends with an assistant turn (newer models)

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default_factory() if callable(f.default_factory) else f.default)  # type: ignore[misc]

    def update(self, **changes: Any) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault field(s): {sorted(unknown)}")
        for k, v in changes.items():
            setattr(self, k, v)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self != Faults()
