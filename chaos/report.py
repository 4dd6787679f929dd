"""A drill's human outputs: report.md (verdict table), timeline.png, and the multi-drill summary.md.

Everything is drawn from the journal (``chaos.drill``), so a journal can be re-rendered later:
``python -c "from chaos.report import rerender; rerender('out/journal.json')"``.
The PNG uses matplotlib's object API on the Agg canvas (no pyplot state: safe off the main thread).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.contract import Mode
from gateway.extras import require

VERDICT_BADGE = {"pass": "PASS ✅", "deviated": "DEVIATED ❌", "failed": "FAILED ❌", "aborted": "ABORTED ⚠️"}
MODE_COLORS = {Mode.FULL: "#2e7d32", Mode.CACHED: "#1565c0", Mode.KEYWORD_FALLBACK: "#f9a825",
               Mode.EXTRACTIVE: "#ef6c00", Mode.FALLBACK_MODEL: "#6a1b9a", Mode.UNAVAILABLE: "#c62828"}
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.07, 1.0), "fontsize": 8, "borderaxespad": 0.0}
STATE_COLORS = {"closed": "#66bb6a", "half_open": "#ffa726", "open": "#e53935"}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return text + unit


_UNITS = {"latency_p99": " ms", "recovery_time": " s"}


def _tolerance(probe: dict[str, Any]) -> str:
    tol = probe["tolerance"]
    kind = probe["type"]
    unit = _UNITS.get(kind, "")
    parts = []
    if kind == "mode":
        parts.append(f"share of {'/'.join(tol.get('expect', []))} ≥ {tol.get('min')}")
    elif kind == "breaker_transitions":
        if "max" in tol:
            parts.append(f"≤ {tol['max']}")
        else:
            parts.append(f"≤ {tol.get('max_per_min')}/min → ≤ {_fmt(probe.get('limit'))} in window")
    else:
        if "min" in tol:
            parts.append(f"≥ {tol['min']}{unit}")
        if "max" in tol:
            text = f"≤ {tol['max']}{unit}"
            if tol.get("plus_fallback_p99"):
                text += f" + fallback p99 = {_fmt(probe.get('limit'), unit)}"
            parts.append(text)
    return ", ".join(parts) or "—"


def render_report(journal: dict[str, Any]) -> str:
    """The Markdown report of one drill."""
    j = journal
    lines = [f"# Drill: {j['title']} — {VERDICT_BADGE.get(j['verdict'], j['verdict'])}", ""]
    if j.get("description"):
        lines += [j["description"].strip(), ""]
    t = j["target"]
    load = j["load"]
    lines += [
        f"- scenario: `{j['scenario']}` (targets {', '.join(j['target_dependencies'])}); "
        f"tags: {', '.join(j.get('tags') or []) or '—'}",
        f"- gateway: {t['url']}; fault proxy: {t.get('toxiproxy') or '—'}; "
        f"stand-ins: {', '.join(f'{k}={v}' for k, v in t.get('stubs', {}).items()) or '—'}",
        f"- started {j['start']}, {j['duration_s']:.1f} s; status **{j['status']}**, deviated **{j['deviated']}**"
        + (f"; {j['error']}" if j.get("error") else ""),
        f"- load: {load['sent']} requests sent ({load['skipped']} skipped at the concurrency cap), "
        f"{load['rate_per_s']:g}/s, concurrency {load['concurrency']}, {load['streams']} streamed; "
        f"hung: {load['hung']}; by status: {_counts(load['by_status'])}",
        "",
    ]
    if (j.get("outputs") or {}).get("timeline"):
        lines += ["![timeline](timeline.png)", ""]
    lines += ["## Steady-state hypothesis", "",
              "| phase | probe | type | tolerance | measured | requests | result |",
              "|---|---|---|---|---|---|---|"]
    for phase in ("before", "during", "after"):
        st = j["steady_states"].get(phase)
        if st is None:
            lines.append(f"| {phase} | (not run) | | | | | — |")
            continue
        for p in st["probes"]:
            unit = _UNITS.get(p["type"], "")
            lines.append(f"| {phase} | {p['name']} | {p['type']} | {_tolerance(p)} | {_fmt(p['value'], unit)} | "
                         f"{p['requests']} | {'✅' if p['met'] else '❌'} |")
    details = [(phase, p) for phase in ("before", "during", "after")
               for p in ((j["steady_states"].get(phase) or {}).get("probes") or []) if p.get("detail")]
    if details:
        lines += ["", "<details><summary>probe details</summary>", ""]
        for phase, p in details:
            lines.append(f"- {phase} / {p['name']}: `{json.dumps(p['detail'], ensure_ascii=False)}`")
        lines += ["", "</details>"]
    lines += ["", "## Method", "", "| t (s) | step | attributes | result |", "|---|---|---|---|"]
    for e in j["run"]:
        attrs = json.dumps(e.get("attributes") or {}, ensure_ascii=False) if e["kind"] == "apply" else ""
        dur = f" for {e['duration_s']:g} s" if e.get("duration_s") else ""
        lines.append(f"| {e['t_s']:.2f} | {e['name']}{dur} | `{attrs}` | {e['status']}"
                     + (f": {e['error']}" if e.get("error") else "") + " |")
    lines += ["", "## Rollbacks", ""]
    if j["rollbacks"]:
        lines += ["| t (s) | step | result |", "|---|---|---|"]
        for e in j["rollbacks"]:
            error = f": {e['error']}" if e.get("error") else ""
            lines.append(f"| {e['t_s']:.2f} | {e['name']} | {e['status']}{error} |")
    else:
        lines.append("Nothing left to roll back (every fault was undone at the end of its window).")
    windows = ", ".join(f"{w['start_s']}–{w['end_s']} s ({'; '.join(w['actions'])})"
                        for w in j["fault_windows"] if w.get("start_s") is not None)
    lines += ["", "## Reading this", "",
              f"Phases (s since start): before {_span(j['phases']['before'])}, method {_span(j['phases']['method'])}, "
              f"after {_span(j['phases']['after'])}; fault windows: {windows or '—'}. "
              "`during` probes count the requests *started* inside a fault window. `pass` = the method ran and every "
              "during/after probe held; `deviated` = it ran and some probe did not; `failed` = the steady state did "
              "not hold before, or an action could not be applied; `aborted` = interrupted (rollbacks ran).", ""]
    return "\n".join(lines)


def _span(pair: list[Any]) -> str:
    a, b = pair
    return "—" if a is None else f"{a:.1f}–{_fmt(b)}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "—"


def render_summary(summary: dict[str, Any], out_dir: Path | None = None) -> str:
    """summary.md: one row per drill."""
    lines = ["# Chaos drills — summary", "",
             f"{len(summary['scenarios'])} drills, generated {summary['generated']}: "
             + ", ".join(f"{VERDICT_BADGE.get(k, k)} × {v}" for k, v in sorted(summary["totals"].items())), "",
             "| scenario | verdict | requests | hung | min availability | during the faults: p99 (ms) · degraded · "
             "modes | failed probes | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["scenarios"]:
        name = r["scenario"]
        if r.get("report") and out_dir is not None:
            try:
                name = f"[{name}]({Path(r['report']).resolve().relative_to(out_dir.resolve())})"
            except ValueError:
                pass
        failed = "<br>".join(r["failed_probes"]) or (r.get("error") or "")
        avail = r["min_availability"]
        modes = ", ".join(f"{k} {v}" for k, v in (r.get("modes_during") or {}).items())
        degraded = r.get("degraded_during")
        during = (f"{_fmt(r['p99_during_ms'])} · {'—' if degraded is None else f'{degraded:.0%}'} · {modes or '—'}")
        lines.append(f"| {name} | {VERDICT_BADGE.get(r['verdict'], r['verdict'])} | {r['requests']} | {r['hung']} | "
                     f"{'—' if avail is None else f'{avail:.1%}'} | {during} | {failed} | {r['duration_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_timeline(journal: dict[str, Any], path: Path) -> None:
    """timeline.png: latency p50/p99, availability, mode mix and breaker states per second, with the
    fault windows shaded. Raises :class:`gateway.extras.MissingExtra` without matplotlib."""
    require("matplotlib", extra="chaos", purpose="the drill timeline (timeline.png)")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    samples = journal["samples"]
    xs = [s["t"] + 0.5 for s in samples]
    guards = sorted({g for s in samples for g in (s.get("breakers") or {})})
    fig = Figure(figsize=(13, 9.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    heights = [3, 2, 3, max(1.2, 0.45 * len(guards))] if guards else [3, 2, 3]
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    ax_lat, ax_av, ax_mode = axes[:3]
    fig.suptitle(f"{journal['title']} — {journal['verdict'].upper()}  "
                 f"({journal['load']['sent']} requests, {journal['load']['rate_per_s']:g}/s)", fontsize=13)

    # Latency
    p50 = [s["p50_ms"] for s in samples]
    p99 = [s["p99_ms"] for s in samples]
    ax_lat.plot(xs, p99, color="#c62828", marker="o", ms=3, lw=1.5, label="p99")
    ax_lat.plot(xs, p50, color="#1565c0", marker="o", ms=3, lw=1.5, label="p50")
    hung = [(x, 1) for x, s in zip(xs, samples) if s["hung"]]
    ax_lat.set_ylabel("latency (ms)")
    if any(v for v in p99 if v) and max(v for v in p99 if v) > 20 * max(min(v for v in p99 if v), 1):
        ax_lat.set_yscale("log")
    for x, _ in hung:
        ax_lat.axvline(x, color="black", lw=2, alpha=0.7)
    ax_lat.legend(**_LEGEND)
    ax_lat.grid(alpha=0.3)

    # Availability (+ request count)
    av = [100.0 * s["available"] / s["requests"] if s["requests"] else None for s in samples]
    ax_av.plot(xs, av, color="#2e7d32", marker="o", ms=3, lw=1.5, label="non-5xx %")
    ax_av.set_ylim(-5, 105)
    ax_av.set_ylabel("available %")
    ax_av.grid(alpha=0.3)
    ax_req = ax_av.twinx()
    ax_req.bar(xs, [s["requests"] for s in samples], width=0.8, color="grey", alpha=0.2, label="requests/s")
    ax_av.legend(handles=[*ax_av.get_lines()[:1], Patch(color="grey", alpha=0.2, label="requests/s")], **_LEGEND)
    ax_req.set_ylabel("req/s", color="grey")
    ax_av.set_zorder(ax_req.get_zorder() + 1)
    ax_av.patch.set_visible(False)

    # Mode mix (stacked)
    keys = [m for m in MODE_COLORS if any(s["modes"].get(m) for s in samples)]
    others = sorted({k for s in samples for k in s["modes"] if k not in MODE_COLORS})
    bottom = [0] * len(samples)
    for key in keys + others:
        vals = [s["modes"].get(key, 0) for s in samples]
        ax_mode.bar(xs, vals, width=0.85, bottom=bottom, color=MODE_COLORS.get(key, "#424242"), label=key)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax_mode.set_ylabel("answers by mode")
    if keys or others:
        ax_mode.legend(**_LEGEND)
    ax_mode.grid(alpha=0.3, axis="y")

    # Breaker states
    if guards:
        ax_br = axes[3]
        for row, g in enumerate(guards):
            for s in samples:
                state = (s.get("breakers") or {}).get(g)
                if state:
                    ax_br.broken_barh([(s["t"], 1.0)], (row - 0.35, 0.7), color=STATE_COLORS.get(state, "grey"))
        ax_br.set_yticks(range(len(guards)), guards)
        ax_br.set_ylim(-0.6, len(guards) - 0.4)
        ax_br.set_ylabel("breaker")
        ax_br.legend(handles=[Patch(color=c, label=k.replace("_", "-")) for k, c in STATE_COLORS.items()],
                     **_LEGEND)
    axes[-1].set_xlabel("seconds since the drill started")
    if samples:
        axes[-1].set_xlim(0, samples[-1]["t"] + 1)

    # Fault windows and phases on every axis
    for w in journal["fault_windows"]:
        if w.get("start_s") is None:
            continue
        end = w["end_s"] if w.get("end_s") is not None else journal["duration_s"]
        for ax in axes:
            ax.axvspan(w["start_s"], end, color="#e53935", alpha=0.10, lw=0)
        ax_lat.annotate("; ".join(w["actions"]), xy=(w["start_s"], 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", fontsize=8, color="#b71c1c", va="top")
    for name in ("method", "after"):
        start = journal["phases"][name][0]
        if start is not None:
            for ax in axes:
                ax.axvline(start, color="black", ls="--", lw=0.8, alpha=0.6)
            ax_lat.annotate(f"{name} →", xy=(start, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                            textcoords="offset points", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def rerender(journal_path: str | Path) -> None:
    """Rewrite report.md and timeline.png next to an existing journal.json."""
    p = Path(journal_path)
    journal = json.loads(p.read_text(encoding="utf-8"))
    plot_timeline(journal, p.parent / "timeline.png")
    (p.parent / "report.md").write_text(render_report(journal), encoding="utf-8")
