"""`recorder stats`: durations, throughput, concurrency and coverage per group, computed in SQL.

Definitions (docs/stats.md has them for users):

* The window is ``[since, until)``. Grouping by ``hour`` or ``day`` (UTC) splits it into
  buckets; each bucket's figures are for the bucket's part of the window.
* ``finished``: jobs that ended in the window (``end_at``); their durations are described.
* ``started``: jobs that started in the window (``start_at``).
* ``running``: jobs running now; in time buckets, only in the bucket that holds the present
  (and only when the window reaches the present).
* Percentiles are nearest-rank: ``pN`` is the smallest duration with at least N% of the
  durations at or below it (rank ``ceil(N * count / 100)``), the same on every backend.
* Concurrency is from the jobs' intervals ``[start_at, end_at)``; a running job's interval ends
  at its target's latest successful poll. ``peak`` is the most intervals open at once, ``mean``
  the time-weighted mean (total overlap / window length).
* Coverage is the share of the window between consecutive successful polls with no gap between
  them; time before a target's first or after its last successful poll is not covered. ``gaps``
  counts the gaps of the ``poll_gaps`` view that overlap the window. With several targets,
  coverage is their mean: grouped by ``target`` or ``service``, that of the group's own targets.
* Grouped by ``target``, a group is one target, shown by its name; by ``service``, the targets
  of one service together.
* ``missed_estimate``: jobs that probably ran unseen between two polls, a Horvitz-Thompson
  estimate over the jobs that started in the window and were seen in covered time
  (recorder.missed; docs/stats.md).
* Grouped by ``account`` (among other keys or not), each group also gets its account's capacity
  from /scheduler/available, over the group's targets and window (`capacity_figures`):
  ``max_jobs``, ``utilization`` and ``saturated_share``.
* ``success_rate``: of the group's finished jobs whose outcome is known to be ``completed``,
  ``failed`` or ``moderated`` (recorder.outcomes), the share ``completed``; None when there is
  none. Grouped by ``outcome``, a job's group is its outcome, None for a job without one (never
  asked, still pending, or running); the rollups know no outcomes, so every figure of such a
  report is computed from the jobs themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, text

from recorder import missed, rollups, targets
from recorder.clock import LATEST, to_datetime
from recorder.dialect import Dialect
from recorder.models import (
    BIN_COLUMNS,
    HISTOGRAM_EDGES,
    KNOWN_OUTCOMES,
    LONG_JOB_S,
    RUNNING_INDEX,
    Capacity,
    Job,
    JobStatus,
    OutcomeKind,
    Target,
    UTCDateTime,
    latest_ok_sql,
    ok_sql,
)

PG_WORK_MEM = "64MB"  # per sort of a report's transaction on PostgreSQL
GROUP_KEYS = ("type", "account", "hour", "day", "service", "target", "outcome")
TIME_KEYS = {"hour": 3600, "day": 86400}
PERCENTILES = (50, 90, 95, 99)
_FAR = 1e18  # stands for "before or after any time"
_KNOWN_SQL = ", ".join(f"'{kind}'" for kind in KNOWN_OUTCOMES)


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """What to compute: the window, the grouping, and the present moment."""

    since: datetime
    until: datetime
    now: datetime
    by: tuple[str, ...] = ()
    target: str | None = None
    histogram: bool = False
    # False: no duration percentiles (None), for the time series of recorder.html_report,
    # which need counts only: no ranking sort of the window's durations.
    percentiles: bool = True


@dataclass(slots=True)
class Durations:
    """The duration figures of one group's finished jobs, in seconds."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    closed_across_gap: int = 0


@dataclass(frozen=True, slots=True)
class CapacitySpan:
    """A capacity row as the figures read it: one account's values from first_at to last_at."""

    target_id: int
    account: str
    max_jobs: int | None
    executing: int | None
    available: int | None
    first_at: float
    last_at: float

    @property
    def covers(self) -> bool:
        """True when its values say how busy the account was: a max_jobs above 0, executing."""
        return bool(self.max_jobs) and self.executing is not None

    @property
    def saturated(self) -> bool:
        """No free slot: available 0, or (without available) executing at max_jobs or above."""
        if self.available is not None:
            return self.available == 0
        return self.covers and (self.executing or 0) >= (self.max_jobs or 0)


@dataclass(frozen=True, slots=True)
class CapacityFigures:
    """An account's capacity over a window: None where the rows say nothing."""

    max_jobs: int | None = None
    utilization: float | None = None
    saturated_share: float | None = None


def capacity_figures(spans: Iterable[CapacitySpan], since: float, until: float) -> CapacityFigures:
    """The capacity figures of one group's rows (one account, the group's targets) over the
    window ``[since, until)``.

    ``max_jobs``: each target's latest row that overlaps the window (``first_at < until`` and
    ``last_at >= since``), its max_jobs summed over the targets. ``utilization``: the mean of
    executing / max_jobs over the time the covering rows (`CapacitySpan.covers`) overlap the
    window, weighted by that time; ``saturated_share``: the share of that time with no free
    slot. A row covers ``[first_at, last_at)``: the time until the next read that changed it.
    """
    latest: dict[int, CapacitySpan] = {}
    covered = busy = saturated = 0.0
    for span in spans:
        if span.first_at < until and span.last_at >= since:
            known = latest.get(span.target_id)
            if known is None or span.first_at > known.first_at:
                latest[span.target_id] = span
        overlap = min(span.last_at, until) - max(span.first_at, since)
        if overlap <= 0 or not span.covers:
            continue
        covered += overlap
        busy += (span.executing or 0) / (span.max_jobs or 1) * overlap
        if span.saturated:
            saturated += overlap
    limits = [span.max_jobs for span in latest.values() if span.max_jobs is not None]
    if not covered:
        return CapacityFigures(sum(limits) if limits else None)
    return CapacityFigures(sum(limits) if limits else None, busy / covered, saturated / covered)


@dataclass(slots=True)
class Group:
    """One group's figures."""

    key: dict[str, Any]
    since: datetime
    until: datetime
    finished: int = 0
    started: int = 0
    running: int = 0
    duration: Durations = field(default_factory=Durations)
    peak_concurrency: int = 0
    mean_concurrency: float = 0.0
    coverage: float = 0.0
    gaps: int = 0
    longest_gap_s: float = 0.0
    histogram: list[tuple[float, float | None, int]] = field(default_factory=list)
    capacity: CapacityFigures | None = None  # grouped by account only
    success_rate: float | None = None  # completed / known outcomes of the finished jobs
    missed_shares: float = 0.0  # the sum of its jobs' shares of the missed-jobs estimate

    @property
    def missed_estimate(self) -> float:
        """How many jobs probably ran unseen between two polls (recorder.missed)."""
        return missed.estimate(self.missed_shares)

    @property
    def hours(self) -> float:
        """The group's window in hours."""
        return (self.until - self.since).total_seconds() / 3600

    @property
    def throughput_per_hour(self) -> float:
        """Jobs finished per hour of the group's window."""
        return self.finished / self.hours


@dataclass(frozen=True, slots=True)
class Report:
    """The figures for every group."""

    since: datetime
    until: datetime
    by: tuple[str, ...]
    groups: list[Group]


def compute(engine: Engine, query: StatsQuery) -> Report:
    """Compute every figure of `query` with a handful of SQL queries."""
    for key in query.by:
        if key not in GROUP_KEYS:
            raise ValueError(f"cannot group by {key!r}; choose from {', '.join(GROUP_KEYS)}")
    if len(set(query.by)) != len(query.by):
        raise ValueError("each --by key may be given once")
    sql = _Sql(Dialect.of(engine), query)
    with engine.connect() as conn:
        if sql.d.postgresql:
            # One snapshot for every query, as SQLite's transaction gives: the percentiles'
            # ranks come from one query and their values from others.
            conn.execution_options(isolation_level="REPEATABLE READ")
            # The window's durations are ranked by a sort: in memory rather than in files
            # (the default 4 MB spills a day of 333,000 jobs; 1.1 s to 0.7 s), for this
            # transaction only.
            conn.exec_driver_sql(f"SET LOCAL work_mem = '{PG_WORK_MEM}'")
        if query.target is not None:
            sql.target_id = targets.target_id(conn, query.target)
        labels = _labels(conn)
        sql.shared_targets = _shared_service_targets(sql, labels)
        sql.covering = _covers_every_job(conn, query)
        split = _Split.of(conn, sql)
        groups = _Groups(query, labels)
        durations = _durations if query.percentiles else _duration_sums
        for found in durations(conn, sql, split):
            groups.fill_durations(found)
        for part, params in _parts(sql, split.edges):
            for row in conn.execute(part.started(), params):
                groups.at(row._mapping).started += row.n
            for row in conn.execute(part.missed(), params):
                groups.at(row._mapping).missed_shares += float(row.shares or 0.0)
        if split.hours is not None:
            params = sql.hour_params(split.hours)
            for row in conn.execute(sql.rollup_counts(), params):
                if row.started:
                    groups.at(row._mapping).started += int(row.started)
                    groups.at(row._mapping).missed_shares += float(row.missed or 0.0)
            for row in conn.execute(sql.started(JobStatus.RUNNING), params):
                groups.at(row._mapping).started += row.n
            for row in conn.execute(sql.missed(JobStatus.RUNNING), params):
                groups.at(row._mapping).missed_shares += float(row.shares or 0.0)
        for row in conn.execute(sql.running(), sql.params()):
            groups.add_running(row._mapping)
        _concurrency(conn, sql, split, groups)
        groups.set_coverage(list(conn.execute(sql.coverage(), sql.params())))
        if query.histogram:
            _histograms(conn, sql, split, groups)
        if "account" in query.by:
            groups.set_capacity(_capacity_spans(conn, sql))
        if conn.execute(sql.any_known_outcome()).first() is not None:
            for row in conn.execute(sql.outcomes(), sql.params()):
                if row.known:  # without groups, an empty window's one row counts none
                    groups.at(row._mapping).success_rate = int(row.completed) / int(row.known)
    return Report(query.since, query.until, query.by, groups.ordered())


@dataclass(frozen=True, slots=True)
class _Split:
    """The window cut into what the rollups answer and what is computed from the jobs.

    `hours` are the whole UTC hours of the window, ``(first, end)``; `edges` the parts of the
    window before and after them (the whole window when it holds no whole hour). Concurrency
    also needs the hours that running jobs and long jobs span computed exactly, since the
    rollups hold neither: `exact_hours` are those, and `rollup_hours` the rest of `hours`.
    """

    hours: tuple[int, int] | None
    edges: list[tuple[float, float]]
    exact_hours: list[tuple[int, int]]
    rollup_hours: list[tuple[int, int]]

    @staticmethod
    def of(conn: Connection, sql: _Sql) -> _Split:
        """The split of `sql`'s window."""
        since, until = sql.q.since.timestamp(), sql.q.until.timestamp()
        first, end = math.ceil(since / rollups.HOUR), math.floor(until / rollups.HOUR)
        if first >= end or "outcome" in sql.plain_keys:  # the rollups know no outcomes
            return _Split(None, [(since, until)], [], [])
        edges = [
            (lo, hi)
            for lo, hi in ((since, first * rollups.HOUR), (end * rollups.HOUR, until))
            if lo < hi
        ]
        exact = _merge(
            (max(first, lo), min(end, hi)) for lo, hi in sql.unrolled_hours(conn, first, end)
        )
        rolled, at = [], first
        for lo, hi in exact:
            if at < lo:
                rolled.append((at, lo))
            at = hi
        if at < end:
            rolled.append((at, end))
        return _Split((first, end), edges, exact, rolled)


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Hour ranges ``[lo, hi)`` merged where they touch; past 16 of them, their hull (the
    hull is computed exactly too, only slower)."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    if len(merged) > 16:
        return [(merged[0][0], merged[-1][1])]
    return merged


def _parts(
    sql: _Sql, windows: Iterable[tuple[float, float]], only_targets: list[int] | None = None
) -> Iterator[tuple[_Sql, Any]]:
    """The report's SQL for a part of its window (and of its targets, `only_targets`), with
    that part's parameters."""
    for lo, hi in windows:
        part = _Sql(sql.d, replace(sql.q, since=to_datetime(lo), until=to_datetime(hi)))
        part.target_id = sql.target_id
        part.only_targets = only_targets
        yield part, part.params()


@dataclass(frozen=True, slots=True)
class _Label:
    """What a target is called in a report: its name, and its service."""

    name: str
    service: str


def _labels(conn: Connection) -> dict[int, _Label]:
    """Every target's name and service, by id."""
    rows = conn.execute(select(Target.id, Target.name, Target.service))
    return {row.id: _Label(row.name, row.service) for row in rows}


def _shared_service_targets(sql: _Sql, labels: Mapping[int, _Label]) -> list[int]:
    """The targets whose group by service holds other targets too (none unless the report is
    by service, and neither by target nor of one --target).

    The rollups keep peaks per target and across every target, not per service: the peak of a
    service with one target is that target's, but one with several needs its jobs.
    """
    if "service" not in sql.plain_keys or "target" in sql.plain_keys or sql.target_id is not None:
        return []
    count: dict[str, int] = {}
    for label in labels.values():
        count[label.service] = count.get(label.service, 0) + 1
    return sorted(i for i, label in labels.items() if count[label.service] > 1)


def _concurrency(conn: Connection, sql: _Sql, split: _Split, groups: _Groups) -> None:
    """Each group's peak and mean concurrency: the rollups' whole hours, and the jobs' own
    intervals in the rest of the window."""
    peaks: dict[int, int] = {}
    totals: dict[int, float] = {}

    def add(row: Any, peak: Any, total: Any) -> None:
        group = groups.at(row._mapping)
        peaks[id(group)] = max(peaks.get(id(group), 0), int(peak or 0))
        totals[id(group)] = totals.get(id(group), 0.0) + float(total or 0.0)

    hours = split.exact_hours
    windows = split.edges + [(lo * rollups.HOUR, hi * rollups.HOUR) for lo, hi in hours]
    for part, params in _parts(sql, windows):
        for row in conn.execute(part.concurrency(), params):
            add(row, row.peak, row.total)
    if split.rollup_hours:
        params = sql.ranges_params(split.rollup_hours)
        for row in conn.execute(sql.rollup_busy(len(split.rollup_hours)), params):
            add(row, 0, row.busy)
        for row in conn.execute(sql.rollup_peaks(len(split.rollup_hours)), params):
            add(row, row.peak, 0.0)
        if sql.shared_targets:
            # A service with several targets: the largest of their peaks (added just above) may
            # be below the service's own, which its jobs give exactly (the peak alone: its time
            # in flight is the rollups' sum).
            whole = [(lo * rollups.HOUR, hi * rollups.HOUR) for lo, hi in split.rollup_hours]
            for part, params in _parts(sql, whole, sql.shared_targets):
                for row in conn.execute(part.concurrency(), params):
                    add(row, row.peak, 0.0)
    for group in groups.groups.values():
        if id(group) in totals:
            group.peak_concurrency = peaks[id(group)]
            span = (group.until - group.since).total_seconds()
            group.mean_concurrency = totals[id(group)] / span


def _capacity_spans(conn: Connection, sql: _Sql) -> list[CapacitySpan]:
    """The capacity rows that overlap the window (of --target's target, if given)."""
    query = select(
        Capacity.target_id,
        Capacity.account,
        Capacity.max_jobs,
        Capacity.executing,
        Capacity.available,
        Capacity.first_at,
        Capacity.last_at,
    ).where(Capacity.first_at < sql.q.until, Capacity.last_at >= sql.q.since)
    if sql.target_id is not None:
        query = query.where(Capacity.target_id == sql.target_id)
    return [
        CapacitySpan(
            row.target_id,
            row.account,
            row.max_jobs,
            row.executing,
            row.available,
            row.first_at.timestamp(),
            row.last_at.timestamp(),
        )
        for row in conn.execute(query)
    ]


def _covers_every_job(conn: Connection, query: StatsQuery) -> bool:
    """True when every job's start and end lie in the window (four index seeks).

    Then the window's time conditions select every row: the queries scan the table instead of
    visiting it row by row through a time index, and the percentiles may be read off the
    finished jobs' ``(type, duration_s)`` index, which knows nothing of times.
    """
    first_start, last_start, first_end, last_end = conn.execute(
        select(
            select(func.min(Job.start_at)).scalar_subquery(),
            select(func.max(Job.start_at)).scalar_subquery(),
            select(func.min(Job.end_at)).scalar_subquery(),
            select(func.max(Job.end_at)).scalar_subquery(),
        )
    ).one()
    return all(
        query.since <= first and last < query.until
        for first, last in ((first_start, last_start), (first_end, last_end))
        if first is not None and last is not None
    )


def _durations(conn: Connection, sql: _Sql, split: _Split) -> Iterator[Mapping[str, Any]]:
    """Every group's duration figures: by index seeks and rollups where they can be, else by
    one sort of the window's durations."""
    if split.hours is not None and sql.day_seekable(conn):
        yield from _durations_by_day(conn, sql)
        return
    if not sql.seekable(conn):
        for ranked in conn.execute(sql.durations(), sql.params()):
            yield dict(ranked._mapping)
        return
    per_type: dict[Any, dict[str, Any]] = {}
    found = [(sql.rollup_counts(), sql.hour_params(split.hours))] if split.hours else []
    found += [(part.durations_by_type(), params) for part, params in _parts(sql, split.edges)]
    for query, params in found:
        for part in conn.execute(query, params):
            into = per_type.setdefault(part.k_type, {"k_type": part.k_type} | _no_durations())
            _add_durations(into, part._mapping)
    counted = [row for row in per_type.values() if row["n"] > 0]
    for row in counted:
        row["mean"] = row["total"] / row["timed"] if row["timed"] else None
    if sql.plain_keys:
        for row in counted:
            yield {**row, **_seek_percentiles(conn, sql, [row["k_type"]], row["n"])}
        return
    n = sum(row["n"] for row in counted)
    if n == 0:
        return
    timed = sum(row["timed"] for row in counted)
    yield {
        "n": n,
        "mean": sum(row["total"] for row in counted) / timed if timed else None,
        "max": max((row["max"] for row in counted if row["max"] is not None), default=None),
        "wide": sum(row["wide"] for row in counted),
        **_seek_percentiles(conn, sql, [row["k_type"] for row in counted], n),
    }


def _histograms(conn: Connection, sql: _Sql, split: _Split, groups: _Groups) -> None:
    """Every group's duration histogram: whole hours from the rollups' bins, the window's
    edges (or the whole window, with no whole hour) from the jobs."""
    parts = list(_parts(sql, split.edges))
    if split.hours is not None:
        for row in conn.execute(sql.rollup_bins(), sql.hour_params(split.hours)):
            for index, column in enumerate(BIN_COLUMNS):
                n = int(row._mapping[column] or 0)
                if n:
                    groups.add_bin({**row._mapping, "bin": index, "n": n})
    else:
        parts = [(sql, sql.params())]
    for part, params in parts:
        for row in conn.execute(part.histogram(), params):
            groups.add_bin(row._mapping)


def _no_durations() -> dict[str, Any]:
    """Duration sums of no job, to add parts' sums to (`_add_durations`)."""
    return {"n": 0, "timed": 0, "total": 0.0, "max": None, "wide": 0}


def _add_durations(into: dict[str, Any], part: Mapping[Any, Any]) -> None:
    """Add a part's duration sums (n, timed, total, max, wide: a rollup's or an aggregate's)."""
    into["n"] += int(part["n"] or 0)
    into["timed"] += int(part["timed"] or 0)
    into["total"] += float(part["total"] or 0.0)
    into["wide"] += int(part["wide"] or 0)
    if part["max"] is not None:
        into["max"] = part["max"] if into["max"] is None else max(into["max"], part["max"])


def _duration_sums(conn: Connection, sql: _Sql, split: _Split) -> Iterator[Mapping[str, Any]]:
    """Every group's duration figures but the percentiles (None): whole hours from the
    rollups, the window's edges by one aggregate each, no sort."""
    names = [f"k_{k}" for k in sql.plain_keys] + (["b0"] if sql.time_key is not None else [])
    per_group: dict[tuple[Any, ...], dict[str, Any]] = {}
    found = [(sql.rollup_counts(), sql.hour_params(split.hours))] if split.hours else []
    found += [(part.duration_sums(), params) for part, params in _parts(sql, split.edges)]
    for query, params in found:
        for part in conn.execute(query, params):
            row = part._mapping
            key = tuple(float(row[n]) if n == "b0" else row[n] for n in names)
            into = per_group.setdefault(key, {n: row[n] for n in names} | _no_durations())
            _add_durations(into, row)
    for into in per_group.values():
        if into["n"] > 0:
            mean = into["total"] / into["timed"] if into["timed"] else None
            yield into | {"mean": mean} | {f"p{p}": None for p in PERCENTILES}


def _durations_by_day(conn: Connection, sql: _Sql) -> Iterator[Mapping[str, Any]]:
    """Per UTC day: the days whose finished jobs all ended in the window from the rollups and
    the ``(end day, duration_s)`` index, the other partial days by a sort of their own jobs.

    A day the window covers only in part still has all its jobs in it when none ended outside
    the window that day: so is the present's day, when the window ends now.
    """
    day = 86400
    since, until = sql.q.since.timestamp(), sql.q.until.timestamp()
    first_day, end_day = math.ceil(since / day), math.floor(until / day)
    edges: list[tuple[int, float, float]] = []
    if since < first_day * day:
        edges.append((first_day - 1, since, min(until, first_day * day)))
    if end_day * day < until and end_day * day >= since:
        edges.append((end_day, max(since, end_day * day), until))
    whole = set(range(first_day, end_day))
    for edge in list(edges):
        if not sql.ended_elsewhere_that_day(conn, *edge):
            whole.add(edge[0])
            edges.remove(edge)
    if whole:
        lo, hi = min(whole), max(whole) + 1
        assert len(whole) == hi - lo  # the partial days border the whole ones
        per_day: dict[float, dict[str, Any]] = {}
        for part in conn.execute(sql.rollup_counts(), sql.hour_params((lo * 24, hi * 24))):
            into = per_day.setdefault(float(part.b0), {"b0": part.b0} | _no_durations())
            _add_durations(into, part._mapping)
        for b0, row in per_day.items():
            if row["n"] == 0:
                continue
            row["mean"] = row["total"] / row["timed"] if row["timed"] else None
            yield {**row, **_seek_day_percentiles(conn, sql, round(b0 / day), row["n"])}
    for part_sql, params in _parts(sql, ((lo, hi) for _, lo, hi in edges)):
        for ranked in conn.execute(part_sql.durations(), params):
            yield dict(ranked._mapping)


def _seek_day_percentiles(conn: Connection, sql: _Sql, day: int, n: int) -> dict[str, float]:
    """The nearest-rank percentiles of the n finished jobs that ended on `day` (days since the
    epoch), each read at its rank from the ``(end day, duration_s)`` index."""
    found: dict[str, float] = {}
    value = sql.d.day_value(day)
    for p in PERCENTILES:
        rank = (p * n + 99) // 100
        ascending = rank - 1 <= n - rank
        found[f"p{p}"] = conn.scalar(
            sql.seek_day(descending=not ascending),
            {"day": value, "skip": rank - 1 if ascending else n - rank},
        )
    return found


def _seek_percentiles(
    conn: Connection, sql: _Sql, types: list[str | None], n: int
) -> dict[str, float]:
    """The nearest-rank percentiles of the finished jobs of `types` (n of them), each read at
    its rank from the finished jobs' ``(type, duration_s)`` index, counted from the nearer end."""
    found: dict[str, float] = {}
    for p in PERCENTILES:
        rank = (p * n + 99) // 100  # ceil(p * n / 100), in integers
        if rank - 1 <= n - rank:
            found[f"p{p}"] = conn.scalar(sql.seek(types, descending=False), {"skip": rank - 1})
        else:
            found[f"p{p}"] = conn.scalar(sql.seek(types, descending=True), {"skip": n - rank})
    return found


class _Groups:
    """Groups by key, created on first sight, plus every time bucket of the window."""

    def __init__(self, query: StatsQuery, labels: Mapping[int, _Label]) -> None:
        self.query = query
        self.labels = labels
        self.time_key = next((k for k in query.by if k in TIME_KEYS), None)
        self.groups: dict[tuple[Any, ...], Group] = {}
        # Per bucket, each target's (id, covered share, gaps, longest gap).
        self.coverage_by_bucket: dict[float, list[tuple[int, float, int, float]]] = {}
        if not query.by:
            self.at({})
        elif self.time_key is not None and query.by == (self.time_key,):
            for b0 in _buckets(query, self.time_key):
                self.at({"b0": b0})

    def _bucket_window(self, b0: float) -> tuple[datetime, datetime]:
        assert self.time_key is not None
        size = TIME_KEYS[self.time_key]
        since = max(self.query.since, to_datetime(b0))
        # Compared as numbers: the last bucket of year 9999 ends after the last datetime.
        if b0 + size >= self.query.until.timestamp():
            return since, self.query.until
        return since, to_datetime(b0 + size)

    def at(self, row: Mapping[Any, Any]) -> Group:
        """The group for a result row's key columns, created if new."""
        key: dict[str, Any] = {}
        for name in self.query.by:
            if name in TIME_KEYS:
                key[name] = to_datetime(float(row["b0"]))
            elif name == "target":  # a target's id in SQL, its name in the report
                key[name] = self.labels[int(row["k_target"])].name
            else:
                key[name] = row[f"k_{name}"]
        ident = tuple(key[name] for name in self.query.by)
        group = self.groups.get(ident)
        if group is None:
            since, until = self.query.since, self.query.until
            if self.time_key is not None:
                since, until = self._bucket_window(float(row["b0"]))
            group = Group(key=key, since=since, until=until)
            self.groups[ident] = group
        return group

    def fill_durations(self, row: Mapping[Any, Any]) -> None:
        group = self.at(row)
        group.finished = row["n"]
        group.duration = Durations(
            count=row["n"],
            mean=row["mean"],
            p50=row["p50"],
            p90=row["p90"],
            p95=row["p95"],
            p99=row["p99"],
            max=row["max"],
            closed_across_gap=int(row["wide"] or 0),
        )

    def add_running(self, row: Mapping[Any, Any]) -> None:
        if self.time_key is not None:
            # Running now: shown in the bucket that holds the present, if the window reaches it.
            now = self.query.now.timestamp()
            since, until = self.query.since.timestamp(), self.query.until.timestamp()
            if not since < now <= until:
                return
            size = TIME_KEYS[self.time_key]
            present = min(now, until - 1e-6)
            row = {**row, "b0": math.floor(present / size) * size}
        self.at(row).running = row["n"]

    def set_coverage(self, rows: Sequence[Any]) -> None:
        for row in rows:
            share = max(0.0, 1.0 - float(row.uncovered or 0.0) / float(row.span))
            self.coverage_by_bucket.setdefault(float(row.b0), []).append(
                (int(row.target_id), share, int(row.gaps or 0), float(row.longest or 0.0))
            )

    def coverage(self, group: Group) -> tuple[float, int, float]:
        """The group's coverage, gaps and longest gap: those of its bucket's targets, or by
        target or service, of the group's own targets (their mean share)."""
        found = self.coverage_by_bucket.get(self._b0(group), [])
        if "target" in group.key:
            found = [t for t in found if self.labels[t[0]].name == group.key["target"]]
        elif "service" in group.key:
            found = [t for t in found if self.labels[t[0]].service == group.key["service"]]
        if not found:
            return 0.0, 0, 0.0
        return (
            sum(t[1] for t in found) / len(found),
            sum(t[2] for t in found),
            max(t[3] for t in found),
        )

    def set_capacity(self, spans: Sequence[CapacitySpan]) -> None:
        """Each group's capacity figures, from the rows of its account and targets."""
        for group in self.groups.values():
            chosen = self.targets_of(group)
            account = group.key["account"]
            mine = [s for s in spans if s.account == account and s.target_id in chosen]
            since, until = group.since.timestamp(), group.until.timestamp()
            group.capacity = capacity_figures(mine, since, until)

    def targets_of(self, group: Group) -> set[int]:
        """The ids of the targets whose rows are the group's."""
        return {
            target_id
            for target_id, label in self.labels.items()
            if group.key.get("target", label.name) == label.name
            and group.key.get("service", label.service) == label.service
        }

    def add_bin(self, row: Mapping[Any, Any]) -> None:
        """Add `n` jobs to bin `bin` of the row's group (from the rollups or the jobs)."""
        group = self.at(row)
        index, n = int(row["bin"]), int(row["n"])
        lower = float(HISTOGRAM_EDGES[index])
        upper = HISTOGRAM_EDGES[index + 1] if index + 1 < len(HISTOGRAM_EDGES) else None
        for at, (lo, hi, count) in enumerate(group.histogram):
            if lo == lower:
                group.histogram[at] = (lo, hi, count + n)
                return
        group.histogram.append((lower, upper, n))

    def ordered(self) -> list[Group]:
        """Every group in key order, with its coverage filled in."""
        for group in self.groups.values():
            group.coverage, group.gaps, group.longest_gap_s = self.coverage(group)
            group.histogram.sort()
        return sorted(
            self.groups.values(), key=lambda g: [_sortable(g.key[k]) for k in self.query.by]
        )

    def _b0(self, group: Group) -> float:
        if self.time_key is None:
            return self.query.since.timestamp()
        return float(group.key[self.time_key].timestamp())


def pre(names: str) -> str:
    """A comma-separated list followed by a comma, or nothing."""
    return f"{names}, " if names else ""


def _sortable(value: Any) -> tuple[bool, Any]:
    return (value is not None, value if value is not None else "")


def _buckets(query: StatsQuery, time_key: str) -> list[float]:
    size = TIME_KEYS[time_key]
    first = math.floor(query.since.timestamp() / size) * size
    end = query.until.timestamp()
    return [float(b) for b in range(int(first), math.ceil(end), size) if b < end]


class _Sql:
    """The report's SQL for one dialect and query."""

    def __init__(self, dialect: Dialect, query: StatsQuery) -> None:
        self.d = dialect
        self.q = query
        self.target_id: int | None = None
        # Only these targets' jobs (a part of the report: see _concurrency); None: every one.
        self.only_targets: list[int] | None = None
        # The targets of services that have several (see _shared_service_targets).
        self.shared_targets: list[int] = []
        self.covering = False  # every job's start and end lie in the window
        self.time_key = next((k for k in query.by if k in TIME_KEYS), None)
        self.size = float(TIME_KEYS[self.time_key]) if self.time_key else None
        self.plain_keys = [k for k in query.by if k not in TIME_KEYS]

    def params(self) -> dict[str, Any]:
        """The bound values every query uses."""
        since, until = self.q.since.timestamp(), self.q.until.timestamp()
        first = since if self.size is None else math.floor(since / self.size) * self.size
        return {
            "since_ts": self.q.since,
            "until_ts": self.q.until,
            "reach_ts": to_datetime(min(until + LONG_JOB_S, LATEST)),
            "since_e": since,
            "until_e": until,
            "first_b0": float(first),
            "size": self.size or (until - since),
            "target_id": self.target_id,
        }

    def _text(self, sql: str) -> Any:
        # Times compared with stored columns are bound as UTCDateTime, so indexes serve them.
        typed = [
            bindparam(name, type_=UTCDateTime())
            for name in ("since_ts", "until_ts", "reach_ts")
            if f":{name}" in sql
        ]
        return text(sql).bindparams(*typed)

    def _target(self, column: str) -> str:
        chosen = "" if self.target_id is None else f" AND {column} = :target_id"
        if self.only_targets is not None:
            ids = ", ".join(str(int(i)) for i in self.only_targets) or "NULL"
            # Unindexed on SQLite: the time ranges, not every job of these targets, are read.
            chosen += f" AND {self.d.no_index(column)} IN ({ids})"
        return chosen

    def _key(self, alias: str, key: str) -> str:
        """SQL: the grouping key `key` of the job or rollup row aliased `alias`; the target as
        its id (named in the report), the service looked up by it (a primary key seek)."""
        if key == "target":
            return f"{alias}.target_id"
        if key == "service":
            return f"(SELECT s.service FROM targets s WHERE s.id = {alias}.target_id)"
        if key == "outcome":  # a job's only (never a rollup's: see _Split)
            return f"(SELECT o.outcome FROM outcomes o WHERE o.job_id = {alias}.id)"
        return f"{alias}.{key}"

    def _status(self, status: JobStatus, *, indexed: bool = True) -> str:
        """SQL: job `j` has `status`; with `indexed=False`, no index is picked by status.

        Finished jobs are found by their end_at range: SQLite, which plans without statistics,
        would otherwise scan every finished job through a partial index of the finished ones.
        """
        column = "j.status" if indexed else self.d.no_index("j.status")
        return f"{column} = '{status}'"

    def _running_jobs(self) -> str:
        """FROM: the jobs `j`, read through the partial index of the running ones, which the
        WHERE must then select by `_status(JobStatus.RUNNING)` (SQLite would otherwise read
        them along start_at, nearly every job; PostgreSQL chooses the index by itself)."""
        return f"jobs j{self.d.indexed_by(RUNNING_INDEX)}"

    def _time(self, column: str) -> str:
        """A time column compared with the window; kept off its index when the window holds
        every job (a scan of the table beats visiting every row through the index)."""
        return self.d.no_index(column) if self.covering else column

    def _finished_in_window(self) -> str:
        """SQL: job `j` is one of the window's ``finished`` jobs (it ended in the window)."""
        end = self._time("j.end_at")
        return (
            f"{self._status(JobStatus.FINISHED, indexed=False)}"
            f" AND {end} >= :since_ts AND {end} < :until_ts{self._target('j.target_id')}"
        )

    def seekable(self, conn: Connection) -> bool:
        """True when the percentiles can be read off the finished jobs' ``(type, duration_s)``
        index: the groups are at most by type, and the window and --target select every
        finished job.

        Grouped by time or account, a group's jobs are not a range of that index; and in a
        window that is a part of the history, the window's jobs are found by their end (the
        sort of a part is cheaper than walking the whole index past the jobs outside it).
        """
        if not self.covering or self.time_key is not None or self.plain_keys not in ([], ["type"]):
            return False
        return self._every_target(conn)

    def day_seekable(self, conn: Connection) -> bool:
        """True when each whole day's percentiles can be read off the ``(end day, duration_s)``
        index: the groups are by day alone, and --target, if given, selects every finished job."""
        return self.time_key == "day" and not self.plain_keys and self._every_target(conn)

    def _every_target(self, conn: Connection) -> bool:
        """True unless --target leaves out another target's finished jobs."""
        if self.target_id is None:
            return True
        # Each other target's jobs are read by target (the status unindexed: on SQLite, the
        # partial indexes of the finished jobs would walk every one of every target to find
        # none).
        others = conn.execute(
            text(f"""
                SELECT 1 FROM targets t
                WHERE t.id <> :target_id AND EXISTS (
                    SELECT 1 FROM jobs j
                    WHERE j.target_id = t.id AND {self._status(JobStatus.FINISHED, indexed=False)})
                LIMIT 1
            """),
            {"target_id": self.target_id},
        ).first()
        return others is None

    def durations_by_type(self) -> Any:
        """The duration figures but the percentiles, per type (for the index seeks)."""
        return self._text(f"""
            SELECT j.type AS k_type, COUNT(*) AS n, COUNT(j.duration_s) AS timed,
                   SUM(j.duration_s) AS total, MAX(j.duration_s) AS max,
                   SUM(CASE WHEN j.closed_across_gap THEN 1 ELSE 0 END) AS wide
            FROM jobs j
            WHERE {self._finished_in_window()}
            GROUP BY j.type
        """)

    def duration_sums(self) -> Any:
        """The duration figures but the percentiles, per group (no ranking)."""
        exprs, names = self._keys("j.end_at")
        return self._text(f"""
            SELECT {exprs + ", " if exprs else ""}COUNT(*) AS n, COUNT(j.duration_s) AS timed,
                   SUM(j.duration_s) AS total, MAX(j.duration_s) AS max,
                   SUM(CASE WHEN j.closed_across_gap THEN 1 ELSE 0 END) AS wide
            FROM jobs j
            WHERE {self._finished_in_window()}
            {f"GROUP BY {names}" if names else ""}
        """)

    def ended_elsewhere_that_day(self, conn: Connection, day: int, lo: float, hi: float) -> bool:
        """True when a job of `day` (days since the epoch) ended outside ``[lo, hi)``: two
        probes of the end_at index, before and after."""
        finished = self._status(JobStatus.FINISHED, indexed=False)
        times = {
            "day_start": to_datetime(day * 86400),
            "lo": to_datetime(lo),
            "hi": to_datetime(hi),
        }
        before_and_after = [
            "j.end_at >= :day_start AND j.end_at < :lo",
            "j.end_at >= :hi",
        ]
        if (day + 1) * 86400 <= LATEST:  # else the day holds the last time a column can
            times["day_end"] = to_datetime((day + 1) * 86400)
            before_and_after[1] += " AND j.end_at < :day_end"
        probes = " UNION ALL ".join(
            f"SELECT * FROM (SELECT 1 AS hit FROM jobs j WHERE {where} AND {finished} LIMIT 1) p"
            for where in before_and_after
        )
        typed = (bindparam(name, type_=UTCDateTime()) for name in times)
        return conn.execute(text(probes).bindparams(*typed), times).first() is not None

    def seek_day(self, *, descending: bool) -> Any:
        """The duration at offset ``:skip`` of the finished jobs that ended on UTC day ``:day``,
        ascending or descending: one range of the ``(end day, duration_s)`` index."""
        order = "DESC" if descending else "ASC"
        return text(f"""
            SELECT j.duration_s FROM jobs j{self.d.indexed_by("ix_jobs_finished_day")}
            WHERE j.status = '{JobStatus.FINISHED}' AND {self.d.end_day("j")} = :day
            ORDER BY j.duration_s {order} LIMIT 1 OFFSET :skip
        """)

    def seek(self, types: list[str | None], *, descending: bool) -> Any:
        """The duration at offset ``:skip`` of the finished jobs of `types`, ascending or
        descending: one range of the finished jobs' ``(type, duration_s)`` index per type,
        merged in order (SQLite's ordered compound select, PostgreSQL's Merge Append), so no
        sort."""
        arms, params = [], {}
        for index, value in enumerate(types):
            if value is None:
                match = "j.type IS NULL"
            else:
                match = f"j.type = :type{index}"
                params[f"type{index}"] = value
            arms.append(
                f"SELECT j.duration_s AS duration_s FROM jobs j"
                f" WHERE {self._status(JobStatus.FINISHED)} AND {match}"
            )
        order = "DESC" if descending else "ASC"
        sql = " UNION ALL ".join(arms)
        return text(f"{sql} ORDER BY duration_s {order} LIMIT 1 OFFSET :skip").bindparams(**params)

    def _keys(self, time_column: str | None) -> tuple[str, str]:
        """SELECT expressions and their names for the grouping keys of jobs `j`."""
        exprs = [f"{self._key('j', k)} AS k_{k}" for k in self.plain_keys]
        names = [f"k_{k}" for k in self.plain_keys]
        if self.time_key is not None and time_column is not None:
            size = self.size
            exprs.append(f"{self.d.floor(f'{self.d.epoch(time_column)} / {size}')} * {size} AS b0")
            names.append("b0")
        return ", ".join(exprs), ", ".join(names)

    def durations(self) -> Any:
        exprs, names = self._keys("j.end_at")
        select_keys = f"{exprs}, " if exprs else ""
        partition = f"PARTITION BY {names} " if names else ""
        percentiles = ", ".join(
            f"MIN(CASE WHEN rn >= ({p} * n + 99) / 100 THEN duration_s END) AS p{p}"
            for p in PERCENTILES
        )
        group = f"GROUP BY {names}" if names else ""
        return self._text(f"""
            WITH base AS (
                SELECT {select_keys}j.duration_s AS duration_s,
                       CASE WHEN j.closed_across_gap THEN 1 ELSE 0 END AS wide
                FROM jobs j
                WHERE {self._finished_in_window()}
            ),
            ranked AS (
                SELECT base.*,
                       ROW_NUMBER() OVER ({partition}ORDER BY duration_s) AS rn,
                       COUNT(*) OVER ({partition.strip()}) AS n
                FROM base
            )
            SELECT {names + ", " if names else ""}COUNT(*) AS n, AVG(duration_s) AS mean,
                   MAX(duration_s) AS max, SUM(wide) AS wide, {percentiles}
            FROM ranked {group}
        """)

    def started(self, status: JobStatus | None = None) -> Any:
        """Jobs (of `status`, or all) that started in the window, per group."""
        exprs, names = self._keys("j.start_at")
        group = f"GROUP BY {names}" if names else ""
        only = "" if status is None else f" AND {self._status(status)}"
        return self._text(f"""
            SELECT {exprs + ", " if exprs else ""}COUNT(*) AS n
            FROM {self._running_jobs() if status == JobStatus.RUNNING else "jobs j"}
            WHERE {self._time("j.start_at")} >= :since_ts AND {self._time("j.start_at")} < :until_ts
                  {self._target("j.target_id")}{only}
            {group}
        """)

    def missed(self, status: JobStatus | None = None) -> Any:
        """The shares of the missed-jobs estimate of the jobs (of `status`, or all) that started
        in the window, per group (recorder.missed). A running job's duration lower bound is
        its age at its target's latest successful poll."""
        exprs, names = self._keys("j.start_at")
        group = f"GROUP BY {names}" if names else ""
        only = "" if status is None else f" AND {self._status(status)}"
        d = self.d
        latest_id = latest_ok_sql("j.target_id")
        latest = f"(SELECT {d.epoch('l.sent_at')} FROM polls l WHERE l.id = {latest_id})"
        lower = f"COALESCE(j.duration_min_s, {latest} - {d.epoch('j.start_at')})"
        jobs = self._running_jobs() if status == JobStatus.RUNNING else "jobs j"
        return self._text(f"""
            SELECT {exprs + ", " if exprs else ""}SUM({missed.contribution_sql(d, lower)}) AS shares
            FROM {jobs}{missed.previous_poll_join()}
            WHERE {self._time("j.start_at")} >= :since_ts AND {self._time("j.start_at")} < :until_ts
                  {self._target("j.target_id")}{only}
            {group}
        """)

    # The rollups (recorder.rollups): whole hours, summed per group and time bucket.

    def hour_params(self, hours: tuple[int, int]) -> dict[str, Any]:
        """The parameters for hours ``[first, end)`` as the window (and as a rollup range)."""
        lo, hi = (to_datetime(h * rollups.HOUR) for h in hours)
        return {**self.params(), "since_ts": lo, "until_ts": hi, "h0_0": hours[0], "h1_0": hours[1]}

    def ranges_params(self, ranges: Sequence[tuple[int, int]]) -> dict[str, Any]:
        """The parameters for rollup hour ranges ``[lo, hi)``."""
        params = self.params()
        for index, (lo, hi) in enumerate(ranges):
            params |= {f"h0_{index}": lo, f"h1_{index}": hi}
        # By service, the groups of targets: the peaks of one service's targets are combined
        # (see _concurrency); its sums add up as any other group's.
        by_target = self.target_id is not None or {"target", "service"} & set(self.plain_keys)
        params["scope"] = rollups.scope_of(
            bool(by_target), "type" in self.plain_keys, "account" in self.plain_keys
        )
        return params

    def _rollup(self, alias: str, ranges: int) -> tuple[str, str, str]:
        """SELECT keys, the WHERE on `ranges` hour ranges, and the GROUP BY, for a rollup."""
        exprs = [f"{self._key(alias, k)} AS k_{k}" for k in self.plain_keys]
        names = [f"k_{k}" for k in self.plain_keys]
        if self.size is not None:
            size = int(self.size)
            b0 = self.d.floor(f"{alias}.hour * {rollups.HOUR}.0 / {size}")
            exprs.append(f"{b0} * {size} AS b0")
            names.append("b0")
        within = " OR ".join(
            f"({alias}.hour >= :h0_{i} AND {alias}.hour < :h1_{i})" for i in range(ranges)
        )
        group = f"GROUP BY {', '.join(names)}" if names else ""
        return pre(", ".join(exprs)), f"({within}){self._target(f'{alias}.target_id')}", group

    def rollup_counts(self) -> Any:
        """The finished and started jobs of whole hours, per group: from rollup_hours."""
        keys, where, group = self._rollup("r", 1)
        return text(f"""
            SELECT {keys}r.type AS k_type, SUM(r.finished) AS n, SUM(r.timed) AS timed,
                   SUM(r.duration_sum) AS total, MAX(r.duration_max) AS max,
                   SUM(r.wide) AS wide, SUM(r.started) AS started, SUM(r.missed) AS missed
            FROM rollup_hours r WHERE {where}
            {group}{", r.type" if group else "GROUP BY r.type"}
        """)

    def rollup_bins(self) -> Any:
        """The finished jobs of whole hours per duration bin, per group: from rollup_hours."""
        keys, where, group = self._rollup("r", 1)
        sums = ", ".join(f"SUM(r.{column}) AS {column}" for column in BIN_COLUMNS)
        return text(f"SELECT {keys}{sums} FROM rollup_hours r WHERE {where} {group}")

    def rollup_busy(self, ranges: int) -> Any:
        """The finished jobs' total time in flight in whole hours, per group."""
        keys, where, group = self._rollup("r", ranges)
        return text(f"SELECT {keys}SUM(r.busy_s) AS busy FROM rollup_hours r WHERE {where} {group}")

    def rollup_peaks(self, ranges: int) -> Any:
        """The most finished jobs in flight at once in whole hours, per group."""
        keys, where, group = self._rollup("p", ranges)
        return text(f"""
            SELECT {keys}MAX(p.peak) AS peak FROM rollup_peaks p
            WHERE p.scope = :scope AND {where} {group}
        """)

    def unrolled_hours(self, conn: Connection, first: int, end: int) -> list[tuple[int, int]]:
        """The hours from `first` to `end` that running jobs and long jobs span, which the
        rollups leave out; a running job is taken to run until `end`."""
        d = self.d
        hours = self.hour_params((first, end))
        found = []
        for row in conn.execute(
            self._text(f"""
                SELECT {d.epoch("j.start_at")} AS s, {d.epoch("j.end_at")} AS e
                FROM jobs j{d.indexed_by("ix_jobs_long")}
                WHERE {rollups.long_job_sql(d)} AND j.end_at > :since_ts
                      AND {d.no_index("j.start_at")} < :until_ts{self._target("j.target_id")}
                UNION ALL
                SELECT MIN({d.epoch("j.start_at")}), NULL FROM {self._running_jobs()}
                WHERE {self._status(JobStatus.RUNNING)} AND j.start_at < :until_ts
                      {self._target("j.target_id")}
                HAVING COUNT(*) > 0
            """),
            hours,
        ):
            lo = rollups.hour_of(float(row.s))
            hi = end if row.e is None else math.ceil(float(row.e) / rollups.HOUR)
            found.append((lo, hi))
        return found

    def running(self) -> Any:
        exprs = ", ".join(f"{self._key('j', k)} AS k_{k}" for k in self.plain_keys)
        names = ", ".join(f"k_{k}" for k in self.plain_keys)
        group = f"GROUP BY {names}" if names else ""
        return self._text(f"""
            SELECT {exprs + ", " if exprs else ""}COUNT(*) AS n
            FROM {self._running_jobs()}
            WHERE {self._status(JobStatus.RUNNING)}{self._target("j.target_id")}
            {group}
        """)

    def _spans(self) -> str:
        d = self.d
        return f"""
            buckets(b0) AS (
                SELECT {d.number("first_b0")}
                UNION ALL
                SELECT b0 + {d.number("size")} FROM buckets
                WHERE b0 + {d.number("size")} < {d.number("until_e")}
            ),
            spans AS (
                SELECT b0,
                       {d.greatest("b0", d.number("since_e"))} AS lo,
                       {d.least(f"b0 + {d.number('size')}", d.number("until_e"))} AS hi
                FROM buckets
            )
        """

    def concurrency(self) -> Any:
        """Peak and total overlap per group and time bucket, from the jobs' intervals.

        Each interval is clipped to the window, then cut at the bucket edges it crosses: its
        first and last bucket are arithmetic (``floor(t / size)``), the buckets between them
        come from a recursive step over the few intervals that cross an edge, so the cost is
        that of the intervals and the buckets they span, never intervals times buckets. Each
        piece opens (+1) and closes (-1) its bucket's level; the running sum of those, in time
        order with closes first at the same instant (intervals are half-open), is the level,
        and the peak its maximum within the group and bucket, exactly. The total overlap is
        the sum of the pieces' lengths.
        """
        d = self.d
        keys = [f"k_{k}" for k in self.plain_keys]
        k_exprs = ", ".join(f"{self._key('j', k)} AS k_{k}" for k in self.plain_keys)
        k_names = ", ".join(keys)
        end = d.greatest(d.epoch("latest.t"), d.epoch("j.start_at"))
        since, until, size = d.number("since_e"), d.number("until_e"), d.number("size")
        if self.time_key is None:
            pieces = f"""
            pieces AS (
                SELECT {pre(k_names)}{d.number("first_b0")} AS b0, s, e FROM clipped
            )"""
        else:
            first, last = d.floor(f"s / {size}"), d.floor(f"e / {size}")
            pieces = f"""
            cut AS (
                -- The bucket of s, one lower when the division rounded up to an edge above s;
                -- the bucket of e may be one too many (an empty piece, dropped below).
                SELECT {pre(k_names)}s, e,
                       CASE WHEN {first} * {size} > s THEN {first} - 1 ELSE {first} END AS fb,
                       {last} AS lb
                FROM clipped
            ),
            crossing({pre(k_names)}s, e, b, lb) AS (
                SELECT {pre(k_names)}s, e, fb + 1, lb FROM cut WHERE lb > fb
                UNION ALL
                SELECT {pre(k_names)}s, e, b + 1, lb FROM crossing WHERE b < lb
            ),
            whole AS (
                SELECT {pre(k_names)}fb * {size} AS b0, s, e FROM cut
                UNION ALL
                SELECT {pre(k_names)}b * {size} AS b0, s, e FROM crossing
            ),
            pieces AS (
                SELECT {pre(k_names)}b0, {d.greatest("s", "b0")} AS s,
                       {d.least("e", f"b0 + {size}")} AS e
                FROM whole
            )"""
        return self._text(f"""
            WITH RECURSIVE latest AS (
                SELECT t.id AS target_id, p.received_at AS t
                FROM targets t JOIN polls p ON p.id = {latest_ok_sql("t.id")}
            ),
            iv AS (
                -- Three arms, so that each reads one index range: finished jobs by end_at (one
                -- that is not long ends at most a day after the window), the few long ones by
                -- their partial index, and the few running ones.
                SELECT {pre(k_exprs)}{d.epoch("j.start_at")} AS s, {d.epoch("j.end_at")} AS e
                FROM jobs j
                WHERE {self._status(JobStatus.FINISHED, indexed=False)}
                      AND {self._time("j.end_at")} > :since_ts
                      AND {self._time("j.end_at")} <= :reach_ts
                      AND {self.d.no_index("j.start_at")} < :until_ts
                      AND NOT ({rollups.long_job_sql(d)})
                      {self._target("j.target_id")}
                UNION ALL
                SELECT {pre(k_exprs)}{d.epoch("j.start_at")} AS s, {d.epoch("j.end_at")} AS e
                FROM jobs j{d.indexed_by("ix_jobs_long")}
                WHERE {rollups.long_job_sql(d)} AND j.end_at > :since_ts
                      AND {self.d.no_index("j.start_at")} < :until_ts
                      {self._target("j.target_id")}
                UNION ALL
                SELECT {pre(k_exprs)}{d.epoch("j.start_at")} AS s, {end} AS e
                FROM {self._running_jobs()} JOIN latest ON latest.target_id = j.target_id
                WHERE {self._status(JobStatus.RUNNING)} AND j.start_at < :until_ts
                      {self._target("j.target_id")}
            ),
            clipped AS (
                SELECT {pre(k_names)}s, e FROM (
                    SELECT {pre(k_names)}{d.greatest("s", since)} AS s, {d.least("e", until)} AS e
                    FROM iv
                ) w
                WHERE e > s
            ),{pieces},
            sides(d) AS (SELECT 1 UNION ALL SELECT -1),
            events AS (
                SELECT {pre(k_names)}b0, CASE WHEN sides.d = 1 THEN s ELSE e END AS t,
                       sides.d AS d, CASE WHEN sides.d = 1 THEN e - s ELSE 0 END AS len
                FROM pieces CROSS JOIN sides
                WHERE e > s
            ),
            levels AS (
                SELECT events.*,
                       SUM(d) OVER (PARTITION BY {pre(k_names)}b0 ORDER BY t, d
                                    ROWS UNBOUNDED PRECEDING) AS level
                FROM events
            )
            SELECT {pre(k_names)}b0, MAX(level) AS peak, SUM(len) AS total,
                   {d.least(f"b0 + {size}", until)} - {d.greatest("b0", since)} AS span
            FROM levels GROUP BY {pre(k_names)}b0
        """)

    def coverage(self) -> Any:
        d = self.d
        target = "" if self.target_id is None else "WHERE t.id = :target_id"
        return self._text(f"""
            WITH RECURSIVE {self._spans()},
            chosen AS (SELECT t.id AS target_id FROM targets t {target}),
            ends AS (
                SELECT c.target_id,
                       (SELECT f.sent_at FROM polls f WHERE f.id = (
                            SELECT MIN(id) FROM polls p
                            WHERE p.target_id = c.target_id AND {ok_sql("p")})) AS first_ok,
                       {latest_ok_sql("c.target_id")} AS last_ok_id,
                       (SELECT MAX(id) FROM polls p WHERE p.target_id = c.target_id) AS last_id
                FROM chosen c
            ),
            holes AS (
                SELECT p.target_id AS target_id, {d.epoch("prev.sent_at")} AS s,
                       {d.epoch("p.sent_at")} AS e, 1 AS is_gap
                FROM polls p{d.indexed_by("ix_polls_gaps")}
                JOIN polls prev ON prev.id = {latest_ok_sql("p.target_id", before="p.id")}
                WHERE {ok_sql("p")} AND p.after_gap AND p.sent_at > :since_ts
                      AND p.target_id IN (SELECT target_id FROM chosen)
                UNION ALL
                SELECT target_id, -{_FAR},
                       COALESCE({d.epoch("first_ok")}, {_FAR}), 0 FROM ends
                UNION ALL
                SELECT ends.target_id, {d.epoch("last.sent_at")}, {_FAR},
                       CASE WHEN ends.last_id > ends.last_ok_id THEN 1 ELSE 0 END
                FROM ends JOIN polls last ON last.id = ends.last_ok_id
            ),
            clipped AS (
                SELECT holes.target_id, spans.b0, spans.hi - spans.lo AS span, holes.is_gap,
                       {d.least("holes.e", "spans.hi")} - {d.greatest("holes.s", "spans.lo")} AS len
                FROM holes JOIN spans ON holes.s < spans.hi AND holes.e > spans.lo
            )
            SELECT c.target_id AS target_id, spans.b0 AS b0, spans.hi - spans.lo AS span,
                   COALESCE(SUM(clipped.len), 0) AS uncovered,
                   COALESCE(SUM(clipped.is_gap), 0) AS gaps,
                   COALESCE(MAX(CASE WHEN clipped.is_gap = 1 THEN clipped.len END), 0) AS longest
            FROM chosen c CROSS JOIN spans
            LEFT JOIN clipped ON clipped.target_id = c.target_id AND clipped.b0 = spans.b0
            GROUP BY c.target_id, spans.b0, spans.hi, spans.lo
        """)

    def any_known_outcome(self) -> Any:
        """One row if any job has a known outcome (else success_rate is None everywhere, and the
        report reads nothing more for it)."""
        return text(f"SELECT 1 FROM outcomes WHERE outcome IN ({_KNOWN_SQL}) LIMIT 1")

    def outcomes(self) -> Any:
        """Per group, the finished jobs with a known outcome, and how many of them completed."""
        exprs, names = self._keys("j.end_at")
        group = f"GROUP BY {names}" if names else ""
        return self._text(f"""
            SELECT {exprs + ", " if exprs else ""}
                   SUM(CASE WHEN o.outcome = '{OutcomeKind.COMPLETED}' THEN 1 ELSE 0 END)
                       AS completed,
                   COUNT(*) AS known
            FROM jobs j JOIN outcomes o ON o.job_id = j.id
            WHERE {self._finished_in_window()} AND o.outcome IN ({_KNOWN_SQL})
            {group}
        """)

    def histogram(self) -> Any:
        exprs, names = self._keys("j.end_at")
        cases = " ".join(
            f"WHEN j.duration_s < {edge} THEN {index - 1}"
            for index, edge in enumerate(HISTOGRAM_EDGES)
            if index > 0
        )
        last = len(HISTOGRAM_EDGES) - 1
        return self._text(f"""
            SELECT {exprs + ", " if exprs else ""}
                   CASE {cases} ELSE {last} END AS bin, COUNT(*) AS n
            FROM jobs j
            WHERE {self._finished_in_window()}
            GROUP BY {names + ", " if names else ""}CASE {cases} ELSE {last} END
        """)
