"""The catalogue as the Markdown table in docs/observability.md (``python -m gateway.telemetry``)."""
from __future__ import annotations

from pathlib import Path

from gateway.config import replace_between
from gateway.telemetry.catalogue import CATALOGUE

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "observability.md"


def catalogue_rows(namespace: str = "rag") -> list[tuple[str, str, str, str, str, str]]:
    """(Datadog name, Prometheus name, type, unit, tags, description) for every metric."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    for spec in CATALOGUE:
        prom = spec.prometheus_name(namespace) + ("_total" if spec.type == "count" else "")
        desc = spec.description + ("" if spec.plotted else f" *Not on the dashboard: {spec.unplotted_reason}*")
        tags = ", ".join(f"{t} ({' / '.join(spec.values[t])})" if t in spec.values else t for t in spec.tags)
        rows.append((spec.datadog_name(namespace), prom, spec.type, spec.unit, tags or "—", desc))
    return rows


def catalogue_markdown(namespace: str = "rag") -> str:
    lines = ["| metric (DogStatsD) | Prometheus | type | unit | tags | meaning |",
             "|---|---|---|---|---|---|"]
    for dd, prom, kind, unit, tags, desc in catalogue_rows(namespace):
        lines.append(f"| `{dd}` | `{prom}` | {kind} | {unit} | {tags} | {desc} |")
    return "\n".join(lines) + "\n"


DOC_MARKERS = ("<!-- metric-catalogue:start -->\n", "<!-- metric-catalogue:end -->")


def render_doc(text: str) -> str:
    """``text`` with the catalogue table between the markers regenerated."""
    return replace_between(text, DOC_MARKERS, catalogue_markdown())


def refresh_doc(path: Path = DOC) -> None:
    """Rewrite the catalogue table in ``path`` (docs/observability.md)."""
    path.write_text(render_doc(path.read_text(encoding="utf-8")), encoding="utf-8")
