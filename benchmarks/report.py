"""Turn a run's raw figures into medians, ratios to the baselines, target checks and markdown."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BASELINES", "aggregate", "render", "targets"]

#: For each of our servers, the baselines it is compared with.
BASELINES: dict[str, tuple[str, ...]] = {
    "sse": ("bare-sse", "upstream"),
    "ws": ("bare-ws",),
    "grpc": ("bare-grpc",),
}
_FAILURES = ("failed", "new_failed")

Spread = tuple[float, float, float]  # median, min, max


def aggregate(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (scenario, server): the median/min/max of every figure and the failures of all reps."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in document["runs"]:
        groups.setdefault((run["scenario"], run["server"]), []).append(run)
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for key, runs in groups.items():
        results = [run["result"] for run in runs if "result" in run]
        figures: dict[str, Spread] = {}
        for name in {k for r in results for k, v in r.items() if isinstance(v, int | float)}:
            values = [r[name] for r in results if isinstance(r.get(name), int | float)]
            if values:
                figures[name] = (statistics.median(values), min(values), max(values))
        errors: dict[str, int] = {}
        for result in results:
            for reason, count in result.get("errors", {}).items():
                errors[reason] = errors.get(reason, 0) + count
        table[key] = {
            "reps": len(results),
            "broken": [run["error"] for run in runs if "error" in run],
            "figures": figures,
            "failed": {k: sum(int(r.get(k) or 0) for r in results) for k in _FAILURES},
            "errors": errors,
        }
    return table


def _median(row: dict[str, Any] | None, figure: str) -> float | None:
    if row is None or not row["reps"]:
        return None
    spread = row["figures"].get(figure)
    return None if spread is None else spread[0]


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "rate":
        return f"{value / 1000:,.1f}k" if value >= 1000 else f"{value:,.0f}"
    if kind == "int":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _cell(row: dict[str, Any], figure: str, kind: str, spread: bool = True) -> str:
    value = row["figures"].get(figure)
    if value is None:
        return "-"
    middle, low, high = value
    text = _fmt(middle, kind)
    if spread and row["reps"] > 1:
        text += f" ({_fmt(low, kind)}-{_fmt(high, kind)})"
    return text


@dataclass(frozen=True)
class _Column:
    title: str
    render: Callable[[dict[str, Any]], str]


def _figure(title: str, figure: str, kind: str, spread: bool = True) -> _Column:
    return _Column(title, lambda row: _cell(row, figure, kind, spread))


def _failed(row: dict[str, Any]) -> str:
    failed = row["failed"]
    text = f"{failed['failed']:,}"
    if failed["new_failed"]:
        text += f" + {failed['new_failed']:,} new"
    return text


def _rss(row: dict[str, Any]) -> str:
    before, after = _median(row, "rss_before_kb"), _median(row, "rss_after_kb")
    if before is None or after is None:
        return "-"
    return f"{before / 1024:.0f}→{after / 1024:.0f}"


_COLUMNS: dict[str, list[_Column]] = {
    "fast": [
        _figure("events/s", "events_per_s", "rate"),
        _figure("server µs CPU/event", "cpu_us_per_event", "num"),
        _figure("TTFE p50 ms", "ttfe_p50_ms", "num", spread=False),
        _figure("TTFE p99 ms", "ttfe_p99_ms", "num"),
        _figure("server CPU share", "server_cpu_share", "num", spread=False),
        _figure("client CPU share", "client_cpu_share", "num", spread=False),
        _Column("failed (all reps)", _failed),
    ],
    "idle": [
        _figure("KB per idle stream", "kb_per_stream", "num"),
        _Column("RSS before→after MB", _rss),
        _figure("open time s", "open_s", "num", spread=False),
        _figure("TTFE p99 ms", "ttfe_p99_ms", "num", spread=False),
        _Column("failed (all reps)", _failed),
    ],
    "paced": [
        _figure("server µs CPU/event", "cpu_us_per_event", "num"),
        _figure("events/s", "events_per_s", "rate", spread=False),
        _figure("server CPU share", "server_cpu_share", "num", spread=False),
        _figure("client CPU share", "client_cpu_share", "num", spread=False),
        _figure("ramp s", "ramp_s", "num", spread=False),
        _figure("gap p50 ms", "gap_p50_ms", "num", spread=False),
        _figure("gap p99 ms", "gap_p99_ms", "num"),
        _figure("new TTFE p50 ms", "new_ttfe_p50_ms", "num", spread=False),
        _figure("new TTFE p99 ms", "new_ttfe_p99_ms", "num"),
        _Column("failed (all reps)", _failed),
    ],
}
# The figure each kind compares ours with a baseline on, and whether higher is better.
_RATIO: dict[str, list[tuple[str, str]]] = {
    "fast": [("events_per_s", "ev/s"), ("cpu_us_per_event", "µs/ev")],
    "idle": [("kb_per_stream", "KB")],
    "paced": [("cpu_us_per_event", "µs/ev")],
}


def _ratios(kind: str, server: str, rows: dict[str, dict[str, Any]]) -> str:
    parts = []
    for baseline in BASELINES.get(server, ()):
        if baseline not in rows:
            continue
        ratios = []
        for figure, unit in _RATIO[kind]:
            ours, theirs = _median(rows[server], figure), _median(rows[baseline], figure)
            if ours is not None and theirs:
                ratios.append(f"{ours / theirs:.2f}x {unit}")
        if ratios:
            parts.append(f"vs {baseline}: " + ", ".join(ratios))
    return "; ".join(parts)


def _scenario_section(scenario: dict[str, Any], document: dict[str, Any], table: Any) -> list[str]:
    names = [
        s["name"]
        for s in document["servers"]
        if s["transport"] in scenario["transports"] and s["name"] not in scenario["skip"]
    ]
    rows = {
        name: table[(scenario["name"], name)] for name in names if (scenario["name"], name) in table
    }
    if not rows:
        return []
    lines = [f"### {scenario['name']}: {scenario['title']}", ""]
    if scenario.get("note"):
        lines += [scenario["note"], ""]
    columns = _COLUMNS[scenario["kind"]]
    lines.append("| server | " + " | ".join(c.title for c in columns) + " | ratio to baselines |")
    lines.append("|---|" + "---:|" * len(columns) + "---|")
    for name, row in rows.items():
        if not row["reps"]:
            lines.append(
                f"| {name} | " + " | ".join("-" for _ in columns) + f" | {row['broken']} |"
            )
            continue
        cells = [column.render(row) for column in columns]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_ratios(scenario['kind'], name, rows)} |"
        )
    errors = {name: row["errors"] for name, row in rows.items() if row["errors"]}
    if errors:
        lines.append("")
        for name, reasons in errors.items():
            listed = "; ".join(f"{count}x {reason}" for reason, count in reasons.items())
            lines.append(f"- {name} failures: {listed}")
    lines.append("")
    return lines


@dataclass(frozen=True)
class _Target:
    text: str
    scenario: str
    server: str
    figure: str
    compare: str  # "<=", "<" or ">=" between the value and the limit
    limit: float
    baseline: str | None = None  # the value is ours / baseline; None: ours as is
    zero_failed: bool = False


def _issue_targets() -> tuple[_Target, ...]:
    found = []
    for server, base, limit in (("sse", "bare-sse", 1.3), ("ws", "bare-ws", 1.3)):
        text = f"paced {server}: server CPU/event <= {limit}x {base}"
        found.append(_Target(text, "paced", server, "cpu_us_per_event", "<=", limit, base))
    text = "paced grpc: server CPU/event <= 1.2x bare-grpc"
    found.append(_Target(text, "paced", "grpc", "cpu_us_per_event", "<=", 1.2, "bare-grpc"))
    for server, base, limit in (
        ("sse", "bare-sse", 3),
        ("ws", "bare-ws", 3),
        ("grpc", "bare-grpc", 5),
    ):
        text = f"c1000 {server}: events/s >= {limit}x {base}, 0 failed"
        found.append(_Target(text, "c1000", server, "events_per_s", ">=", limit, base, True))
    text = "c1000-conns grpc (a connection per stream): 0 failed"
    found.append(_Target(text, "c1000-conns", "grpc", "failed", "<=", 0))
    text = "c200 sse: events/s >= 2x upstream"
    found.append(_Target(text, "c200", "sse", "events_per_s", ">=", 2, "upstream"))
    for scenario in ("idle1000", "idle5000"):
        text = f"{scenario} sse: KB per idle stream <= 0.6x upstream"
        found.append(_Target(text, scenario, "sse", "kb_per_stream", "<=", 0.6, "upstream"))
    for server in ("sse", "ws", "grpc"):
        text = f"paced {server}: new streams' TTFE p99 < 50 ms"
        found.append(_Target(text, "paced", server, "new_ttfe_p99_ms", "<", 50))
        text = f"paced {server}: running streams' gap p99 < 2x the 50 ms pacing"
        found.append(_Target(text, "paced", server, "gap_p99_ms", "<", 100))
    found.append(_Target("idle10000 sse: 0 failed", "idle10000", "sse", "failed", "<=", 0))
    for scenario, server in (("idle10000", "sse"), ("idle5000", "sse"), ("idle5000", "ws")):
        text = f"{scenario} {server}: KB per idle stream <= 20"
        found.append(_Target(text, scenario, server, "kb_per_stream", "<=", 20))
    return tuple(found)


_TARGETS = _issue_targets()
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda value, limit: value <= limit,
    "<": lambda value, limit: value < limit,
    ">=": lambda value, limit: value >= limit,
}


def _check(target: _Target, table: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    row = table.get((target.scenario, target.server))
    result = {"target": target.text, "status": "N/A", "figures": "not measured"}
    if row is None or not row["reps"]:
        return result
    failed = row["failed"]["failed"] + row["failed"]["new_failed"]
    if target.figure == "failed":
        value: float = failed
        figures = f"{failed} failed over {row['reps']} rep(s)"
    else:
        ours = _median(row, target.figure)
        if ours is None:
            return result
        value, figures = ours, _fmt(ours, "num")
        if target.baseline is not None:
            base = _median(table.get((target.scenario, target.baseline)), target.figure)
            if not base:
                result["figures"] = f"ours {figures}; {target.baseline} not measured"
                return result
            value = ours / base
            figures = f"{value:.2f}x (ours {figures}, {target.baseline} {_fmt(base, 'num')})"
    met = _COMPARE[target.compare](value, target.limit)
    if target.zero_failed:
        figures += f"; {failed} failed"
        met = met and failed == 0
    result["figures"] = figures
    result["status"] = "PASS" if met else "FAIL"
    return result


def targets(document: dict[str, Any]) -> list[dict[str, str]]:
    """Each target of issue 7 with the figures it was judged on and PASS, FAIL or N/A."""
    table = aggregate(document)
    return [_check(target, table) for target in _TARGETS]


def render(document: dict[str, Any]) -> str:
    """The markdown report of a run."""
    meta = document["meta"]
    table = aggregate(document)
    lines = [
        f"# Benchmark results ({meta['mode']} run)",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['reps']} rep(s), {meta['cpus']} CPUs, "
        f"Python {meta['python']}, {meta['elapsed_s'] / 60:.1f} min. Each server ran fresh per "
        "scenario on 127.0.0.1 pinned to CPU 0; the load client ran in its own process on CPU 1. "
        "Figures are medians over the reps with (min-max); server CPU comes from "
        "`/proc/<pid>/stat` over the measured window, memory from `VmRSS`.",
        "",
    ]
    results = [run["result"] for run in document["runs"] if "result" in run]
    stray = [r for r in results if r.get("server_cpus") != "0" or r.get("client_cpus") != "1"]
    if results and not stray:
        lines += ["Pinning checked on every run: server threads on CPU 0, client on CPU 1.", ""]
    elif stray:
        lines += [f"**{len(stray)} run(s) were not pinned as intended** (see latest.json).", ""]
    if meta["mode"] == "quick":
        lines += ["**Quick run: small counts and one rep, for development only.**", ""]
    upstream = meta.get("versions", {}).get("upstream")
    if upstream:
        listed = ", ".join(f"{name} {version}" for name, version in upstream.items())
        lines += [f"Upstream virtualenv: {listed}.", ""]
    lines += ["## Targets (issue 7)", "", "| target | figures | result |", "|---|---|---|"]
    for check in targets(document):
        lines.append(f"| {check['target']} | {check['figures']} | **{check['status']}** |")
    lines += ["", "## Scenarios", ""]
    for scenario in document["scenarios"]:
        lines += _scenario_section(scenario, document, table)
    return "\n".join(lines)
