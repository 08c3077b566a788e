"""Writing polls and their inferred changes to the database, and reading state back.

Each poll is one transaction: its row, and the rows for whatever it changed. A poll that
changed nothing inserts exactly one row, whatever the number of jobs in flight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from recorder import rollups, services
from recorder.clock import EARLIEST, LATEST, storable, to_datetime
from recorder.inference import (
    Bounded,
    Closed,
    ItemState,
    JobState,
    Offset,
    PollTime,
    StartSource,
    StepResult,
    TargetState,
    poll_offset,
)
from recorder.lease import RecordingLease
from recorder.models import (
    Capacity,
    Job,
    JobStatus,
    Observation,
    Poll,
    Quarantine,
    Target,
    Transition,
    TransitionKind,
    failing_streak,
    latest_ok_id,
    running_jobs,
    succeeded,
)
from recorder.parse import LIMITS, bound_text
from recorder.services._base import MAX_COUNT
from recorder.services._base import Capacity as AccountCapacity
from recorder.snapshot import Item, Outcome, PollResult, Snapshot
from recorder.urls import first_free_name, same_target_key

# Keeps IN (...) lists well under every backend's limit on bound parameters.
CHUNK = 500
T = TypeVar("T")


def to_timestamp(value: datetime) -> float:
    """An aware datetime to epoch seconds."""
    return value.timestamp()


def _maybe_ts(value: datetime | None) -> float | None:
    return None if value is None else to_timestamp(value)


class _Columns:
    """Inferred numbers as values every backend stores, counting those it had to clamp or drop.

    The inference works on any float; a hostile answer can push an estimate past the times a
    database holds (year 9999) or, in theory, to a non-finite number. Such a value must cost
    only itself: a bound becomes unknown (None, which is honest), a required time is clamped.
    """

    def __init__(self) -> None:
        self.clamped = 0

    def time(self, ts: float) -> datetime:
        """A required time, clamped into the storable range."""
        value = storable(ts)
        if value is None:
            self.clamped += 1
            value = LATEST if ts > LATEST else EARLIEST  # NaN compares false: the epoch
        return to_datetime(value)

    def bound(self, ts: float | None) -> datetime | None:
        """An optional time; unknown (None) when it cannot be stored."""
        if ts is None:
            return None
        value = storable(ts)
        if value is None:
            self.clamped += 1
            return None
        return to_datetime(value)

    def number(self, value: float | None) -> float | None:
        """An optional number; None when it is not finite."""
        if value is None or math.isfinite(value):
            return value
        self.clamped += 1
        return None


# Tries of Store.target when another recorder creates or renames a target at the same moment.
_TARGET_TRIES = 3


class TargetNameTaken(ValueError):
    """A target is to be named as another target already is."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A target's inference state as the database holds it."""

    state: TargetState
    last_ok_poll_id: int | None


@dataclass(frozen=True, slots=True)
class SetAside:
    """A poll the database would not take: why, when, and the poll itself as JSON."""

    at: float
    error: str
    payload: str


class Store:
    """The recorder's database, seen as polls, jobs and their changes."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose schema is up to date."""
        self.engine = engine

    def target(
        self, url: str, now: float, *, name: str | None = None, service: str | None = None
    ) -> int:
        """The id of the target for `url`, created at `now` if new; `name` and `service` label it.

        Every spelling of one URL is one target (recorder.urls.same_target_key), whose `url`
        stays as first given. A new target's service defaults to the one its URL names, its
        name to the service's (``-2``, ``-3``… when taken). A `name` or `service` other than
        the stored one relabels the target (ids are the identity, names and services labels);
        a name another target holds is refused (TargetNameTaken).
        """
        key = same_target_key(url)
        for attempt in range(_TARGET_TRIES):
            try:
                with self.engine.begin() as conn:
                    return _target(conn, url, key, now, name, service)
            except IntegrityError:
                # Another recorder created this target, or took the name, since it was read:
                # read again (a name it took is then refused as taken).
                if attempt == _TARGET_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def load(self, target_id: int) -> Loaded:
        """The state the last recorded poll of this target left."""
        with self.engine.connect() as conn:
            open_jobs = {
                row.api_id: _job_state(row)
                for row in conn.execute(
                    running_jobs(_job_state_query().where(Job.target_id == target_id))
                )
            }
            last_ok = conn.execute(
                select(
                    Poll.id,
                    Poll.sent_at,
                    Poll.received_at,
                    Poll.server_time,
                    failing_streak(target_id).label("failures"),
                ).where(Poll.id == latest_ok_id(target_id))
            ).first()
        if last_ok is None:
            return Loaded(TargetState(open_jobs=open_jobs), None)
        timing = PollTime(to_timestamp(last_ok.sent_at), to_timestamp(last_ok.received_at))
        offset = None
        if last_ok.server_time is not None:
            # The error of the stored estimate is not kept; one second more than the poll's
            # own spread is a safe bound for `started` truncated to seconds.
            spread = (timing.received_at - timing.sent_at) / 2
            skew = poll_offset(timing.sent_at, timing.received_at, last_ok.server_time)
            offset = Offset(skew, 1.0 + spread)
        state = TargetState(open_jobs, timing, int(last_ok.failures or 0), offset)
        return Loaded(state, last_ok.id)

    def recent_ok_polls(self, target_id: int, count: int) -> list[float]:
        """When the target's latest `count` successful polls were sent, oldest first."""
        with self.engine.connect() as conn:
            sent = conn.scalars(
                select(Poll.sent_at)
                .where(Poll.target_id == target_id, succeeded())
                .order_by(Poll.id.desc())
                .limit(count)
            ).all()
        return [to_timestamp(moment) for moment in reversed(sent)]

    def closed_jobs(self, target_id: int, api_ids: Iterable[str]) -> dict[str, JobState]:
        """The stored state of the finished jobs among `api_ids`."""
        found: dict[str, JobState] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(api_ids)):
                # The ids, found by the unique index; their status is checked here, not in the
                # SQL, where SQLite (which plans without statistics) would read the jobs by
                # status instead: every finished job, to find a few ids.
                query = _job_state_query().add_columns(Job.status)
                query = query.where(Job.target_id == target_id, Job.api_id.in_(chunk))
                found.update(
                    (row.api_id, _job_state(row))
                    for row in conn.execute(query)
                    if row.status == JobStatus.FINISHED
                )
        return found

    def record(
        self,
        target_id: int,
        result: PollResult,
        change: StepResult,
        last_ok_poll_id: int | None,
        lease: RecordingLease | None = None,
        quarantine: SetAside | None = None,
    ) -> int:
        """Write one poll and everything it changed, in one transaction; returns the poll id.

        With a lease, the transaction first checks that this process still holds the target
        (raising LeaseLost, and writing nothing, when another recorder took it over). With
        `quarantine`, the poll row stands for a poll that could not be stored, kept whole.
        """
        columns = _Columns()
        with self.engine.begin() as conn:
            if lease is not None:
                lease.check(conn)
            poll_id = _insert_poll(conn, target_id, result, change, columns)
            if quarantine is not None:
                row = {
                    "target_id": target_id,
                    "poll_id": poll_id,
                    "set_aside_at": columns.time(quarantine.at),
                    "error": quarantine.error,
                    "payload": quarantine.payload,
                }
                conn.execute(insert(Quarantine).values(**row))
            if change.changed:
                _write_changes(conn, target_id, poll_id, change, last_ok_poll_id, columns)
            if columns.clamped:
                # Rare: counted with the values the parser dropped, after the fact.
                dropped = func.coalesce(Poll.dropped_values, 0) + columns.clamped
                conn.execute(update(Poll).where(Poll.id == poll_id).values(dropped_values=dropped))
        return poll_id

    def record_capacity(
        self,
        target_id: int,
        read_at: float,
        capacities: Sequence[AccountCapacity],
        gap_s: float,
    ) -> int:
        """Store one /scheduler/available read of the target at `read_at`, in one transaction;
        returns how many rows it inserted.

        Only changes are written: an account whose values are its latest row's, read within
        `gap_s` of that row's `last_at`, only moves `last_at` to `read_at`. Changed values, or a
        read after a longer silence, start a new row; after a row within the gap, that row's
        `last_at` moves to `read_at` too, so that the two meet (the change happened between the
        reads). An account the read does not list is left as it is.
        """
        read: dict[str, _CapacityValues] = {}
        for capacity in capacities:
            values = _capacity_values(capacity)
            read.setdefault(values[0], values)  # the first line of an account, as parsed
        columns = _Columns()
        at = columns.time(read_at)
        with self.engine.begin() as conn:
            latest = _latest_capacity(conn, target_id, list(read))
            moved, inserted = [], []
            for account, values in read.items():
                row = latest.get(account)
                since = None if row is None else read_at - to_timestamp(row.last_at)
                same = row is not None and tuple(row)[:4] == values
                if same and since is not None and since < 0:
                    continue  # a read older than the row's last one: nothing new
                contiguous = since is not None and 0 <= since <= gap_s
                if contiguous and row is not None:
                    moved.append(row.id)  # extended, or ends where the changed values begin
                if same and contiguous:
                    continue
                inserted.append(
                    {
                        "target_id": target_id,
                        "account": account,
                        "max_jobs": values[1],
                        "executing": values[2],
                        "available": values[3],
                        "first_at": at,
                        "last_at": at,
                    }
                )
            for chunk in chunks(moved):
                conn.execute(update(Capacity).where(Capacity.id.in_(chunk)).values(last_at=at))
            if inserted:
                conn.execute(insert(Capacity), inserted)
        return len(inserted)


_CapacityValues = tuple[str, int | None, int | None, int | None]


def _capacity_values(capacity: AccountCapacity) -> _CapacityValues:
    """An account's line as stored: its name bounded like every text, unusable counts None."""

    def count(value: int | None) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT
        return value if ok else None

    account = bound_text(str(capacity.account), LIMITS["account"])
    return account, count(capacity.max_jobs), count(capacity.executing), count(capacity.available)


def _latest_capacity(conn: Connection, target_id: int, accounts: Sequence[str]) -> dict[str, Any]:
    """Each of `accounts`' latest capacity row of the target, by account."""
    found: dict[str, Any] = {}
    for chunk in chunks(accounts):
        latest = (
            select(func.max(Capacity.id))
            .where(Capacity.target_id == target_id, Capacity.account.in_(chunk))
            .group_by(Capacity.account)
        )
        query = select(
            Capacity.account,
            Capacity.max_jobs,
            Capacity.executing,
            Capacity.available,
            Capacity.last_at,
            Capacity.id,
        ).where(Capacity.id.in_(latest))
        found.update((row.account, row) for row in conn.execute(query))
    return found


def _target(
    conn: Connection, url: str, key: str, now: float, name: str | None, service: str | None
) -> int:
    """Store.target in one transaction: find by the URL's key, relabel, or create."""
    if name is not None and not name.strip():
        raise ValueError("a target's name cannot be empty")
    labels = select(Target.id, Target.name, Target.service)
    found = conn.execute(labels.where(Target.url_key == key)).first()
    if found is None:  # only if the key's rules changed since the target was recorded
        found = conn.execute(labels.where(Target.url == url)).first()
    if found is None:
        service = service or services.for_url(url).name
        if name is None:
            name = first_free_name(service, set(conn.scalars(select(Target.name))))
        else:
            _check_free(conn, name, None)
        created = _Columns().time(now)
        values = {
            "url": url,
            "url_key": key,
            "name": name,
            "service": service,
            "created_at": created,
        }
        return int(conn.execute(insert(Target).values(**values).returning(Target.id)).scalar_one())
    relabel: dict[str, str] = {}
    if name is not None and name != found.name:
        _check_free(conn, name, found.id)
        relabel["name"] = name
    if service is not None and service != found.service:
        relabel["service"] = service
    if relabel:
        conn.execute(update(Target).where(Target.id == found.id).values(**relabel))
    return int(found.id)


def _check_free(conn: Connection, name: str, target_id: int | None) -> None:
    """Refuse `name` when a target other than `target_id` holds it."""
    holder = conn.scalar(select(Target.url).where(Target.name == name, Target.id != target_id))
    if holder is not None:
        raise TargetNameTaken(f"the target name {name!r} is taken by {holder}")


def chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """`values` in slices of at most CHUNK, for IN (...) lists."""
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _job_state_query() -> Any:
    return select(
        Job.api_id,
        Job.start_at,
        Job.start_min,
        Job.start_max,
        Job.start_source,
        Job.type,
        Job.started_raw,
        Job.reply_url,
        Job.reply_ref,
        Job.elapsed_origin,
    )


def _job_state(row: Any) -> JobState:
    start = Bounded(to_timestamp(row.start_at), _maybe_ts(row.start_min), _maybe_ts(row.start_max))
    item = ItemState(row.type, row.started_raw, row.reply_url, row.reply_ref, row.elapsed_origin)
    return JobState(row.api_id, start, StartSource(row.start_source), item)


def _insert_poll(
    conn: Connection, target_id: int, result: PollResult, change: StepResult, columns: _Columns
) -> int:
    answer = result.answer
    values: dict[str, Any] = {
        "target_id": target_id,
        "sent_at": columns.time(result.sent_at),
        "received_at": columns.time(result.received_at),
        "latency_s": result.received_at - result.sent_at,
        "http_status": result.http_status,
    }
    if isinstance(answer, Snapshot):
        dropped = answer.invalid_values + answer.untracked + answer.duplicates
        values |= {
            "outcome": Outcome.OK.value,
            "item_count": len(answer.items),
            "dropped_values": dropped or None,
            "server_time": columns.number(change.server_time),
            "after_gap": change.after_gap,
        }
    else:
        values |= {"outcome": answer.outcome.value, "error": answer.message, "after_gap": False}
    return int(conn.execute(insert(Poll).values(**values).returning(Poll.id)).scalar_one())


def _write_changes(
    conn: Connection,
    target_id: int,
    poll_id: int,
    change: StepResult,
    last_ok_poll_id: int | None,
    columns: _Columns,
) -> None:
    job_ids = _insert_opened(conn, target_id, poll_id, change, columns)
    touched = [e.job.api_id for e in change.reopened] + [e.api_id for e in change.observed]
    touched += [e.api_id for e in change.closed]
    job_ids |= _job_ids(conn, target_id, (i for i in touched if i not in job_ids))

    transitions = [
        {"job_id": job_ids[e.job.api_id], "kind": TransitionKind.APPEARED} for e in change.opened
    ]
    if change.reopened or change.closed:
        rollups.lock(conn)
    # A reappearing job withdraws what it added to the rollups: its hours, read while it is
    # still finished, are recomputed once it runs again.
    withdrawn = rollups.hours_of(conn, [job_ids[e.job.api_id] for e in change.reopened])
    for reopened in change.reopened:
        job_id = job_ids[reopened.job.api_id]
        conn.execute(update(Job).where(Job.id == job_id).values(**_REOPEN))
        transitions.append({"job_id": job_id, "kind": TransitionKind.REAPPEARED})
    for closed in change.closed:
        job_id = job_ids[closed.api_id]
        values = _close(closed, last_ok_poll_id, columns)
        conn.execute(update(Job).where(Job.id == job_id).values(**values))
        transitions.append({"job_id": job_id, "kind": TransitionKind.VANISHED})
    rollups.refresh(conn, withdrawn)
    rollups.add_finished(conn, [job_ids[e.api_id] for e in change.closed], done=withdrawn)
    if transitions:
        conn.execute(insert(Transition), [t | {"poll_id": poll_id} for t in transitions])

    observations = []
    opened = {e.job.api_id for e in change.opened}
    for observed in change.observed:
        job_id = job_ids[observed.api_id]
        state = _item_columns(observed.item, columns)
        if observed.api_id not in opened:  # a new job's row already holds its state
            conn.execute(update(Job).where(Job.id == job_id).values(**state))
        observations.append(
            state | {"job_id": job_id, "poll_id": poll_id, "elapsed_s": observed.elapsed_s}
        )
    if observations:
        conn.execute(insert(Observation), observations)


_REOPEN: dict[str, Any] = {
    "status": JobStatus.RUNNING,
    "last_poll_id": None,
    "end_at": None,
    "end_min": None,
    "end_max": None,
    "duration_s": None,
    "duration_min_s": None,
    "duration_max_s": None,
    "closed_across_gap": False,
}


def _close(event: Closed, last_ok_poll_id: int | None, columns: _Columns) -> dict[str, Any]:
    return {
        "status": JobStatus.FINISHED,
        "last_poll_id": last_ok_poll_id,
        "end_at": columns.time(event.end.at),
        "end_min": columns.bound(event.end.lo),
        "end_max": columns.bound(event.end.hi),
        "duration_s": columns.number(event.duration.at),
        "duration_min_s": columns.number(event.duration.lo),
        "duration_max_s": columns.number(event.duration.hi),
        "closed_across_gap": event.across_gap,
    }


def _item_columns(item: ItemState, columns: _Columns) -> dict[str, Any]:
    return {
        "type": item.type,
        "started_raw": item.started_raw,
        "reply_url": item.reply_url,
        "reply_ref": item.reply_ref,
        "elapsed_origin": columns.number(item.elapsed_origin),
    }


def _insert_opened(
    conn: Connection, target_id: int, poll_id: int, change: StepResult, columns: _Columns
) -> dict[str, int]:
    if not change.opened:
        return {}
    rows = [_opened_row(target_id, poll_id, e.job, e.item, columns) for e in change.opened]
    inserted = conn.execute(
        insert(Job).returning(Job.id, Job.api_id, sort_by_parameter_order=True), rows
    )
    return {row.api_id: row.id for row in inserted}


def _opened_row(
    target_id: int, poll_id: int, job: JobState, item: Item, columns: _Columns
) -> dict[str, Any]:
    return _item_columns(job.item, columns) | {
        "target_id": target_id,
        "api_id": job.api_id,
        "account": item.account,
        "user_id": item.user_id,
        "status": JobStatus.RUNNING,
        "first_poll_id": poll_id,
        "start_at": columns.time(job.start.at),
        "start_min": columns.bound(job.start.lo),
        "start_max": columns.bound(job.start.hi),
        "start_source": job.start_source.value,
        "closed_across_gap": False,
    }


def _job_ids(conn: Connection, target_id: int, api_ids: Iterable[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in chunks(sorted(set(api_ids))):
        query = select(Job.api_id, Job.id).where(Job.target_id == target_id, Job.api_id.in_(chunk))
        found.update((row.api_id, row.id) for row in conn.execute(query))
    return found
