"""Rollups: the finished jobs summed per UTC hour, kept in step with the jobs table.

A report over months would otherwise read every job. ``rollup_hours`` holds, per target, type,
account and hour, what the stats add up: the jobs that ended in the hour (count, durations'
count, sum and maximum, how many closed across a gap), the jobs that started in it, and the
time their intervals spent in it. ``rollup_peaks`` holds, per hour and per group of every
grouping the reports offer (by target or not, by type or not, by account or not), the most
intervals open at once: a peak of a union is not the sum of its parts' peaks, but the peak over
several hours is the largest of theirs.

Only finished jobs are rolled up: a running job's figures change with every poll, and the
reports count the few running jobs exactly. A finished job whose interval is longer than
`LONG_JOB_S` stays out of the concurrency figures (one absurd start time must cost one row, not
one row per hour since 1970); the reports find those jobs by a partial index and compute the
hours they span exactly.

The rollups are never adjusted by a delta. Whatever changes a finished job (it closes, or it
reappears and is running again) recomputes the rollups of every hour the job touches from the
jobs table, in the same transaction: the figures cannot drift from the jobs, and a job that
reappears withdraws exactly what it added. `rebuild` recomputes every hour, for a database that
had jobs before the rollups existed (migration 0007).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, text

from recorder.clock import to_datetime
from recorder.dialect import Dialect
from recorder.models import (
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


def refresh(conn: Connection, hours: Iterable[int]) -> None:
    """Recompute the rollups of `hours` from the jobs table (inside the caller's transaction)."""
    for first, last in _runs(sorted(set(hours))):
        for lo in range(first, last + 1, CHUNK_HOURS):
            _recompute(conn, lo, min(last, lo + CHUNK_HOURS - 1))


def refresh_jobs(conn: Connection, job_ids: Sequence[int]) -> set[int]:
    """The hours the finished jobs among `job_ids` count in (to refresh once they changed)."""
    hours: set[int] = set()
    d = Dialect.of(conn)
    for start in range(0, len(job_ids), 500):
        chunk = list(job_ids[start : start + 500])
        query = text(f"{_select(d)} WHERE j.id IN :ids AND j.status = '{JobStatus.FINISHED}'")
        rows = conn.execute(query.bindparams(bindparam("ids", expanding=True)), {"ids": chunk})
        for job in _finished(rows):
            hours |= touched(job)
    return hours


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


def _select(d: Dialect) -> str:
    return f"""
        SELECT j.id AS id, j.target_id AS target_id, j.type AS type, j.account AS account,
               {d.epoch("j.start_at")} AS s, {d.epoch("j.end_at")} AS e,
               j.duration_s AS duration, j.closed_across_gap AS wide,
               CASE WHEN {long_job_sql(d)} THEN 1 ELSE 0 END AS long
        FROM jobs j"""


def _finished(rows: Iterable[Any]) -> Iterator[Finished]:
    for row in rows:
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
        )


def _jobs_for(conn: Connection, first: int, last: int) -> list[Finished]:
    """Every finished job that counts in an hour from `first` to `last`: one that starts or
    ends in them, or whose (not long) interval overlaps them. Three index ranges (the third
    finds a job that ends before it starts, which only a clamped time can make)."""
    d = Dialect.of(conn)
    status = f"{d.no_index('j.status')} = '{JobStatus.FINISHED}'"
    lo, hi = first * HOUR, (last + 1) * HOUR
    times = {"lo": to_datetime(lo), "hi": to_datetime(hi), "reach": to_datetime(hi + LONG_JOB_S)}
    found: dict[int, Finished] = {}
    for condition in (
        "j.start_at >= :lo AND j.start_at < :hi",
        f"j.end_at >= :lo AND j.end_at < :reach AND {d.no_index('j.start_at')} < :hi",
        f"j.end_at >= :lo AND j.end_at < :hi AND {d.no_index('j.start_at')} >= :hi",
    ):
        query = text(f"{_select(d)} WHERE {condition} AND {status}").bindparams(
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


def summarize(
    jobs: Iterable[Finished], first: int, last: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of rollup_hours and rollup_peaks for the hours `first` to `last`, from every
    finished job that counts in them (pure: the rollups' definition, in one place)."""
    sums: dict[tuple[int, int, str | None, str | None], dict[str, Any]] = {}
    pieces: dict[tuple[int, int, int | None, str | None, str | None], list[tuple[float, int]]]
    pieces = defaultdict(list)

    def row(job: Finished, hour: int) -> dict[str, Any]:
        key = (hour, job.target_id, job.type, job.account)
        found = sums.get(key)
        if found is None:
            found = sums[key] = {
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
                "busy_s": 0.0,
            }
        return found

    for job in jobs:
        end_hour, start_hour = hour_of(job.e), hour_of(job.s)
        if first <= end_hour <= last:
            counted = row(job, end_hour)
            counted["finished"] += 1
            counted["wide"] += int(job.wide)
            if job.duration is not None:
                counted["timed"] += 1
                counted["duration_sum"] += job.duration
                previous = counted["duration_max"]
                counted["duration_max"] = (
                    job.duration if previous is None else max(previous, job.duration)
                )
        if first <= start_hour <= last:
            row(job, start_hour)["started"] += 1
        if job.long or not job.e > job.s:
            continue
        for hour in range(max(start_hour, first), min(math.ceil(job.e / HOUR), last + 1)):
            lo, hi = max(job.s, float(hour * HOUR)), min(job.e, float((hour + 1) * HOUR))
            if hi <= lo:
                continue
            row(job, hour)["busy_s"] += hi - lo
            for scope in SCOPES:
                key = (
                    scope,
                    hour,
                    job.target_id if scope & BY_TARGET else None,
                    job.type if scope & BY_TYPE else None,
                    job.account if scope & BY_ACCOUNT else None,
                )
                pieces[key] += ((lo, 1), (hi, -1))
    peaks = [
        {"scope": k[0], "hour": k[1], "target_id": k[2], "type": k[3], "account": k[4], "peak": p}
        for k, events in pieces.items()
        if (p := peak(events)) > 0
    ]
    return list(sums.values()), peaks


def peak(events: list[tuple[float, int]]) -> int:
    """The most intervals open at once, from their opens (+1) and closes (-1); a close sorts
    before an open at the same instant (intervals are half-open)."""
    level = best = 0
    for _, delta in sorted(events):
        level += delta
        best = max(best, level)
    return best
