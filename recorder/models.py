"""The database schema: SQLAlchemy 2 models, the single source the migrations are checked against.

Tables (see docs/schema.md):

* ``targets``: each polled URL; several targets share one database.
* ``polls``: one row per poll, successful or not. A poll that changed nothing writes only this.
* ``jobs``: one row per job id and target, with its inferred start, end and duration.
* ``transitions``: appeared / vanished / reappeared, each with the poll that saw it.
* ``leases``: which recorder process holds the right to record a target.
* ``observations``: what the list said about a job, written when it first appears and whenever
  it shows something the stored state does not predict; with ``polls.server_time`` and the
  transitions, every past list can be rebuilt exactly.
* ``quarantine``: a poll the database would not take although it took others, kept whole;
  the history counts it as a failed poll (outcome ``unstorable``).
* ``rollup_hours`` and ``rollup_peaks``: the finished jobs summed per hour (recorder.rollups),
  kept in step with ``jobs`` by the transaction that changes a job, so that reports over long
  windows read an hour's figures instead of its jobs.

Beside the tables are the facts about their rows that every query shares, each written once: a
job's status values (`JobStatus`) and how a query tests one (`has_status`, which the partial
indexes need), how a query reads the running jobs (`running_jobs`, through their partial
index), a transition's kinds (`TransitionKind`), what a successful poll is (`succeeded`), which
poll is a target's latest successful one (`latest_ok_id`, `latest_ok_per_target`) and how many
polls have failed since (`failing_streak`). The hand-written report SQL gets the successful
poll and the latest one as text (`ok_sql`, `latest_ok_sql`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    literal,
    select,
    text,
)
from sqlalchemy import Dialect as SQLAlchemyDialect
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column
from sqlalchemy.sql.selectable import ScalarSelect, Select, Subquery
from sqlalchemy.types import TypeEngine

from recorder.clock import to_datetime
from recorder.dialect import Dialect, indexed_by_hint
from recorder.snapshot import Outcome

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A finished job whose interval is longer than a day stays out of the concurrency rollups (one
# bad start time must not write a row per hour since 1970); reports find these few jobs by a
# partial index and compute the hours they span exactly.
LONG_JOB_S = 86400
LONG_JOB_SQLITE = f"status = 'finished' AND end_at - start_at > {LONG_JOB_S}"
LONG_JOB_POSTGRESQL = f"status = 'finished' AND end_at - start_at > interval '{LONG_JOB_S} seconds'"

# The partial index of the running jobs, which queries on them name (SQLite's INDEXED BY).
RUNNING_INDEX = "ix_jobs_running"

# SQLite only makes an INTEGER PRIMARY KEY an alias of the rowid (cheap and auto-increment).
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` on PostgreSQL, epoch seconds (REAL) on SQLite.

    On SQLite a REAL sorts and compares correctly, is 8 bytes, keeps sub-microsecond precision,
    and makes time arithmetic in SQL plain subtraction. Values always come back timezone-aware
    in UTC; a naive datetime is refused, since its zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: SQLAlchemyDialect) -> TypeEngine[Any]:
        """REAL on SQLite, timestamptz elsewhere."""
        if Dialect.of(dialect).sqlite:
            return dialect.type_descriptor(Double())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: SQLAlchemyDialect) -> Any:
        """Epoch seconds on SQLite, an aware UTC datetime elsewhere."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if Dialect.of(dialect).sqlite:
            return value.timestamp()
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: SQLAlchemyDialect) -> datetime | None:
        """An aware UTC datetime."""
        if value is None:
            return None
        if isinstance(value, int | float):
            return to_datetime(value)
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    """Declarative base whose constraints have the same names on every backend."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobStatus(StrEnum):
    """A job's ``status``: still listed by its target's successful polls, or no longer."""

    RUNNING = "running"
    FINISHED = "finished"


class TransitionKind(StrEnum):
    """A transition's ``kind``: a job's listing changed at a successful poll."""

    APPEARED = "appeared"  # listed for the first time
    VANISHED = "vanished"  # no longer listed: it finished
    REAPPEARED = "reappeared"  # listed again after it vanished: the close was wrong, it runs on


class Target(Base):
    """A polled URL."""

    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Poll(Base):
    """One request to a target and how it ended."""

    __tablename__ = "polls"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id"))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    latency_s: Mapped[float] = mapped_column(Double)
    outcome: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(SmallInteger)
    item_count: Mapped[int | None] = mapped_column(Integer)
    # Values the parser dropped (unparseable fields, items without an id, merged duplicates).
    dropped_values: Mapped[int | None] = mapped_column(Integer)
    # The server's clock when it took the list (epoch seconds): predicts every `elapsed`.
    server_time: Mapped[float | None] = mapped_column(Double)
    # A successful poll that follows failed polls, or a silence longer than the gap threshold:
    # the time since the previous successful poll is a gap in the record (view poll_gaps).
    after_gap: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_polls_target_sent", "target_id", "sent_at"),
        Index("ix_polls_target_outcome_id", "target_id", "outcome", "id"),
        # Gaps are rare: a partial index finds them without scanning every poll.
        Index(
            "ix_polls_gaps",
            "target_id",
            "id",
            sqlite_where=text("after_gap"),
            postgresql_where=text("after_gap"),
        ),
    )


class Job(Base):
    """One job of one target: what it is and when it ran, as inferred."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id"))
    api_id: Mapped[str] = mapped_column(String)
    type: Mapped[str | None] = mapped_column(String)
    account: Mapped[str | None] = mapped_column(String)
    user_id: Mapped[str | None] = mapped_column(String)
    reply_url: Mapped[str | None] = mapped_column(Text)
    reply_ref: Mapped[str | None] = mapped_column(Text)
    started_raw: Mapped[str | None] = mapped_column(String)
    elapsed_origin: Mapped[float | None] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(8))  # a JobStatus
    first_poll_id: Mapped[int] = mapped_column(ForeignKey("polls.id"))
    last_poll_id: Mapped[int | None] = mapped_column(ForeignKey("polls.id"))
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    start_min: Mapped[datetime | None] = mapped_column(UTCDateTime)
    start_max: Mapped[datetime | None] = mapped_column(UTCDateTime)
    start_source: Mapped[str] = mapped_column(String(8))
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_min: Mapped[datetime | None] = mapped_column(UTCDateTime)
    end_max: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_s: Mapped[float | None] = mapped_column(Double)
    duration_min_s: Mapped[float | None] = mapped_column(Double)
    duration_max_s: Mapped[float | None] = mapped_column(Double)
    closed_across_gap: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        UniqueConstraint("target_id", "api_id", name="uq_jobs_target_api_id"),
        # Partial: an entry per running job (a restarted daemon loads them; reports count
        # them), none for the finished ones that are nearly every row. A query uses it only if
        # its SQL says `status = 'running'` as a literal (see `has_status`).
        Index(
            RUNNING_INDEX,
            "target_id",
            sqlite_where=text(f"status = '{JobStatus.RUNNING}'"),
            postgresql_where=text(f"status = '{JobStatus.RUNNING}'"),
        ),
        Index("ix_jobs_start_at", "start_at"),
        Index("ix_jobs_end_at", "end_at"),
        # Every poll a job refers to is indexed: prune's checks, and the foreign-key checks of
        # deleting a poll, would otherwise scan the jobs.
        Index("ix_jobs_first_poll", "first_poll_id"),
        Index("ix_jobs_last_poll", "last_poll_id"),
        # The percentiles' index seeks (recorder.stats), which read only this index: the
        # condition on status is the index's own, stored in no entry (SQLite 3.42 and older do
        # not call the index covering, but never make the row look-up they defer). Queries on
        # running jobs read ix_jobs_running (`running_jobs`), never an index by status.
        Index(
            "ix_jobs_finished_type_duration",
            "type",
            "duration_s",
            sqlite_where=text(f"status = '{JobStatus.FINISHED}'"),
            postgresql_where=text(f"status = '{JobStatus.FINISHED}'"),
        ),
        # The few finished jobs too long for the concurrency rollups (recorder.rollups).
        Index(
            "ix_jobs_long",
            "end_at",
            sqlite_where=text(LONG_JOB_SQLITE),
            postgresql_where=text(LONG_JOB_POSTGRESQL),
        ),
    )


class Lease(Base):
    """Which recorder holds the right to record a target (one writer per target)."""

    __tablename__ = "leases"

    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id"), primary_key=True)
    holder: Mapped[str] = mapped_column(String)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Last sign of life besides the holder's poll rows (written only during long backoffs).
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Silence after which another recorder may take the target over.
    ttl_s: Mapped[float] = mapped_column(Double)


class Transition(Base):
    """A job appearing, vanishing or reappearing, at the poll that saw it.

    A poll changes a job's listing at most once, so the job and the poll are the key. On
    SQLite the table is that key's B-tree itself (WITHOUT ROWID): no rowid, and no second copy
    of the key in an index.
    """

    __tablename__ = "transitions"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    poll_id: Mapped[int] = mapped_column(ForeignKey("polls.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(12))  # a TransitionKind

    __table_args__ = (Index("ix_transitions_poll", "poll_id"), {"sqlite_with_rowid": False})


class Observation(Base):
    """What a poll's list said about a job, when the stored state did not predict it."""

    __tablename__ = "observations"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    poll_id: Mapped[int] = mapped_column(ForeignKey("polls.id"))
    type: Mapped[str | None] = mapped_column(String)
    started_raw: Mapped[str | None] = mapped_column(String)
    reply_url: Mapped[str | None] = mapped_column(Text)
    reply_ref: Mapped[str | None] = mapped_column(Text)
    elapsed_s: Mapped[int | None] = mapped_column(Integer)
    elapsed_origin: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        # A job's observations (one, or a few): the latest at or before a poll is picked from
        # them, so the index needs no poll_id (migration 0008).
        Index("ix_observations_job", "job_id"),
        Index("ix_observations_poll", "poll_id"),
    )


class Quarantine(Base):
    """A poll that could not be stored, kept whole as JSON; the polls row stands in for it."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id"))
    poll_id: Mapped[int] = mapped_column(ForeignKey("polls.id"))
    set_aside_at: Mapped[datetime] = mapped_column(UTCDateTime)
    error: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_quarantine_target", "target_id"),)


class RollupHour(Base):
    """The finished jobs of one target, type and account, summed over one UTC hour."""

    __tablename__ = "rollup_hours"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    hour: Mapped[int] = mapped_column(Integer)  # floor(epoch seconds / 3600)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id"))
    type: Mapped[str | None] = mapped_column(String)
    account: Mapped[str | None] = mapped_column(String)
    finished: Mapped[int] = mapped_column(Integer)  # jobs that ended in the hour
    timed: Mapped[int] = mapped_column(Integer)  # of those, with a known duration
    duration_sum: Mapped[float] = mapped_column(Double)
    duration_max: Mapped[float | None] = mapped_column(Double)
    wide: Mapped[int] = mapped_column(Integer)  # of those, closed across a gap
    started: Mapped[int] = mapped_column(Integer)  # finished jobs that started in the hour
    busy_s: Mapped[float] = mapped_column(Double)  # their intervals' time within the hour

    __table_args__ = (Index("ix_rollup_hours_hour", "hour"),)


class RollupPeak(Base):
    """The most finished jobs in flight at once in one UTC hour, for one grouping's group.

    `scope` says which of target, type and account the group is by (bits 1, 2, 4); the other
    key columns are then null. A peak of a union is not the sum of its parts' peaks, so each
    grouping the reports offer has its own rows.
    """

    __tablename__ = "rollup_peaks"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scope: Mapped[int] = mapped_column(SmallInteger)
    hour: Mapped[int] = mapped_column(Integer)
    target_id: Mapped[int | None] = mapped_column(ForeignKey("targets.id"))
    type: Mapped[str | None] = mapped_column(String)
    account: Mapped[str | None] = mapped_column(String)
    peak: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_rollup_peaks_scope_hour", "scope", "hour"),)


# Which polls count, as SQLAlchemy expressions and, for the hand-written report SQL, as text.


def succeeded(poll: type[Poll] = Poll) -> ColumnElement[bool]:
    """SQL: the poll produced a list."""
    return poll.outcome == Outcome.OK


def latest_ok_id(target_id: Any, *, before: Any = None) -> ScalarSelect[int | None]:
    """SQL: the id of the target's latest successful poll (the latest before poll id `before`).

    `target_id` and `before` are values or SQL expressions (correlated with the outer query).
    """
    ok = aliased(Poll)
    query = select(func.max(ok.id)).where(ok.target_id == target_id, succeeded(ok))
    if before is not None:
        query = query.where(ok.id < before)
    return query.scalar_subquery()


def latest_ok_per_target() -> Subquery:
    """SQL: each target's latest successful poll, as rows (target_id, poll_id)."""
    return (
        select(Poll.target_id, func.max(Poll.id).label("poll_id"))
        .where(succeeded())
        .group_by(Poll.target_id)
        .subquery()
    )


def failing_streak(target_id: Any) -> ScalarSelect[int]:
    """SQL: how many polls of the target came after its latest successful one (all failed)."""
    poll = aliased(Poll)
    return (
        select(func.count())
        .select_from(poll)
        .where(poll.target_id == target_id, poll.id > func.coalesce(latest_ok_id(target_id), 0))
        .scalar_subquery()
    )


def has_status(status: JobStatus, column: Any = None) -> ColumnElement[bool]:
    """SQL: the job's status (`column`, by default ``jobs.status``) is `status`, written into the
    SQL as a literal.

    The indexes of the running jobs and of the finished ones' durations are partial (``WHERE
    status = 'running'``, ``'finished'``), and a planner uses a partial index only for a query
    whose WHERE implies the index's: PostgreSQL cannot tell that from a bound parameter in a
    generic plan, and SQLite re-prepares the statement for every value bound to find out.
    """
    return (Job.status if column is None else column) == literal(status.value, literal_execute=True)


def running_jobs(stmt: Select[Any]) -> Select[Any]:
    """`stmt`, a SELECT from jobs, narrowed to the running jobs and reading them through their
    partial index.

    Its SQL says ``status = 'running'`` literally (`has_status`), and on SQLite names the index
    (``INDEXED BY``, as `Dialect.indexed_by` does in hand-written SQL): SQLite plans without
    statistics, and would otherwise read the few running jobs along start_at, or the unique
    index, through every job. PostgreSQL chooses the partial index by its statistics.
    """
    hint = indexed_by_hint(RUNNING_INDEX)
    return stmt.where(has_status(JobStatus.RUNNING)).with_hint(Job, hint, "sqlite")


def ok_sql(poll: str) -> str:
    """SQL text, succeeded() for hand-written queries: the poll aliased `poll` produced a list."""
    return f"{poll}.outcome = '{Outcome.OK}'"


def latest_ok_sql(target_id: str, *, before: str | None = None) -> str:
    """SQL text, latest_ok_id() for hand-written queries; the arguments are SQL expressions."""
    earlier = "" if before is None else f" AND q.id < {before}"
    return (
        f"(SELECT MAX(q.id) FROM polls q WHERE q.target_id = {target_id} AND {ok_sql('q')}"
        f"{earlier})"
    )
