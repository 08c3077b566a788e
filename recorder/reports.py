"""Reading the recorded history back: job listings, gaps, each target's health, and the polls
in quarantine (`recorder stats` has its own module, recorder.stats)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, text, union_all
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression

from recorder import overdue, targets
from recorder.dialect import Dialect
from recorder.inference import poll_offset
from recorder.models import (
    Job,
    JobOutcome,
    JobStatus,
    Lease,
    Poll,
    Quarantine,
    Target,
    UTCDateTime,
    failing_streak,
    has_status,
    latest_ok_id,
    running_jobs,
    succeeded,
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
    "service",
    "target_name",
    "outcome",
)
_DURATIONS = ("duration_s", "duration_min_s", "duration_max_s")
TABLE_COLUMNS = (
    "id",
    "type",
    "account",
    "status",
    "started_at",
    "duration",
    "bounds",
    "gap",
    "target",
    "outcome",
)


ORDERS = ("started", "ended", "duration", "id")


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs to list, and in what order."""

    status: str | None = None  # a JobStatus; None for every job
    types: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()  # names or URLs (recorder.targets)
    since: datetime | None = None  # jobs overlapping [since, until)
    until: datetime | None = None
    limit: int | None = None
    order: str = "started"  # one of ORDERS; a leading "-" sorts descending
    overdue_at: datetime | None = None  # only the running jobs overdue at this instant


def jobs(engine: Engine, query: JobQuery = JobQuery()) -> Generator[dict[str, Any], None, None]:
    """Every matching job as a dict with the JOB_FIELDS keys, streamed (close the generator
    to leave early: on PostgreSQL it reads through a server-side cursor).

    A --target or --service that names no target raises UnknownTarget here, before anything
    streams.
    """
    with engine.connect() as conn:
        chosen = _TargetFilter(
            targets.target_ids(conn, query.targets) if query.targets else None,
            targets.service_target_ids(conn, query.services) if query.services else None,
        )
        if query.overdue_at is not None:
            late = _overdue_ids(conn, query.overdue_at)
            running = replace(query, status=JobStatus.RUNNING, limit=None)
            return _only(_jobs(engine, running, chosen), late, query.limit)
    return _jobs(engine, query, chosen)


def _only(
    rows: Iterator[dict[str, Any]], keys: set[tuple[str, str]], limit: int | None
) -> Generator[dict[str, Any], None, None]:
    """The first `limit` of `rows` whose (target, id) is in `keys`."""
    kept = 0
    # Read to the end (the running jobs are few): a listing left early would leave its
    # server-side cursor open on PostgreSQL.
    for row in rows:
        if (row["target"], row["id"]) in keys and (limit is None or kept < limit):
            kept += 1
            yield row


def _overdue_ids(conn: Connection, now: datetime) -> set[tuple[str, str]]:
    """The (target URL, job id) of every job overdue at `now` (recorder.overdue)."""
    at = now.timestamp()
    urls = {row.id: row.url for row in conn.execute(select(Target.id, Target.url))}
    late = overdue.overdue(overdue.running(conn), overdue.typical_durations(conn, at), at)
    return {(urls[job.target_id], job.api_id) for job, _ in late}


def overdue_counts(conn: Connection, now: datetime) -> dict[int, int]:
    """How many jobs of each target (by id) are overdue at `now` (recorder.overdue)."""
    at = now.timestamp()
    counts: dict[int, int] = {}
    late = overdue.overdue(overdue.running(conn), overdue.typical_durations(conn, at), at)
    for job, _ in late:
        counts[job.target_id] = counts.get(job.target_id, 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class _TargetFilter:
    """The ids of the targets a listing keeps: those `named`, and those of the services (None:
    no such filter)."""

    named: list[int] | None = None
    of_services: list[int] | None = None


def _jobs(
    engine: Engine, query: JobQuery, chosen: _TargetFilter
) -> Generator[dict[str, Any], None, None]:
    sqlite = Dialect.of(engine).sqlite
    with engine.connect() as conn:
        by_start = sqlite and _fewer_started_than_ended(conn, query)
        stmt = _statement(query, sqlite=sqlite, by_start=by_start, chosen=chosen)
        result = conn.execution_options(yield_per=1000).execute(stmt)
        try:
            for row in result:
                yield _rounded(dict(row._mapping))
        finally:
            result.close()  # left early (the generator closed): the server-side cursor too


def _statement(
    query: JobQuery,
    *,
    sqlite: bool,
    by_start: bool = False,
    chosen: _TargetFilter = _TargetFilter(),
) -> Any:
    """The SELECT of `jobs`: its filters, its order and its limit.

    A job overlaps a window that starts at `since` when it is running or ended at `since` or
    later. Written as one OR, that condition keeps SQLite off every index (a scan of all the
    jobs); so the running jobs and the jobs ended since are two index ranges of their own,
    disjoint (a running job has no end), each with every other filter, and a UNION ALL of the
    two is ordered and limited as the one SELECT was: the same rows in the same order.

    SQLite has no statistics to choose an index by: the running half names the partial index of
    the running jobs (`running_jobs`), and the finished half is kept on the range
    `end_at >= since` (an equality on status would win otherwise, and read every finished
    job), or with `by_start` on `start_at < until` (see _fewer_started_than_ended).
    """
    key, descending = _ordering(query.order)
    if query.since is None:
        stmt = _filtered(_listing(), query, chosen)
        stmt = stmt.order_by(*_directed((key, Job.id), descending))
    else:
        # A half that the status filter empties is left out (but one half always remains).
        halves: list[Any] = []  # Any: mypy 2.4 crashes inferring union_all's generic type
        if query.status in (None, JobStatus.RUNNING):
            running = replace(query, status=JobStatus.RUNNING)
            halves.append(_filtered(_listing(key), running, chosen))
        if query.status != JobStatus.RUNNING:
            # On SQLite, only the chosen time range may be read along an index.
            end_at = _unindexed(Job.end_at) if sqlite and by_start else Job.end_at
            ended = _filtered(
                _listing(key),
                query,
                chosen,
                status_indexed=not sqlite,
                start_indexed=not sqlite or by_start,
            )
            halves.append(ended.where(end_at >= query.since, Job.status != JobStatus.RUNNING))
        combined: Any = halves[0] if len(halves) == 1 else union_all(*halves)
        both = combined.subquery()
        terms = (both.c.sort_key, both.c.row_id)
        if sqlite:  # sorted after the ranges are read, not read in order along another index
            terms = tuple(_unindexed(term) for term in terms)
        stmt = select(*(both.c[name] for name in JOB_FIELDS)).order_by(
            *_directed(terms, descending)
        )
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt


def _listing(key: Any = None) -> Any:
    """The JOB_FIELDS of every job, and with a sort key also that key and the job's row id
    (named sort_key and row_id, to order a UNION ALL of listings by)."""
    first, last, latest = Poll.alias(), Poll.alias(), Poll.alias()
    # Looked up only for a job that has no last poll (COALESCE stops at its first value), by an
    # index seek, rather than each target's latest poll found for every listing by a scan.
    latest_seen = (
        select(latest.received_at)
        .where(latest.target_id == Job.target_id, succeeded(latest))
        .order_by(latest.id.desc())
        .limit(1)
        .correlate(Job)
    )
    extra = () if key is None else (key.label("sort_key"), Job.id.label("row_id"))
    return (
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
            func.coalesce(last.received_at, latest_seen.scalar_subquery()).label("last_seen_at"),
            Target.url.label("target"),
            Target.service,
            Target.name.label("target_name"),
            # What the API said became of it (recorder.outcomes): null while none is known.
            JobOutcome.outcome,
            *extra,
        )
        .join(Target, Target.id == Job.target_id)
        .join(first, first.id == Job.first_poll_id)
        .outerjoin(last, last.id == Job.last_poll_id)
        .outerjoin(JobOutcome, JobOutcome.job_id == Job.id)
    )


def _filtered(
    stmt: Any,
    query: JobQuery,
    chosen: _TargetFilter = _TargetFilter(),
    *,
    status_indexed: bool = True,
    start_indexed: bool = True,
) -> Any:
    """`stmt` with every filter of `query` but `since` (see _statement), its targets and
    services `chosen`; running jobs are read through their partial index (`running_jobs`). On
    SQLite, without `status_indexed` no index may serve the status of finished jobs, without
    `start_indexed` none `until`."""
    if query.status == JobStatus.RUNNING:
        stmt = running_jobs(stmt)
    elif query.status is not None:
        column = Job.status if status_indexed else _unindexed(Job.status)
        stmt = stmt.where(has_status(JobStatus(query.status), column))
    if query.types:
        stmt = stmt.where(Job.type.in_(query.types))
    if query.accounts:
        stmt = stmt.where(Job.account.in_(query.accounts))
    for ids in (chosen.named, chosen.of_services):
        if ids is not None:
            stmt = stmt.where(Job.target_id.in_(ids))
    if query.until is not None:
        start = Job.start_at if start_indexed else _unindexed(Job.start_at)
        stmt = stmt.where(start < query.until)
    return stmt


def _unindexed(column: Any) -> Any:
    """SQLite: `column` as a term no index may serve (a unary +, its documented way)."""
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


def _fewer_started_than_ended(conn: Connection, query: JobQuery) -> bool:
    """Whether fewer jobs started before `until` than ended at `since` or later, by a guess
    that takes the history (first start to last end, two index seeks) as uniform in time.

    For SQLite, which has no statistics: a recent window is read by `end_at`, an old one by
    `start_at`, rather than either one reading nearly every job.
    """
    if query.since is None or query.until is None:
        return False
    first, last = conn.execute(
        select(
            select(func.min(Job.start_at)).scalar_subquery(),
            select(func.max(Job.end_at)).scalar_subquery(),
        )
    ).one()
    if first is None or last is None:
        return False
    return bool(query.until - first < last - query.since)


def _ordering(order: str) -> tuple[Any, bool]:
    """The column that `order` sorts by, and whether descending."""
    name = order.removeprefix("-")
    column = {
        "started": Job.start_at,
        "ended": Job.end_at,
        "duration": Job.duration_s,
        "id": Job.api_id,
    }.get(name)
    if column is None:
        raise ValueError(f"cannot order by {name!r}; choose from {', '.join(ORDERS)}")
    return column, order.startswith("-")


def _directed(columns: tuple[Any, ...], descending: bool) -> tuple[Any, ...]:
    """The ORDER BY terms: `columns`, each descending or each ascending (ties by row id)."""
    return tuple(column.desc() for column in columns) if descending else columns


GAP_FIELDS = ("target", "started_at", "ended_at", "duration_s", "failed_polls", "ongoing")


def gaps(
    engine: Engine, since: datetime, until: datetime, target: str | None = None
) -> Iterator[dict[str, Any]]:
    """The periods with no successful poll (view poll_gaps) that overlap [since, until), of
    every target or of the one `target` names (a name or a URL: UnknownTarget if none, raised
    here, before anything streams)."""
    name = None
    if target is not None:
        with engine.connect() as conn:
            name = conn.scalar(
                select(Target.name).where(Target.id == targets.target_id(conn, target))
            )
    return _gaps(engine, since, until, name)


# Above this many finished jobs in the window, the longest are found along the finished jobs'
# (type, duration_s) index, from the longest down; below, the window's jobs are sorted.
LONGEST_BY_INDEX_ABOVE = 50_000
_DURATION_INDEX = "ix_jobs_finished_type_duration"


def longest(
    engine: Engine,
    since: datetime,
    until: datetime,
    *,
    target: str | None = None,
    limit: int = 10,
    finished: int = 0,
) -> list[dict[str, Any]]:
    """The `limit` longest finished jobs (with a duration) that ended in [since, until), of
    every target or of `target`, longest first (then the later recorded), as `jobs` lists them.

    `finished` (how many jobs ended in the window) decides how to find them: a few are read
    along end_at and sorted; many, along each type's range of the (type, duration_s) index
    from the longest down until `limit` of them ended in the window, so that a report over
    years never sorts every job.
    """
    d = Dialect.of(engine)
    with engine.connect() as conn:
        target_id = targets.target_id(conn, target) if target is not None else None
        only = "" if target_id is None else " AND j.target_id = :target_id"
        params: dict[str, Any] = {"target_id": target_id, "n": limit}
        window = (
            f"j.status = '{JobStatus.FINISHED}' AND j.duration_s IS NOT NULL"
            f" AND j.end_at >= :since AND j.end_at < :until{only}"
        )
        times = (
            bindparam("since", since, type_=UTCDateTime()),
            bindparam("until", until, type_=UTCDateTime()),
        )
        found: list[tuple[float, int]] = []
        if finished <= LONGEST_BY_INDEX_ABOVE:
            sql = f"""SELECT j.duration_s, j.id FROM jobs j WHERE {window}
                      ORDER BY j.duration_s DESC, j.id DESC LIMIT :n"""
            found = [(r[0], r[1]) for r in conn.execute(text(sql).bindparams(*times), params)]
        else:
            for kind in _finished_types(conn):
                same = "j.type IS NULL" if kind is None else "j.type = :kind"
                sql = f"""SELECT j.duration_s, j.id FROM jobs j{d.indexed_by(_DURATION_INDEX)}
                          WHERE {same} AND {window}
                          ORDER BY j.duration_s DESC, j.id DESC LIMIT :n"""
                rows = conn.execute(text(sql).bindparams(*times), {**params, "kind": kind})
                found += [(r[0], r[1]) for r in rows]
        ids = [job_id for _, job_id in sorted(found, reverse=True)[:limit]]
        if not ids:
            return []
        rank = {job_id: i for i, job_id in enumerate(ids)}
        listed = [
            _rounded(dict(row._mapping))
            for row in conn.execute(_listing(Job.id).where(Job.id.in_(ids)))
        ]
    listed.sort(key=lambda job: rank[job.pop("row_id")])
    for job in listed:
        job.pop("sort_key")
    return listed


def _finished_types(conn: Connection) -> list[str | None]:
    """The types of the finished jobs: a skip along their (type, duration_s) index, one seek
    per type (and one for jobs without a type), not a read of every job."""
    finished = f"status = '{JobStatus.FINISHED}'"
    kinds: list[str | None] = list(
        conn.scalars(
            text(f"""
                WITH RECURSIVE kinds(t) AS (
                    SELECT MIN(type) FROM jobs WHERE {finished}
                    UNION ALL
                    SELECT (SELECT MIN(type) FROM jobs WHERE {finished} AND type > kinds.t)
                    FROM kinds WHERE kinds.t IS NOT NULL
                )
                SELECT t FROM kinds WHERE t IS NOT NULL
            """)
        )
    )
    if conn.scalar(text(f"SELECT 1 FROM jobs WHERE {finished} AND type IS NULL LIMIT 1")):
        kinds.append(None)
    return kinds


def _rounded(job: dict[str, Any]) -> dict[str, Any]:
    for key in _DURATIONS:
        if job[key] is not None:  # stored exactly; a millisecond is all that matters
            job[key] = round(job[key], 3)
    return job


def polled_span(
    engine: Engine, since: datetime, until: datetime, target: str | None = None
) -> tuple[datetime, datetime] | None:
    """The first and the last successful poll sent in [since, until), of every target or of
    `target`; None when there is none. Each target's are found along (target_id, sent_at)."""
    found: list[datetime] = []
    with engine.connect() as conn:
        ids = (
            [targets.target_id(conn, target)]
            if target is not None
            else list(conn.scalars(select(Target.id)))
        )
        for target_id in ids:
            window = select(Poll.sent_at).where(
                Poll.target_id == target_id,
                Poll.sent_at >= since,
                Poll.sent_at < until,
                succeeded(),
            )
            for order in (Poll.sent_at.asc(), Poll.sent_at.desc()):
                sent = conn.scalar(window.order_by(order).limit(1))
                if sent is not None:
                    found.append(sent)
    return (min(found), max(found)) if found else None


def _gaps(
    engine: Engine, since: datetime, until: datetime, name: str | None
) -> Iterator[dict[str, Any]]:
    dialect = Dialect.of(engine)
    bounds = {"since": dialect.view_time(since), "until": dialect.view_time(until)}
    sql = (
        "SELECT target, started_at, ended_at, duration_s, failed_polls, ongoing FROM poll_gaps "
        "WHERE started_at < :until AND ended_at > :since"
        + (" AND target_name = :name" if name is not None else "")
        + " ORDER BY started_at, target"
    )
    with engine.connect() as conn:
        for row in conn.execute(text(sql), {**bounds, "name": name}):
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
        "target": job["target_name"],
        "outcome": job.get("outcome") or "",
    }


STATUS_FIELDS = (
    "target",
    "name",
    "service",
    "healthy",
    "last_poll_at",
    "last_outcome",
    "last_error",
    "last_ok_at",
    "last_ok_age_s",
    "failing_polls",
    "quarantined",
    "running_jobs",
    "overdue",
    "clock_offset_s",
    "recorded_by",
)
# What the table shows of each target: one line a person reads at a glance.
STATUS_TABLE_COLUMNS = (
    "target",
    "service",
    "healthy",
    "last_ok",
    "failing_polls",
    "running_jobs",
    "overdue",
    "clock_offset",
    "quarantined",
    "recorded_by",
    "last_error",
)


def status(engine: Engine, now: datetime, max_age_s: float) -> list[dict[str, Any]]:
    """Each target's health: its latest poll, its failure streak, who records it.

    A target is healthy when its latest poll succeeded and is at most `max_age_s` old, and no
    poll of it waits in quarantine (`recorder quarantine` shows them and, once read, clears
    them). `last_error` is the latest poll's error: a failure since the latest successful
    poll, none once a poll succeeds again. `overdue` counts its running jobs that are overdue
    (recorder.overdue). `clock_offset_s` is the server clock's skew that its latest
    successful poll implies (recorder.inference.poll_offset, as the daemon's metrics say).
    """
    rows = []
    with engine.connect() as conn:
        late = overdue_counts(conn, now)
        query = select(Target.id, Target.url, Target.name, Target.service).order_by(Target.url)
        for target in conn.execute(query):
            last = conn.execute(
                select(Poll.id, Poll.sent_at, Poll.outcome, Poll.error)
                .where(Poll.target_id == target.id)
                .order_by(Poll.id.desc())
                .limit(1)
            ).first()
            last_ok = conn.execute(
                select(Poll.sent_at, Poll.received_at, Poll.server_time).where(
                    Poll.id == latest_ok_id(target.id)
                )
            ).first()
            failing = conn.scalar(select(failing_streak(target.id)))
            running = conn.scalar(
                running_jobs(
                    select(func.count()).select_from(Job).where(Job.target_id == target.id)
                )
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
                    "name": target.name,
                    "service": target.service,
                    "healthy": bool(
                        fresh
                        and last is not None
                        and last.outcome == Outcome.OK
                        and not quarantined
                    ),
                    "last_poll_at": last.sent_at if last else None,
                    "last_outcome": last.outcome if last else None,
                    "last_error": last.error if last else None,
                    "last_ok_at": last_ok.sent_at if last_ok else None,
                    "last_ok_age_s": _age(now, last_ok.sent_at) if last_ok else None,
                    "failing_polls": failing or 0,
                    "quarantined": quarantined or 0,
                    "running_jobs": running or 0,
                    "overdue": late.get(target.id, 0),
                    "clock_offset_s": _offset(last_ok),
                    "recorded_by": holder,
                }
            )
    return rows


def _age(now: datetime, then: datetime) -> float:
    """Seconds from `then` to `now`, to the millisecond (never below 0: a clock step back)."""
    return round(max(0.0, (now - then).total_seconds()), 3)


def _offset(last_ok: Any) -> float | None:
    """The skew a poll row (sent_at, received_at, server_time) implies, to the millisecond."""
    if last_ok is None or last_ok.server_time is None:
        return None
    sent, received = last_ok.sent_at.timestamp(), last_ok.received_at.timestamp()
    return round(poll_offset(sent, received, last_ok.server_time), 3)


def status_table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A target's status as the table shows it (STATUS_TABLE_COLUMNS)."""
    age, offset = row["last_ok_age_s"], row["clock_offset_s"]
    return {
        "target": row["name"],
        "service": row["service"],
        "healthy": row["healthy"],
        "last_ok": "never" if age is None else f"{human_duration(age)} ago",
        "failing_polls": row["failing_polls"],
        "running_jobs": row["running_jobs"],
        "overdue": row["overdue"],
        # + 0.0: a -0.04 s offset shows as +0.0s, not -0.0s
        "clock_offset": "" if offset is None else f"{round(offset, 1) + 0.0:+.1f}s",
        "quarantined": row["quarantined"],
        "recorded_by": row["recorded_by"],
        "last_error": row["last_error"],
    }


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
