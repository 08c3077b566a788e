"""`recorder report --html`: one self-contained HTML page of a window's figures and charts.

Everything on the page comes from the functions `recorder stats` uses: the table and the
``#stats`` JSON from one `stats.compute` (the JSON is exactly ``recorder stats --format json``
for the same window and grouping), the histograms from its durations, and the time series from
the same computation grouped by ``hour`` or ``day`` too (recorder.timeline bins them to the
page). The gaps are those of ``recorder gaps``, the longest jobs those ``recorder jobs`` lists.
The page requests nothing from anywhere (its Content-Security-Policy forbids it), needs no
JavaScript, and reads printed, narrow and in dark mode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any

from sqlalchemy import Engine

from recorder import __version__, charts, reports, stats, stats_format, timeline
from recorder.output import human_duration, iso
from recorder.stats import Group, Report, StatsQuery

BY_KEYS = ("type", "account", "service", "target")
MAX_CHARTED_GROUPS = 12  # groups drawn one by one; the table has them all
LONGEST = 10  # jobs in the longest-jobs chart


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """The page's window, its grouping (one of BY_KEYS, or none) and its target."""

    since: datetime
    until: datetime
    now: datetime
    by: str | None = None
    target: str | None = None


@dataclass(frozen=True, slots=True)
class _GroupView:
    label: str
    histogram: charts.Chart
    throughput: charts.Chart
    concurrency: charts.Chart


def render(engine: Engine, query: ReportQuery) -> str:
    """The page, as text."""
    if query.by is not None and query.by not in BY_KEYS:
        raise ValueError(f"cannot group by {query.by!r}; choose from {', '.join(BY_KEYS)}")
    by = (query.by,) if query.by else ()
    report = stats.compute(
        engine, StatsQuery(query.since, query.until, query.now, by, query.target, histogram=True)
    )
    since, until = query.since.timestamp(), query.until.timestamp()
    time_key = timeline.bucket_key(since, until)
    buckets = series(engine, query)
    gaps = [
        (gap["started_at"].timestamp(), gap["ended_at"].timestamp())
        for gap in reports.gaps(engine, query.since, query.until, query.target)
    ]
    uncovered = gaps + _unpolled(engine, query)
    charted = sorted(report.groups, key=lambda g: -g.finished)[:MAX_CHARTED_GROUPS]
    views = [_view(g, by, buckets.get(_key(g, by), []), uncovered, since, until) for g in charted]
    longest = _longest(engine, query, sum(g.finished for g in report.groups))
    template = _environment().get_template("report.html")
    page: str = template.render(
        title=f"Job history {iso(query.since)} .. {iso(query.until)}",
        since=iso(query.since),
        until=iso(query.until),
        length=human_duration(until - since),
        by=query.by,
        target=query.target,
        generated=iso(query.now),
        version=__version__,
        # No job ended or started in the window, and none ran across it (no interval in it).
        empty=not any(g.finished or g.started or g.peak_concurrency for g in report.groups),
        coverage=_coverage(report),
        gap_count=len(gaps),
        rows=stats_format.table_rows(report),
        views=views,
        omitted=len(report.groups) - len(charted),
        bucket=time_key,
        longest=[_longest_row(job) for job in longest],
        longest_chart=charts.ranges(
            [_range(job) for job in longest],
            f"The {len(longest)} longest jobs that ended in the window",
            x_label="duration (seconds; the bar is the best estimate, the whiskers its bounds)",
        ),
        stats_json=_script_json(stats_format.report_json(report)),
    )
    return page


def _environment() -> Any:
    # Imported here: only `recorder report` loads Jinja2.
    from jinja2 import Environment, FunctionLoader, StrictUndefined, select_autoescape

    def load(name: str) -> str:
        return files("recorder").joinpath("templates", name).read_text(encoding="utf-8")

    return Environment(
        loader=FunctionLoader(load),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _script_json(data: dict[str, Any]) -> Any:
    """`data` as `recorder stats --format json` prints it, safe inside ``<script>``: ``<``,
    ``>`` and ``&`` (only ever inside strings) as JSON escapes, which parse to the same value."""
    from markupsafe import Markup

    text = json.dumps(data, indent=2)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escaped)
    return Markup(text)  # noqa: S704 - escaped for a script element above


def _key(group: Group, by: Sequence[str]) -> tuple[Any, ...]:
    return tuple(group.key.get(k) for k in by)


def _label(group: Group, by: Sequence[str]) -> str:
    parts = [f"{k} {stats_format.human_key(group.key.get(k))}" for k in by]
    return ", ".join(parts) or "All jobs"


def series(engine: Engine, query: ReportQuery) -> dict[tuple[Any, ...], list[timeline.Bucket]]:
    """Each group's time series, by its key's values: `recorder stats` by the group's key and
    by hour or day (timeline.bucket_key), every bucket of the window, binned for the page."""
    by = (query.by,) if query.by else ()
    since, until = query.since.timestamp(), query.until.timestamp()
    time_key = timeline.bucket_key(since, until)
    report = stats.compute(
        engine,
        StatsQuery(
            query.since, query.until, query.now, (*by, time_key), query.target, percentiles=False
        ),
    )
    found: dict[tuple[Any, ...], list[timeline.Bucket]] = {}
    for group in report.groups:
        found.setdefault(_key(group, by), []).append(
            timeline.Bucket(
                group.since.timestamp(),
                group.until.timestamp(),
                group.finished,
                group.peak_concurrency,
                group.mean_concurrency,
            )
        )
    spans = timeline.grid(since, until, timeline.DAY if time_key == "day" else timeline.HOUR)
    return {key: timeline.merge(timeline.fill(spans, found[key])) for key in found}


def _view(
    group: Group,
    by: Sequence[str],
    buckets: list[timeline.Bucket],
    gaps: list[tuple[float, float]],
    since: float,
    until: float,
) -> _GroupView:
    label = _label(group, by)
    bins = [charts.Bin(lo, hi, n) for lo, hi, n in group.histogram]
    histogram = charts.histogram(
        bins,
        f"{label}: durations of the finished jobs",
        p50=group.duration.p50,
        p95=group.duration.p95,
    )
    per_hour = [charts.Point(b.lo, b.hi, b.per_hour) for b in buckets]
    throughput = charts.timeline(
        [charts.Series("finished per hour", per_hour)],
        f"{label}: finished jobs per hour",
        since=since,
        until=until,
        y_label="jobs per hour",
        gaps=gaps,
    )
    level = None
    if group.capacity is not None and group.capacity.max_jobs is not None:
        level = ("maxJobs", float(group.capacity.max_jobs))
    concurrency = charts.timeline(
        [
            charts.Series("peak", [charts.Point(b.lo, b.hi, b.peak) for b in buckets], "line"),
            charts.Series("mean", [charts.Point(b.lo, b.hi, b.mean) for b in buckets], "mean"),
        ],
        f"{label}: jobs in flight at once",
        since=since,
        until=until,
        y_label="jobs in flight",
        gaps=gaps,
        level=level,
    )
    return _GroupView(label, histogram, throughput, concurrency)


def _unpolled(engine: Engine, query: ReportQuery) -> list[tuple[float, float]]:
    """The window's time before its first successful poll and after its last (not covered,
    though not a gap of `recorder gaps`: no poll failed), as (start, end) epoch seconds."""
    since, until = query.since.timestamp(), query.until.timestamp()
    span = reports.polled_span(engine, query.since, query.until, query.target)
    if span is None:
        return [(since, until)]
    first, last = (t.timestamp() for t in span)
    return [(lo, hi) for lo, hi in ((since, first), (last, until)) if hi > lo]


def _coverage(report: Report) -> float | None:
    """The window's coverage, when every group shares it (not grouped by target or service)."""
    if not report.groups or {"target", "service"} & set(report.by):
        return None
    return report.groups[0].coverage


def _longest(engine: Engine, query: ReportQuery, finished: int) -> list[dict[str, Any]]:
    """The longest finished jobs that ended in the window (as `recorder stats` counts them)."""
    return reports.longest(
        engine, query.since, query.until, target=query.target, limit=LONGEST, finished=finished
    )


def _longest_row(job: dict[str, Any]) -> dict[str, str]:
    def seconds(value: float | None) -> str:
        return "?" if value is None else f"{value:.1f}"

    return {
        "id": job["id"],
        "type": job["type"] or "",
        "account": job["account"] or "",
        "target": job["target_name"] or "",
        "ended": job["ended_at"].strftime("%Y-%m-%d %H:%M:%S"),
        "duration": seconds(job["duration_s"]),
        "bounds": f"{seconds(job['duration_min_s'])} .. {seconds(job['duration_max_s'])}",
    }


def _range(job: dict[str, Any]) -> charts.Range:
    best = float(job["duration_s"])
    lo = job["duration_min_s"] if job["duration_min_s"] is not None else best
    hi = job["duration_max_s"] if job["duration_max_s"] is not None else best
    label = f"{job['type'] or '(no type)'} {job['id']}"
    return charts.Range(label, float(lo), best, float(hi))
