"""Rollups: the finished jobs summed per UTC hour, kept in step with the jobs table.

A report over months would otherwise read every job. ``rollup_hours`` holds, per target, type,
account and hour, what the stats add up: the jobs that ended in the hour (count, durations'
count, sum and maximum, how many closed across a gap), the jobs that started in it (and their
shares of the missed-jobs estimate, recorder.missed), and the time their intervals spent in
it. ``rollup_peaks`` holds, per hour and per group of every
grouping the reports offer (by target or not, by type or not, by account or not), the most
intervals open at once: a peak of a union is not the sum of its parts' peaks, but the peak over
several hours is the largest of theirs.

Only finished jobs are rolled up: a running job's figures change with every poll, and the
reports count the few running jobs exactly. A finished job whose interval is longer than
`LONG_JOB_S` stays out of the concurrency figures (one absurd start time must cost one row, not
one row per hour since 1970); the reports find those jobs by a partial index and compute the
hours they span exactly.

The transaction that changes a job changes the rollups. A job that closes adds to them: its
sums to its hours' rows, and a peak raised where its interval makes more jobs in flight at once
than before (`add_finished`). A job that reappears, and is running again, withdraws what it
added: every hour it touched is recomputed from the jobs table (`refresh`), since a peak cannot
be lowered by subtraction. `rebuild` recomputes every hour, for a database that had jobs before
the rollups existed (migration 0007); a test keeps the rollups the store maintains equal to a
rebuild's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, text, update

from recorder.clock import LATEST, to_datetime
from recorder.dialect import Dialect
from recorder.missed import contribution_sql, previous_poll_join
from recorder.models import (
    BIN_COLUMNS,
    HISTOGRAM_EDGES,
    LONG_JOB_POSTGRESQL,
    LONG_JOB_S,
    LONG_JOB_SQLITE,
    JobStatus,
    RollupHour,
    RollupPeak,
    UTCDateTime,
)

HOUR = 3600
BY_TARGET, BY_TYPE, BY_ACCOUNT = 1, 2, 4
SCOPES = tuple(range(8))  # every combination of the three bits
CHUNK_HOURS = 48  # hours recomputed per pass: bounds the memory a pass needs


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished job as the rollups see it: its group, its interval and its duration."""

    id: int
    target_id: int
    type: str | None
    account: str | None
    s: float  # start, epoch seconds
    e: float  # end, epoch seconds
    duration: float | None
    wide: bool
    long: bool  # longer than LONG_JOB_S: out of the concurrency rollups
    missed: float = 0.0  # its share of the missed-jobs estimate (recorder.missed)


def bin_of(duration: float | None) -> int:
    """The histogram bin of a duration (HISTOGRAM_EDGES; stats' SQL CASE, in Python): a
    null duration is counted in the last bin, as SQL's comparisons with null fall through."""
    if duration is not None:
        for index, edge in enumerate(HISTOGRAM_EDGES[1:]):
            if duration < edge:
                return index
    return len(HISTOGRAM_EDGES) - 1


def hour_of(t: float) -> int:
    """The UTC hour holding the instant `t` (hours since the epoch)."""
    return math.floor(t / HOUR)


def scope_of(by_target: bool, by_type: bool, by_account: bool) -> int:
    """The `scope` of a grouping: which of target, type and account its groups are by."""
    return (
        (BY_TARGET if by_target else 0)
        | (BY_TYPE if by_type else 0)
        | (BY_ACCOUNT if by_account else 0)
    )


def long_job_sql(d: Dialect, alias: str = "j") -> str:
    """SQL: the job aliased `alias` is finished and too long for the concurrency rollups.

    The text of the partial index ``ix_jobs_long``, so that the planner uses it.
    """
    predicate = LONG_JOB_SQLITE if d.sqlite else LONG_JOB_POSTGRESQL
    for column in ("status", "end_at", "start_at"):
        predicate = predicate.replace(column, f"{alias}.{column}")
    return predicate


def touched(job: Finished) -> set[int]:
    """The hours whose rollups the job counts in: its start's, its end's, and those its
    interval spans (unless it is long)."""
    hours = {hour_of(job.s), hour_of(job.e)}
    if not job.long and job.e > job.s:
        hours.update(range(hour_of(job.s), math.ceil(job.e / HOUR)))
    return hours


def lock(conn: Connection) -> None:
    """Take the rollups for this transaction: writers of other targets wait until it ends.

    Rows of the groupings across targets are shared, and each writer computes them from what
    it reads; two recorders (on PostgreSQL) must not both read before either writes. A SQLite
    writer already holds the database's write lock.
    """
    if Dialect.of(conn).postgresql:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


# "rollups!": one 64-bit key, a key space apart from the leases' (class, target) pairs.
_LOCK_KEY = 0x726F6C6C75707321


def refresh(conn: Connection, hours: Iterable[int]) -> None:
    """Recompute the rollups of `hours` from the jobs table (inside the caller's transaction)."""
    for first, last in _runs(sorted(set(hours))):
        for lo in range(first, last + 1, CHUNK_HOURS):
            _recompute(conn, lo, min(last, lo + CHUNK_HOURS - 1))


def hours_of(conn: Connection, job_ids: Sequence[int]) -> set[int]:
    """The hours the finished jobs among `job_ids` count in (to refresh once they changed)."""
    hours: set[int] = set()
    for job in _by_ids(conn, job_ids, missed=False):
        hours |= touched(job)
    return hours


def add_finished(conn: Connection, job_ids: Sequence[int], done: set[int]) -> None:
    """Add jobs that have just finished to the rollups, except in the hours `done` (recomputed
    whole in this transaction already).

    Their sums are added to the rows of their hours. A peak can only have risen at an instant
    a new interval covers: each group's level there is counted again from every finished
    interval that overlaps the new ones (a few index ranges), and the peak raised if it is
    higher. So a close costs what overlaps it, not what its hours hold.
    """
    jobs = _by_ids(conn, job_ids)
    if not jobs:
        return
    first = min(min(hour_of(j.s), hour_of(j.e)) for j in jobs)
    last = max(max(hour_of(j.s), hour_of(j.e)) for j in jobs)
    _add_sums(conn, {k: v for k, v in sums(jobs, first, last).items() if k[0] not in done})
    fresh = {j.id for j in jobs if not j.long and j.e > j.s}
    if not fresh:
        return
    lo = min(j.s for j in jobs if j.id in fresh)
    hi = max(j.e for j in jobs if j.id in fresh)
    raised = levels_at_new(_overlapping(conn, lo, hi), fresh)
    _raise_peaks(conn, {k: v for k, v in raised.items() if k[1] not in done and v > 0})


def _by_ids(conn: Connection, job_ids: Sequence[int], *, missed: bool = True) -> list[Finished]:
    """The finished jobs among `job_ids` (with their shares of the missed-jobs estimate)."""
    found: list[Finished] = []
    d = Dialect.of(conn)
    for start in range(0, len(job_ids), 500):
        chunk = list(job_ids[start : start + 500])
        query = text(
            f"{_select(d, missed=missed)} WHERE j.id IN :ids AND j.status = '{JobStatus.FINISHED}'"
        )
        rows = conn.execute(query.bindparams(bindparam("ids", expanding=True)), {"ids": chunk})
        found.extend(_finished(rows))
    return found


def _overlapping(conn: Connection, lo: float, hi: float) -> list[Finished]:
    """The finished jobs whose interval may overlap ``[lo, hi)``: by end, within a day after."""
    d = Dialect.of(conn)
    status = f"{d.no_index('j.status')} = '{JobStatus.FINISHED}'"
    query = text(
        f"{_select(d)} WHERE j.end_at > :lo AND j.end_at <= :reach"
        f" AND {d.no_index('j.start_at')} < :hi AND {status}"
    ).bindparams(
        bindparam("lo", to_datetime(lo), type_=UTCDateTime()),
        bindparam("hi", to_datetime(hi), type_=UTCDateTime()),
        bindparam("reach", to_datetime(min(hi + LONG_JOB_S, LATEST)), type_=UTCDateTime()),
    )
    return list(_finished(conn.execute(query)))


def _add_sums(conn: Connection, added: dict[SumKey, dict[str, Any]]) -> None:
    if not added:
        return
    table = RollupHour.__table__
    existing = {
        (row.hour, row.target_id, row.type, row.account): row
        for row in conn.execute(
            select(table).where(
                RollupHour.hour.in_({k[0] for k in added}),
                RollupHour.target_id.in_({k[1] for k in added}),
            )
        )
    }
    inserts, updates = [], []
    for key, row in added.items():
        old = existing.get(key)
        if old is None:
            inserts.append(row)
            continue
        updates.append(
            {
                "row_id": old.id,
                "finished": old.finished + row["finished"],
                "timed": old.timed + row["timed"],
                "duration_sum": old.duration_sum + row["duration_sum"],
                "duration_max": _larger(old.duration_max, row["duration_max"]),
                "wide": old.wide + row["wide"],
                "started": old.started + row["started"],
                "missed": old.missed + row["missed"],
                "busy_s": old.busy_s + row["busy_s"],
            }
            | {column: getattr(old, column) + row[column] for column in BIN_COLUMNS}
        )
    if inserts:
        conn.execute(insert(RollupHour), inserts)
    if updates:
        conn.execute(update(RollupHour).where(RollupHour.id == bindparam("row_id")), updates)


def _raise_peaks(conn: Connection, raised: dict[PeakKey, int]) -> None:
    if not raised:
        return
    existing = {
        (row.scope, row.hour, row.target_id, row.type, row.account): row
        for row in conn.execute(
            select(RollupPeak.__table__).where(
                RollupPeak.scope.in_(SCOPES), RollupPeak.hour.in_({k[1] for k in raised})
            )
        )
    }
    inserts, updates = [], []
    for key, level in raised.items():
        old = existing.get(key)
        if old is None:
            inserts.append(_peak_row(key, level))
        elif level > old.peak:
            updates.append({"row_id": old.id, "peak": level})
    if inserts:
        conn.execute(insert(RollupPeak), inserts)
    if updates:
        conn.execute(update(RollupPeak).where(RollupPeak.id == bindparam("row_id")), updates)


def rebuild(conn: Connection) -> None:
    """Recompute every rollup from the jobs table (inside the caller's transaction)."""
    conn.execute(delete(RollupHour))
    conn.execute(delete(RollupPeak))
    d = Dialect.of(conn)
    first = _first_after(conn, d, None)
    while first is not None:
        last = first + CHUNK_HOURS - 1
        _recompute(conn, first, last)
        first = _first_after(conn, d, (last + 1) * HOUR)
        if first is not None:
            first = max(first, last + 1)


def _first_after(conn: Connection, d: Dialect, t: float | None) -> int | None:
    """The first hour at or after `t` that a finished job can count in, or None."""
    if t is not None and t > LATEST:
        return None
    after = "" if t is None else " AND j.{0} >= :t"
    status = f"{d.no_index('j.status')} = '{JobStatus.FINISHED}'"
    found = []
    for column in ("start_at", "end_at"):
        query = text(
            f"SELECT MIN({d.epoch(f'j.{column}')}) FROM jobs j WHERE {status}{after.format(column)}"
        )
        if t is not None:
            query = query.bindparams(bindparam("t", to_datetime(t), type_=UTCDateTime()))
        value = conn.execute(query).scalar()
        if value is not None:
            # An interval that ends at `value` may span every hour from LONG_JOB_S before it.
            found.append(hour_of(value if column == "start_at" else float(value) - LONG_JOB_S))
    return min(found) if found else None


def _runs(hours: list[int]) -> Iterator[tuple[int, int]]:
    """Sorted hours as runs of consecutive ones, (first, last)."""
    start = prev = None
    for hour in hours:
        if prev is not None and hour == prev + 1:
            prev = hour
            continue
        if start is not None and prev is not None:
            yield start, prev
        start = prev = hour
    if start is not None and prev is not None:
        yield start, prev


def _select(d: Dialect, *, missed: bool = False) -> str:
    """SELECT finished jobs `j` as `_finished` reads them; with `missed`, their share of the
    missed-jobs estimate too (two more reads of polls per job: not for the peaks' reads)."""
    share = f"{contribution_sql(d, 'j.duration_min_s')} AS missed" if missed else "0.0 AS missed"
    joins = previous_poll_join() if missed else ""
    return f"""
        SELECT j.id AS id, j.target_id AS target_id, j.type AS type, j.account AS account,
               {d.epoch("j.start_at")} AS s, {d.epoch("j.end_at")} AS e,
               j.duration_s AS duration, j.closed_across_gap AS wide,
               CASE WHEN {long_job_sql(d)} THEN 1 ELSE 0 END AS long, {share}
        FROM jobs j{joins}"""


def _finished(rows: Iterable[Any]) -> Iterator[Finished]:
    for row in rows:
        if row.s is None or row.e is None:
            continue  # a finished job without an end is not the recorder's: it counts nowhere
        yield Finished(
            row.id,
            row.target_id,
            row.type,
            row.account,
            float(row.s),
            float(row.e),
            None if row.duration is None else float(row.duration),
            bool(row.wide),
            bool(row.long),
            float(row.missed or 0.0),
        )


def _jobs_for(conn: Connection, first: int, last: int) -> list[Finished]:
    """Every finished job that counts in an hour from `first` to `last`: one that starts or
    ends in them, or whose (not long) interval overlaps them. Three index ranges (the third
    finds a job that ends before it starts, which only a clamped time can make)."""
    d = Dialect.of(conn)
    status = f"{d.no_index('j.status')} = '{JobStatus.FINISHED}'"
    lo, hi = first * HOUR, (last + 1) * HOUR
    # `before` is the SQL for "earlier than `hi`": the last hour a database holds ends one second
    # after the latest time it holds (year 9999), which no datetime can express.
    before = "<" if hi <= LATEST else "<="
    times = {
        "lo": to_datetime(lo),
        "hi": to_datetime(min(hi, LATEST)),
        "reach": to_datetime(min(hi + LONG_JOB_S, LATEST)),
    }
    found: dict[int, Finished] = {}
    for condition in (
        # Those the second range misses: long, or ending before they start.
        f"j.start_at >= :lo AND j.start_at {before} :hi"
        f" AND ({d.no_index('j.end_at')} >= :reach OR {d.no_index('j.end_at')} < :lo)",
        f"j.end_at >= :lo AND j.end_at <= :reach AND {d.no_index('j.start_at')} {before} :hi",
        f"j.end_at >= :lo AND j.end_at {before} :hi AND {d.no_index('j.start_at')} >= :hi",
    ):
        query = text(f"{_select(d, missed=True)} WHERE {condition} AND {status}").bindparams(
            *(
                bindparam(name, value, type_=UTCDateTime())
                for name, value in times.items()
                if f":{name}" in condition
            )
        )
        found.update((job.id, job) for job in _finished(conn.execute(query)))
    return list(found.values())


def _recompute(conn: Connection, first: int, last: int) -> None:
    hours, peaks = summarize(_jobs_for(conn, first, last), first, last)
    conn.execute(delete(RollupHour).where(RollupHour.hour >= first, RollupHour.hour <= last))
    conn.execute(
        delete(RollupPeak).where(
            RollupPeak.scope.in_(SCOPES), RollupPeak.hour >= first, RollupPeak.hour <= last
        )
    )
    if hours:
        conn.execute(insert(RollupHour), hours)
    if peaks:
        conn.execute(insert(RollupPeak), peaks)


PeakKey = tuple[int, int, int | None, str | None, str | None]  # scope, hour, target, type, account
SumKey = tuple[int, int, str | None, str | None]  # hour, target, type, account


def summarize(
    jobs: Iterable[Finished], first: int, last: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of rollup_hours and rollup_peaks for the hours `first` to `last`, from every
    finished job that counts in them (pure: the rollups' definition, in one place)."""
    jobs = list(jobs)
    levels = {key: peak(events) for key, events in pieces(jobs, first, last).items()}
    peaks = {key: level for key, level in levels.items() if level > 0}
    return list(sums(jobs, first, last).values()), [_peak_row(k, v) for k, v in peaks.items()]


def sums(jobs: Iterable[Finished], first: int, last: int) -> dict[SumKey, dict[str, Any]]:
    """What the jobs add to rollup_hours in the hours `first` to `last`, per row key."""
    found: dict[SumKey, dict[str, Any]] = {}

    def row(job: Finished, hour: int) -> dict[str, Any]:
        key = (hour, job.target_id, job.type, job.account)
        if key not in found:
            found[key] = {
                "hour": hour,
                "target_id": job.target_id,
                "type": job.type,
                "account": job.account,
                "finished": 0,
                "timed": 0,
                "duration_sum": 0.0,
                "duration_max": None,
                "wide": 0,
                "started": 0,
                "missed": 0.0,
                "busy_s": 0.0,
            } | dict.fromkeys(BIN_COLUMNS, 0)
        return found[key]

    for job in jobs:
        end_hour, start_hour = hour_of(job.e), hour_of(job.s)
        if first <= end_hour <= last:
            counted = row(job, end_hour)
            counted["finished"] += 1
            counted["wide"] += int(job.wide)
            counted[BIN_COLUMNS[bin_of(job.duration)]] += 1
            if job.duration is not None:
                counted["timed"] += 1
                counted["duration_sum"] += job.duration
                counted["duration_max"] = _larger(counted["duration_max"], job.duration)
        if first <= start_hour <= last:
            started = row(job, start_hour)
            started["started"] += 1
            started["missed"] += job.missed
        for hour, lo, hi in _hour_pieces(job, first, last):
            row(job, hour)["busy_s"] += hi - lo
    return found


def pieces(
    jobs: Iterable[Finished], first: int, last: int
) -> dict[PeakKey, list[tuple[float, int]]]:
    """Each group's interval ends in each hour from `first` to `last`, for every grouping:
    ``(time, +1 open or -1 close)``."""
    found: dict[PeakKey, list[tuple[float, int]]] = defaultdict(list)
    for job in jobs:
        for hour, lo, hi in _hour_pieces(job, first, last):
            for scope in SCOPES:
                found[(scope, hour, *_parts(job, scope))] += ((lo, 1), (hi, -1))
    return found


def levels_at_new(around: list[Finished], new: set[int]) -> dict[PeakKey, int]:
    """Per group and hour, the most intervals open at once at an instant that an interval of a
    job in `new` covers, counting every interval of `around` (all those that overlap them).

    One sweep over the intervals' ends in time order, keeping a level per group; only the
    groups of new jobs are followed. With one target among them, the groupings by target are
    the same levels as those across targets, and are copied rather than counted twice.
    """
    targets = {job.target_id for job in around}
    scopes = [s for s in SCOPES if not s & BY_TARGET] if len(targets) == 1 else list(SCOPES)
    followed = {(scope, *_parts(job, scope)) for job in around if job.id in new for scope in scopes}
    # Each followed group gets a number; each job's (target, type, account) the numbers of the
    # followed groups it is in, found once per distinct triple.
    numbers = {group: number for number, group in enumerate(sorted(followed, key=repr))}
    memberships: dict[tuple[int, str | None, str | None], list[int]] = {}
    events: list[tuple[float, int, bool, int, tuple[int, ...]]] = []
    for job in around:
        triple = (job.target_id, job.type, job.account)
        mine = memberships.get(triple)
        if mine is None:
            groups = ((scope, *_parts(job, scope)) for scope in scopes)
            mine = memberships[triple] = [numbers[g] for g in groups if g in numbers]
        if not mine:
            continue
        fresh, joined = job.id in new, tuple(mine)
        for hour, lo, hi in _hour_pieces(job, -(2**40), 2**40):
            events += ((lo, 1, fresh, hour, joined), (hi, -1, fresh, hour, joined))
    # Natural tuple order: by time, a close (-1) before an open (+1) at the same instant.
    events.sort()
    level: dict[tuple[int, int], int] = defaultdict(int)
    fresh_open: dict[tuple[int, int], int] = defaultdict(int)
    best: dict[tuple[int, int], int] = {}
    for _, delta, fresh, hour, joined in events:
        for number in joined:
            key = (number, hour)
            now = level[key] = level[key] + delta
            if fresh:
                fresh_open[key] += delta
            if delta > 0 and now > best.get(key, 0) and fresh_open[key] > 0:
                best[key] = now
    groups_by_number = {number: group for group, number in numbers.items()}
    found: dict[PeakKey, int] = {}
    for (number, hour), value in best.items():
        scope, target_id, type_, account = groups_by_number[number]
        found[(scope, hour, target_id, type_, account)] = value
        if len(targets) == 1:
            found[(scope | BY_TARGET, hour, next(iter(targets)), type_, account)] = value
    return found


def _parts(job: Finished, scope: int) -> tuple[int | None, str | None, str | None]:
    """The job's group in a grouping: its target, type and account, or None where the
    grouping is not by them."""
    return (
        job.target_id if scope & BY_TARGET else None,
        job.type if scope & BY_TYPE else None,
        job.account if scope & BY_ACCOUNT else None,
    )


def peak(events: list[tuple[float, int]]) -> int:
    """The most intervals open at once, from their opens (+1) and closes (-1); a close sorts
    before an open at the same instant (intervals are half-open)."""
    level = best = 0
    for _, delta in sorted(events):
        level += delta
        best = max(best, level)
    return best


def _hour_pieces(job: Finished, first: int, last: int) -> Iterator[tuple[int, float, float]]:
    """The job's interval cut at hour edges, within hours `first` to `last`: (hour, lo, hi);
    nothing for a long job or an empty interval."""
    if job.long or not job.e > job.s:
        return
    for hour in range(max(hour_of(job.s), first), min(math.ceil(job.e / HOUR), last + 1)):
        lo, hi = max(job.s, float(hour * HOUR)), min(job.e, float((hour + 1) * HOUR))
        if hi > lo:
            yield hour, lo, hi


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _peak_row(key: PeakKey, level: int) -> dict[str, Any]:
    scope, hour, target_id, type_, account = key
    return {
        "scope": scope,
        "hour": hour,
        "target_id": target_id,
        "type": type_,
        "account": account,
        "peak": level,
    }
