"""Reading the recorded history back: job listings, gaps, each target's health, and the polls
in quarantine (`recorder stats` has its own module, recorder.stats)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, or_, select, text
from sqlalchemy.orm import aliased

from recorder.dialect import Dialect
from recorder.models import (
    Job,
    JobStatus,
    Lease,
    Poll,
    Quarantine,
    Target,
    failing_streak,
    latest_ok_id,
    latest_ok_per_target,
)
from recorder.output import human_duration
from recorder.snapshot import Outcome

# The JSON contract of `recorder jobs`: scripts rely on these names.
JOB_FIELDS = (
    "id",
    "type",
    "account",
    "user_id",
    "status",
    "started_at",
    "start_min",
    "start_max",
    "start_source",
    "ended_at",
    "end_min",
    "end_max",
    "duration_s",
    "duration_min_s",
    "duration_max_s",
    "closed_across_gap",
    "first_seen_at",
    "last_seen_at",
    "target",
)
_DURATIONS = ("duration_s", "duration_min_s", "duration_max_s")
TABLE_COLUMNS = ("id", "type", "account", "status", "started_at", "duration", "bounds", "gap")


ORDERS = ("started", "ended", "duration", "id")


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs to list, and in what order."""

    status: str | None = None  # a JobStatus; None for every job
    types: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    since: datetime | None = None  # jobs overlapping [since, until)
    until: datetime | None = None
    limit: int | None = None
    order: str = "started"  # one of ORDERS; a leading "-" sorts descending


def jobs(engine: Engine, query: JobQuery = JobQuery()) -> Iterator[dict[str, Any]]:
    """Every matching job as a dict with the JOB_FIELDS keys, streamed."""
    first, last, latest = aliased(Poll), aliased(Poll), aliased(Poll)
    latest_ok = latest_ok_per_target()
    stmt = (
        select(
            Job.api_id.label("id"),
            Job.type,
            Job.account,
            Job.user_id,
            Job.status,
            Job.start_at.label("started_at"),
            Job.start_min,
            Job.start_max,
            Job.start_source,
            Job.end_at.label("ended_at"),
            Job.end_min,
            Job.end_max,
            Job.duration_s,
            Job.duration_min_s,
            Job.duration_max_s,
            Job.closed_across_gap,
            first.received_at.label("first_seen_at"),
            # While a job runs, the last poll that listed it is the latest successful one.
            func.coalesce(last.received_at, latest.received_at).label("last_seen_at"),
            Target.url.label("target"),
        )
        .join(Target, Target.id == Job.target_id)
        .join(first, first.id == Job.first_poll_id)
        .outerjoin(last, last.id == Job.last_poll_id)
        .outerjoin(latest_ok, latest_ok.c.target_id == Job.target_id)
        .outerjoin(latest, latest.id == latest_ok.c.poll_id)
    )
    stmt = _filtered(stmt, query).order_by(*_ordering(query.order))
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=1000).execute(stmt):
            job = dict(row._mapping)
            for key in _DURATIONS:
                if job[key] is not None:  # stored exactly; a millisecond is all that is meaningful
                    job[key] = round(job[key], 3)
            yield job


def _filtered(stmt: Any, query: JobQuery) -> Any:
    if query.status is not None:
        stmt = stmt.where(Job.status == query.status)
    if query.types:
        stmt = stmt.where(Job.type.in_(query.types))
    if query.accounts:
        stmt = stmt.where(Job.account.in_(query.accounts))
    if query.until is not None:
        stmt = stmt.where(Job.start_at < query.until)
    if query.since is not None:
        stmt = stmt.where(or_(Job.status == JobStatus.RUNNING, Job.end_at >= query.since))
    return stmt


def _ordering(order: str) -> tuple[Any, ...]:
    name = order.removeprefix("-")
    column = {
        "started": Job.start_at,
        "ended": Job.end_at,
        "duration": Job.duration_s,
        "id": Job.api_id,
    }.get(name)
    if column is None:
        raise ValueError(f"cannot order by {name!r}; choose from {', '.join(ORDERS)}")
    if order.startswith("-"):
        return (column.desc(), Job.id.desc())
    return (column, Job.id)


GAP_FIELDS = ("target", "started_at", "ended_at", "duration_s", "failed_polls", "ongoing")


def gaps(
    engine: Engine, since: datetime, until: datetime, target: str | None = None
) -> Iterator[dict[str, Any]]:
    """The periods with no successful poll (view poll_gaps) that overlap [since, until)."""
    dialect = Dialect.of(engine)
    bounds = {"since": dialect.view_time(since), "until": dialect.view_time(until)}
    sql = (
        "SELECT target, started_at, ended_at, duration_s, failed_polls, ongoing FROM poll_gaps "
        "WHERE started_at < :until AND ended_at > :since"
        + (" AND target = :target" if target is not None else "")
        + " ORDER BY started_at, target"
    )
    with engine.connect() as conn:
        for row in conn.execute(text(sql), {**bounds, "target": target}):
            gap = dict(row._mapping)
            gap["started_at"] = dialect.from_view_time(gap["started_at"])
            gap["ended_at"] = dialect.from_view_time(gap["ended_at"])
            gap["ongoing"] = bool(gap["ongoing"])  # 0/1 on SQLite
            gap["duration_s"] = round(gap["duration_s"], 3)
            yield gap


def table_row(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the human-readable table shows it."""
    low, high = job["duration_min_s"], job["duration_max_s"]
    bounds = ""
    if job["status"] == JobStatus.FINISHED:
        bounds = f"{human_duration(low)}..{human_duration(high) if high is not None else '?'}"
    return {
        "id": job["id"],
        "type": job["type"] or "",
        "account": job["account"] or "",
        "status": job["status"],
        "started_at": job["started_at"],
        "duration": human_duration(job["duration_s"]),
        "bounds": bounds,
        "gap": "yes" if job["closed_across_gap"] else "",
    }


STATUS_FIELDS = (
    "target",
    "healthy",
    "last_poll_at",
    "last_outcome",
    "last_error",
    "last_ok_at",
    "failing_polls",
    "quarantined",
    "running_jobs",
    "recorded_by",
)


def status(engine: Engine, now: datetime, max_age_s: float) -> list[dict[str, Any]]:
    """Each target's health: its latest poll, its failure streak, who records it.

    A target is healthy when its latest poll succeeded and is at most `max_age_s` old, and no
    poll of it waits in quarantine (`recorder quarantine` shows them and, once read, clears
    them).
    """
    rows = []
    with engine.connect() as conn:
        for target in conn.execute(select(Target.id, Target.url).order_by(Target.url)):
            last = conn.execute(
                select(Poll.id, Poll.sent_at, Poll.outcome, Poll.error)
                .where(Poll.target_id == target.id)
                .order_by(Poll.id.desc())
                .limit(1)
            ).first()
            last_ok_at = conn.scalar(select(Poll.sent_at).where(Poll.id == latest_ok_id(target.id)))
            failing = conn.scalar(select(failing_streak(target.id)))
            running = conn.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.target_id == target.id, Job.status == JobStatus.RUNNING)
            )
            holder = conn.scalar(select(Lease.holder).where(Lease.target_id == target.id))
            quarantined = conn.scalar(
                select(func.count())
                .select_from(Quarantine)
                .where(Quarantine.target_id == target.id)
            )
            fresh = last is not None and (now - last.sent_at).total_seconds() <= max_age_s
            rows.append(
                {
                    "target": target.url,
                    "healthy": bool(
                        fresh
                        and last is not None
                        and last.outcome == Outcome.OK
                        and not quarantined
                    ),
                    "last_poll_at": last.sent_at if last else None,
                    "last_outcome": last.outcome if last else None,
                    "last_error": last.error if last else None,
                    "last_ok_at": last_ok_at,
                    "failing_polls": failing or 0,
                    "quarantined": quarantined or 0,
                    "running_jobs": running or 0,
                    "recorded_by": holder,
                }
            )
    return rows


QUARANTINE_FIELDS = ("id", "target", "poll_id", "set_aside_at", "error", "payload")


def quarantine(engine: Engine) -> list[dict[str, Any]]:
    """The polls set aside because the database would not take them, oldest first."""
    stmt = (
        select(
            Quarantine.id,
            Target.url.label("target"),
            Quarantine.poll_id,
            Quarantine.set_aside_at,
            Quarantine.error,
            Quarantine.payload,
        )
        .join(Target, Target.id == Quarantine.target_id)
        .order_by(Quarantine.id)
    )
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]
