"""Presenting a stats report: JSON (the contract), flat rows for CSV, a table with histograms."""

from __future__ import annotations

from typing import IO, Any

from recorder.output import human_duration, iso, render
from recorder.stats import PERCENTILES, CapacityFigures, Group, Report

_DURATION_KEYS = ("count", "mean", "p50", "p90", "p95", "p99", "max")


def _key_value(value: Any) -> Any:
    return iso(value) if hasattr(value, "isoformat") else value


def _durations(group: Group) -> dict[str, Any]:
    d = group.duration
    values: dict[str, Any] = {
        "count": d.count,
        "mean": d.mean,
        **{f"p{p}": getattr(d, f"p{p}") for p in PERCENTILES},
        "max": d.max,
    }
    values = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in values.items()}
    values["closed_across_gap"] = d.closed_across_gap
    return values


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def group_json(group: Group, histogram: bool) -> dict[str, Any]:
    """One group as `recorder stats --format json` shows it."""
    result: dict[str, Any] = {k: _key_value(v) for k, v in group.key.items()}
    result |= {
        "window": {"since": iso(group.since), "until": iso(group.until)},
        "finished": group.finished,
        "started": group.started,
        "running": group.running,
        "success_rate": _rounded(group.success_rate),
        "duration_s": _durations(group),
        "throughput_per_hour": round(group.throughput_per_hour, 6),
        "peak_concurrency": group.peak_concurrency,
        "mean_concurrency": round(group.mean_concurrency, 6),
        "coverage": round(group.coverage, 6),
        "gaps": group.gaps,
        "longest_gap_s": round(group.longest_gap_s, 3),
        "missed_estimate": round(group.missed_estimate, 1),
    }
    if group.capacity is not None:  # grouped by account
        capacity = group.capacity
        result |= {
            "max_jobs": capacity.max_jobs,
            "utilization": _rounded(capacity.utilization),
            "saturated_share": _rounded(capacity.saturated_share),
        }
    if histogram:
        result["histogram"] = [
            {"min_s": lo, "max_s": hi, "count": n} for lo, hi, n in group.histogram
        ]
    return result


def report_json(report: Report, histogram: bool = False) -> dict[str, Any]:
    """The whole report: its window, its grouping and its groups."""
    return {
        "window": {"since": iso(report.since), "until": iso(report.until)},
        "by": list(report.by),
        "groups": [group_json(g, histogram) for g in report.groups],
    }


def csv_rows(report: Report) -> list[dict[str, Any]]:
    """One flat row per group, with the window on every row."""
    rows = []
    for group in report.groups:
        nested = group_json(group, histogram=False)
        durations = nested.pop("duration_s")
        window = nested.pop("window")
        row = {k: nested.pop(k) for k in report.by}
        row |= {"since": window["since"], "until": window["until"]}
        row |= {"finished": nested.pop("finished"), "started": nested.pop("started")}
        row["running"] = nested.pop("running")
        row["success_rate"] = nested.pop("success_rate")
        row |= {
            f"duration_{k}_s" if k != "count" else "duration_count": durations[k]
            for k in _DURATION_KEYS
        }
        row["duration_closed_across_gap"] = durations["closed_across_gap"]
        row |= nested
        rows.append(row)
    return rows


def write_table(report: Report, out: IO[str], histogram: bool = False) -> None:
    """A human-readable table, durations like 3m57s, then histograms when asked."""
    length = human_duration((report.until - report.since).total_seconds())
    out.write(f"window: {iso(report.since)} .. {iso(report.until)} ({length})\n")
    render(table_rows(report), "table", out)
    if histogram:
        for group in report.groups:
            _write_histogram(group, out)


def table_rows(report: Report) -> list[dict[str, Any]]:
    """The table's rows, one per group, as people read them (the CLI's table, the HTML page's)."""
    rows = []
    for group in report.groups:
        d = group.duration
        row = {k: human_key(v) for k, v in group.key.items()}
        row |= {
            "finished": group.finished,
            "started": group.started,
            "running": group.running,
            "success": "" if group.success_rate is None else f"{group.success_rate:.1%}",
            "mean": human_duration(d.mean),
            "p50": human_duration(d.p50),
            "p90": human_duration(d.p90),
            "p95": human_duration(d.p95),
            "p99": human_duration(d.p99),
            "max": human_duration(d.max),
            "wide": d.closed_across_gap,
            "per_hour": f"{group.throughput_per_hour:.1f}",
            "peak": group.peak_concurrency,
            "mean_conc": f"{group.mean_concurrency:.2f}",
            "coverage": f"{group.coverage:.1%}",
            "gaps": group.gaps,
            "longest_gap": human_duration(group.longest_gap_s) if group.gaps else "",
            "missed": f"{group.missed_estimate:.0f}",
        }
        if group.capacity is not None:
            row |= _capacity_cells(group.capacity)
        rows.append(row)
    return rows


def _capacity_cells(capacity: CapacityFigures) -> dict[str, Any]:
    def share(value: float | None) -> str:
        return "" if value is None else f"{value:.1%}"

    return {
        "max_jobs": "" if capacity.max_jobs is None else capacity.max_jobs,
        "utilization": share(capacity.utilization),
        "saturated": share(capacity.saturated_share),
    }


def human_key(value: Any) -> Any:
    """A group key's value as the table shows it."""
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M")
    return "(none)" if value is None else value


def _write_histogram(group: Group, out: IO[str], width: int = 40) -> None:
    label = ", ".join(f"{k}={human_key(v)}" for k, v in group.key.items()) or "all jobs"
    out.write(f"\ndurations of finished jobs ({label}):\n")
    if not group.histogram:
        out.write("  (none)\n")
        return
    top = max(n for _, _, n in group.histogram)
    for lo, hi, n in group.histogram:
        span = f"{human_duration(lo) if lo else '0s'}..{human_duration(hi) if hi else ''}"
        bar = "#" * max(1, round(width * n / top))
        out.write(f"  {span:>14} {bar} {n}\n")
