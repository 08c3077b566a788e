"""The database schema in SQLAlchemy Core: the single source the migrations are checked against.

Tables (see docs/schema.md):

* ``targets``: each polled URL, with its name and service; several targets share one database.
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
* ``capacity``: each account's maxJobs / executing / available from /scheduler/available, one
  row per run of unchanged values (recorder.capacity reads it, Store.record_capacity writes it).
* ``outcomes``: what the API said became of a finished job (completed, failed, moderated, or
  unknown), asked after it vanished; one row per job asked, pending until final
  (recorder.outcomes).

Beside the tables are the facts about their rows that every query shares, each written once: a
job's status values (`JobStatus`) and how a query tests one (`has_status`, which the partial
indexes need), how a query reads the running jobs (`running_jobs`, through their partial
index), a transition's kinds (`TransitionKind`), what a successful poll is (`succeeded`), which
poll is a target's latest successful one (`latest_ok_id`, `latest_ok_per_target`) and how many
polls have failed since (`failing_streak`). The hand-written report SQL gets the successful
poll and the latest one as text (`ok_sql`, `latest_ok_sql`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Self

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Connection,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy import Dialect as SQLAlchemyDialect
from sqlalchemy.sql.selectable import FromClause, ScalarSelect, Select, Subquery
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
# Duration histogram bin edges in seconds: roughly 1-2-5 steps, readable for seconds to hours.
# Bin i holds [edge i, edge i + 1); the last, the edge 7200 and above (and a null duration).
HISTOGRAM_EDGES = (0, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
BIN_COLUMNS = tuple(f"bin_{index:02d}" for index in range(len(HISTOGRAM_EDGES)))
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


class Base:
    """A table declared as a class, as the ORM's declarative classes were, in SQLAlchemy Core.

    The recorder runs every query as Core on a Connection and needs no ORM; importing it would
    cost every report's start-up more than its query. A subclass names its table
    (``__tablename__``), declares each column as an attribute that gives the column its name,
    and lists its indexes and constraints in ``__table_args__`` (a trailing dict: table
    options); its docstring says what one row is. Its one instance (`Job` of `JobTable`) is
    what queries use: its attributes are the columns (``Job.end_at``), ``__table__`` is the
    `Table`, and SQLAlchemy takes it wherever it takes a table (``insert(Job)``,
    ``select_from(Job)``, ``with_hint(Job, ...)``) through ``__clause_element__``. `alias()`
    gives the same over an alias of the table, for a query that reads the table twice.

    `metadata` holds every table, with constraints named alike on every backend.
    """

    metadata: ClassVar[MetaData] = MetaData(naming_convention=NAMING_CONVENTION)
    __tablename__: ClassVar[str]
    __table_args__: ClassVar[tuple[Any, ...]] = ()
    __table__: ClassVar[Table]

    def __init_subclass__(cls) -> None:
        columns = []
        for name, value in vars(cls).items():
            if isinstance(value, Column):
                value.name = name  # as declarative did: the attribute names the column
                columns.append(value)
        args = cls.__table_args__
        options = args[-1] if args and isinstance(args[-1], dict) else {}
        items = args[:-1] if options else args
        cls.__table__ = Table(cls.__tablename__, cls.metadata, *columns, *items, **options)
        event.listen(cls.__table__, "before_create", _postgresql_conditions)

    def __init__(self, alias: FromClause | None = None) -> None:
        self._from: FromClause = self.__table__ if alias is None else alias
        if alias is not None:  # the alias's columns hide the table's (class attributes)
            for column in alias.c:
                setattr(self, column.key, column)

    def __clause_element__(self) -> Any:
        """What SQLAlchemy reads this as: the table, or the alias.

        Typed Any: SQLAlchemy's annotations admit a ``__clause_element__`` that gives a column
        expression only, though its coercions take a table from one too.
        """
        return self._from

    def alias(self) -> Self:
        """The table under another name in a query (``polls AS polls_1``), as an object of
        the same kind: its attributes are the alias's columns."""
        return type(self)(self.__table__.alias())


# The PostgreSQL conditions of the partial indexes are declared in each Index's `info` and
# given to the Index only when a PostgreSQL database creates it (and by migrations/env.py, which
# compares the models with a database and writes migrations for both backends). Passing
# ``postgresql_where=`` to Index() makes SQLAlchemy validate it against the PostgreSQL dialect,
# and importing that dialect package (with every PostgreSQL driver's module) would cost every
# command's start-up on SQLite, which never reads the condition.
_POSTGRESQL_WHERE = "postgresql_where"


def postgresql_where(condition: str) -> dict[str, str]:
    """An Index's `info` that declares its condition on PostgreSQL (see `postgresql_conditions`)."""
    return {_POSTGRESQL_WHERE: condition}


def postgresql_conditions(tables: Iterable[Table] | None = None) -> None:
    """Give the partial indexes of `tables` (by default every table) their PostgreSQL
    condition, declared by `postgresql_where`; this loads the PostgreSQL dialect."""
    for table in Base.metadata.sorted_tables if tables is None else tables:
        for index in table.indexes:
            condition = index.info.get(_POSTGRESQL_WHERE)
            if condition is not None:
                index.dialect_kwargs[_POSTGRESQL_WHERE] = text(condition)


def _postgresql_conditions(table: Table, connection: Connection, **_: Any) -> None:
    """Before a table is created: on PostgreSQL, its partial indexes need their condition."""
    if Dialect.of(connection).postgresql:
        postgresql_conditions([table])


class JobStatus(StrEnum):
    """A job's ``status``: still listed by its target's successful polls, or no longer."""

    RUNNING = "running"
    FINISHED = "finished"


class OutcomeKind(StrEnum):
    """An ``outcomes.outcome``: what became of a finished job, as the API said (or could not)."""

    COMPLETED = "completed"
    FAILED = "failed"
    MODERATED = "moderated"
    UNKNOWN = "unknown"  # still not final 30 minutes after it vanished (recorder.outcomes)


# The outcomes that say how a job ended (success_rate's denominator); `unknown` says nothing.
KNOWN_OUTCOMES = (OutcomeKind.COMPLETED, OutcomeKind.FAILED, OutcomeKind.MODERATED)


class TransitionKind(StrEnum):
    """A transition's ``kind``: a job's listing changed at a successful poll."""

    APPEARED = "appeared"  # listed for the first time
    VANISHED = "vanished"  # no longer listed: it finished
    REAPPEARED = "reappeared"  # listed again after it vanished: the close was wrong, it runs on


class TargetTable(Base):
    """A polled URL, its name and its service."""

    __tablename__ = "targets"

    id: Column[int] = Column(Integer, primary_key=True)
    url: Column[str] = Column(String, unique=True, nullable=False)  # as first polled
    created_at: Column[datetime] = Column(UTCDateTime, nullable=False)
    # A label for people and reports (`--target NAME`); the id is the identity.
    name: Column[str] = Column(String, unique=True, nullable=False)
    service: Column[str] = Column(String, nullable=False)  # pixverse, kling, …, or generic
    # recorder.urls.same_target_key(url): every spelling of the URL finds this target. Null only
    # for a target recorded before migration 0009 under another spelling of an older target's
    # URL: its history is kept apart, and new polls go to the older one.
    url_key: Column[str | None] = Column(String, unique=True)


class PollTable(Base):
    """One request to a target and how it ended."""

    __tablename__ = "polls"

    id: Column[int] = Column(Id, primary_key=True)
    target_id: Column[int] = Column(ForeignKey("targets.id"), nullable=False)
    sent_at: Column[datetime] = Column(UTCDateTime, nullable=False)
    received_at: Column[datetime] = Column(UTCDateTime, nullable=False)
    latency_s: Column[float] = Column(Double, nullable=False)
    outcome: Column[str] = Column(String(16), nullable=False)
    http_status: Column[int | None] = Column(SmallInteger)
    item_count: Column[int | None] = Column(Integer)
    # Values the parser dropped (unparseable fields, items without an id, merged duplicates).
    dropped_values: Column[int | None] = Column(Integer)
    # The server's clock when it took the list (epoch seconds): predicts every `elapsed`.
    server_time: Column[float | None] = Column(Double)
    # A successful poll that follows failed polls, or a silence longer than the gap threshold:
    # the time since the previous successful poll is a gap in the record (view poll_gaps).
    after_gap: Column[bool] = Column(Boolean, default=False, nullable=False)
    error: Column[str | None] = Column(Text)

    __table_args__ = (
        Index("ix_polls_target_sent", "target_id", "sent_at"),
        Index("ix_polls_target_outcome_id", "target_id", "outcome", "id"),
        # Gaps are rare: a partial index finds them without scanning every poll.
        Index(
            "ix_polls_gaps",
            "target_id",
            "id",
            sqlite_where=text("after_gap"),
            info=postgresql_where("after_gap"),
        ),
    )


class JobTable(Base):
    """One job of one target: what it is and when it ran, as inferred."""

    __tablename__ = "jobs"

    id: Column[int] = Column(Id, primary_key=True)
    target_id: Column[int] = Column(ForeignKey("targets.id"), nullable=False)
    api_id: Column[str] = Column(String, nullable=False)
    type: Column[str | None] = Column(String)
    account: Column[str | None] = Column(String)
    user_id: Column[str | None] = Column(String)
    reply_url: Column[str | None] = Column(Text)
    reply_ref: Column[str | None] = Column(Text)
    started_raw: Column[str | None] = Column(String)
    elapsed_origin: Column[float | None] = Column(Double)
    status: Column[str] = Column(String(8), nullable=False)  # a JobStatus
    first_poll_id: Column[int] = Column(ForeignKey("polls.id"), nullable=False)
    last_poll_id: Column[int | None] = Column(ForeignKey("polls.id"))
    start_at: Column[datetime] = Column(UTCDateTime, nullable=False)
    start_min: Column[datetime | None] = Column(UTCDateTime)
    start_max: Column[datetime | None] = Column(UTCDateTime)
    start_source: Column[str] = Column(String(8), nullable=False)
    end_at: Column[datetime | None] = Column(UTCDateTime)
    end_min: Column[datetime | None] = Column(UTCDateTime)
    end_max: Column[datetime | None] = Column(UTCDateTime)
    duration_s: Column[float | None] = Column(Double)
    duration_min_s: Column[float | None] = Column(Double)
    duration_max_s: Column[float | None] = Column(Double)
    closed_across_gap: Column[bool] = Column(Boolean, default=False, nullable=False)

    __table_args__ = (
        UniqueConstraint("target_id", "api_id", name="uq_jobs_target_api_id"),
        # Partial: an entry per running job (a restarted daemon loads them; reports count
        # them), none for the finished ones that are nearly every row. A query uses it only if
        # its SQL says `status = 'running'` as a literal (see `has_status`).
        Index(
            RUNNING_INDEX,
            "target_id",
            sqlite_where=text(f"status = '{JobStatus.RUNNING}'"),
            info=postgresql_where(f"status = '{JobStatus.RUNNING}'"),
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
            info=postgresql_where(f"status = '{JobStatus.FINISHED}'"),
        ),
        # The few finished jobs too long for the concurrency rollups (recorder.rollups).
        Index(
            "ix_jobs_long",
            "end_at",
            sqlite_where=text(LONG_JOB_SQLITE),
            info=postgresql_where(LONG_JOB_POSTGRESQL),
        ),
    )


class LeaseTable(Base):
    """Which recorder holds the right to record a target (one writer per target)."""

    __tablename__ = "leases"

    target_id: Column[int] = Column(ForeignKey("targets.id"), primary_key=True)
    holder: Column[str] = Column(String, nullable=False)
    acquired_at: Column[datetime] = Column(UTCDateTime, nullable=False)
    # Last sign of life besides the holder's poll rows (written only during long backoffs).
    renewed_at: Column[datetime] = Column(UTCDateTime, nullable=False)
    # Silence after which another recorder may take the target over.
    ttl_s: Column[float] = Column(Double, nullable=False)


class TransitionTable(Base):
    """A job appearing, vanishing or reappearing, at the poll that saw it.

    A poll changes a job's listing at most once, so the job and the poll are the key. On
    SQLite the table is that key's B-tree itself (WITHOUT ROWID): no rowid, and no second copy
    of the key in an index.
    """

    __tablename__ = "transitions"

    job_id: Column[int] = Column(ForeignKey("jobs.id"), primary_key=True)
    poll_id: Column[int] = Column(ForeignKey("polls.id"), primary_key=True)
    kind: Column[str] = Column(String(12), nullable=False)  # a TransitionKind

    __table_args__ = (Index("ix_transitions_poll", "poll_id"), {"sqlite_with_rowid": False})


class ObservationTable(Base):
    """What a poll's list said about a job, when the stored state did not predict it."""

    __tablename__ = "observations"

    id: Column[int] = Column(Id, primary_key=True)
    job_id: Column[int] = Column(ForeignKey("jobs.id"), nullable=False)
    poll_id: Column[int] = Column(ForeignKey("polls.id"), nullable=False)
    type: Column[str | None] = Column(String)
    started_raw: Column[str | None] = Column(String)
    reply_url: Column[str | None] = Column(Text)
    reply_ref: Column[str | None] = Column(Text)
    elapsed_s: Column[int | None] = Column(Integer)
    elapsed_origin: Column[float | None] = Column(Double)

    __table_args__ = (
        # A job's observations (one, or a few): the latest at or before a poll is picked from
        # them, so the index needs no poll_id (migration 0008).
        Index("ix_observations_job", "job_id"),
        Index("ix_observations_poll", "poll_id"),
    )


class QuarantineTable(Base):
    """A poll that could not be stored, kept whole as JSON; the polls row stands in for it."""

    __tablename__ = "quarantine"

    id: Column[int] = Column(Id, primary_key=True)
    target_id: Column[int] = Column(ForeignKey("targets.id"), nullable=False)
    poll_id: Column[int] = Column(ForeignKey("polls.id"), nullable=False)
    set_aside_at: Column[datetime] = Column(UTCDateTime, nullable=False)
    error: Column[str] = Column(Text, nullable=False)
    payload: Column[str] = Column(Text, nullable=False)

    __table_args__ = (Index("ix_quarantine_target", "target_id"),)


class RollupHourTable(Base):
    """The finished jobs of one target, type and account, summed over one UTC hour."""

    __tablename__ = "rollup_hours"

    id: Column[int] = Column(Id, primary_key=True)
    hour: Column[int] = Column(Integer, nullable=False)  # floor(epoch seconds / 3600)
    target_id: Column[int] = Column(ForeignKey("targets.id"), nullable=False)
    type: Column[str | None] = Column(String)
    account: Column[str | None] = Column(String)
    finished: Column[int] = Column(Integer, nullable=False)  # jobs that ended in the hour
    timed: Column[int] = Column(Integer, nullable=False)  # of those, with a known duration
    duration_sum: Column[float] = Column(Double, nullable=False)
    duration_max: Column[float | None] = Column(Double)
    wide: Column[int] = Column(Integer, nullable=False)  # of those, closed across a gap
    started: Column[int] = Column(Integer, nullable=False)  # finished jobs that started in the hour
    # Of those, the sum of their shares of the missed-jobs estimate (recorder.missed).
    missed: Column[float] = Column(Double, nullable=False, server_default="0")
    busy_s: Column[float] = Column(Double, nullable=False)  # their intervals' time within the hour
    # The jobs that ended in the hour, per duration bin (HISTOGRAM_EDGES): bin_00 .. bin_14.
    bin_00: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_01: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_02: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_03: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_04: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_05: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_06: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_07: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_08: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_09: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_10: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_11: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_12: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_13: Column[int] = Column(Integer, nullable=False, server_default="0")
    bin_14: Column[int] = Column(Integer, nullable=False, server_default="0")

    __table_args__ = (Index("ix_rollup_hours_hour", "hour"),)


class RollupPeakTable(Base):
    """The most finished jobs in flight at once in one UTC hour, for one grouping's group.

    `scope` says which of target, type and account the group is by (bits 1, 2, 4); the other
    key columns are then null. A peak of a union is not the sum of its parts' peaks, so each
    grouping the reports offer has its own rows.
    """

    __tablename__ = "rollup_peaks"

    id: Column[int] = Column(Id, primary_key=True)
    scope: Column[int] = Column(SmallInteger, nullable=False)
    hour: Column[int] = Column(Integer, nullable=False)
    target_id: Column[int | None] = Column(ForeignKey("targets.id"))
    type: Column[str | None] = Column(String)
    account: Column[str | None] = Column(String)
    peak: Column[int] = Column(Integer, nullable=False)

    __table_args__ = (Index("ix_rollup_peaks_scope_hour", "scope", "hour"),)


class CapacityTable(Base):
    """One run of unchanged /scheduler/available values of one account of one target.

    Written only when a value changes: reads that repeat the latest row's values move its
    `last_at`. Consecutive rows of reads no further apart than the gap meet (the earlier one's
    `last_at` is the later one's `first_at`); a row after a longer silence does not.
    """

    __tablename__ = "capacity"

    id: Column[int] = Column(Id, primary_key=True)
    target_id: Column[int] = Column(ForeignKey("targets.id"), nullable=False)
    account: Column[str] = Column(String, nullable=False)
    max_jobs: Column[int | None] = Column(Integer)
    executing: Column[int | None] = Column(Integer)
    available: Column[int | None] = Column(Integer)
    first_at: Column[datetime] = Column(UTCDateTime, nullable=False)  # the read that saw them
    last_at: Column[datetime] = Column(
        UTCDateTime, nullable=False
    )  # the last read, or the next row's

    __table_args__ = (
        Index("ix_capacity_target_account_first", "target_id", "account", "first_at"),
    )


class JobOutcomeTable(Base):
    """What the API said became of one finished job, asked after it vanished (recorder.outcomes).

    A row is pending (``outcome`` null, ``next_attempt_at`` set) until the answer is final; the
    work queue of the asking is these rows, so a restart resumes it. A row of its own, not
    columns of ``jobs``: only the targets that ask have any, and a job's row stays its size.
    """

    __tablename__ = "outcomes"

    job_id: Column[int] = Column(ForeignKey("jobs.id"), primary_key=True)
    outcome: Column[str | None] = Column(String(9))  # an OutcomeKind; null while pending
    attempts: Column[int] = Column(Integer, nullable=False)  # requests answered for this job
    next_attempt_at: Column[datetime | None] = Column(UTCDateTime)  # null once final
    checked_at: Column[datetime | None] = Column(UTCDateTime)  # the latest answer
    # The times the API's answer gave (its created_at, a finish time), as a cross-check of the
    # inferred bounds; never used to move them.
    api_created_at: Column[datetime | None] = Column(UTCDateTime)
    api_finished_at: Column[datetime | None] = Column(UTCDateTime)
    disagreement: Column[str | None] = Column(Text)  # how those times contradict the bounds

    __table_args__ = (
        # The pending rows, which the asking reads on every tick; none for the final ones.
        Index(
            "ix_outcomes_pending",
            "next_attempt_at",
            sqlite_where=text("outcome IS NULL"),
            info=postgresql_where("outcome IS NULL"),
        ),
    )


# The tables as the queries name them (see Base).
Target = TargetTable()
Poll = PollTable()
Job = JobTable()
Lease = LeaseTable()
Transition = TransitionTable()
Observation = ObservationTable()
Quarantine = QuarantineTable()
RollupHour = RollupHourTable()
RollupPeak = RollupPeakTable()
Capacity = CapacityTable()
JobOutcome = JobOutcomeTable()


# Which polls count, as SQLAlchemy expressions and, for the hand-written report SQL, as text.


def succeeded(poll: PollTable = Poll) -> ColumnElement[bool]:
    """SQL: the poll produced a list."""
    return poll.outcome == Outcome.OK


def latest_ok_id(target_id: Any, *, before: Any = None) -> ScalarSelect[int | None]:
    """SQL: the id of the target's latest successful poll (the latest before poll id `before`).

    `target_id` and `before` are values or SQL expressions (correlated with the outer query).
    """
    ok = Poll.alias()
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
    poll = Poll.alias()
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
