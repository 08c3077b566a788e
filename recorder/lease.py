"""One recorder per target: a lease row that a second recorder waits on, and takes over when
the first falls silent.

Two recorders writing one target would each infer from their own view of the open jobs and
corrupt the history, so only the lease holder writes. The holder's poll rows are its heartbeat
(no extra write per poll); during a long backoff it renews the lease explicitly. Another
recorder takes the lease over once the target has been silent for the holder's ``ttl_s``.
Every poll's transaction checks, under a lock (a row lock on PostgreSQL, SQLite's write lock),
that its writer still holds the lease, so two recorders never both write.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from recorder.models import Lease, Poll


class LeaseLost(Exception):
    """Another recorder took this target over; this one must stop writing."""


@dataclass(frozen=True, slots=True)
class Holding:
    """The outcome of an attempt to take the lease."""

    acquired: bool
    holder: str  # who holds it now
    previous: str | None = None  # whom we took it from, when we took it over
    silent_s: float = 0.0  # how long the holder has been silent, when we did not get it


def new_holder() -> str:
    """A name for this process, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RecordingLease:
    """This process's claim to record one target."""

    def __init__(
        self,
        engine: Engine,
        target_id: int,
        ttl_s: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Prepare a claim; nothing is written until acquire()."""
        self.engine = engine
        self.target_id = target_id
        self.ttl_s = ttl_s
        self.holder = holder or new_holder()
        self.clock = clock

    def acquire(self) -> Holding:
        """Take the lease if it is free, ours, or its holder has been silent for its TTL."""
        now = self.clock()
        with self.engine.begin() as conn:
            self._ensure_row(conn, now)
            row = conn.execute(
                select(Lease.holder, Lease.renewed_at, Lease.ttl_s)
                .where(Lease.target_id == self.target_id)
                .with_for_update()
            ).one()
            if row.holder == self.holder:
                self._claim(conn, now, renew_only=True)
                return Holding(True, self.holder)
            last_poll = conn.scalar(
                select(func.max(Poll.sent_at)).where(Poll.target_id == self.target_id)
            )
            last = max(row.renewed_at.timestamp(), last_poll.timestamp() if last_poll else 0.0)
            silent = now - last
            if silent <= row.ttl_s:
                return Holding(False, row.holder, silent_s=silent)
            self._claim(conn, now, renew_only=False)
            return Holding(True, self.holder, previous=row.holder)

    def _ensure_row(self, conn: Connection, now: float) -> None:
        values = {
            "target_id": self.target_id,
            "holder": self.holder,
            "acquired_at": _dt(now),
            "renewed_at": _dt(now),
            "ttl_s": self.ttl_s,
        }
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(Lease).values(**values).on_conflict_do_nothing())

    def _claim(self, conn: Connection, now: float, *, renew_only: bool) -> None:
        values = {"holder": self.holder, "renewed_at": _dt(now), "ttl_s": self.ttl_s}
        if not renew_only:
            values["acquired_at"] = _dt(now)
        conn.execute(update(Lease).where(Lease.target_id == self.target_id).values(**values))

    def check(self, conn: Connection) -> None:
        """Inside a write transaction: raise LeaseLost unless we still hold the lease."""
        holder = conn.scalar(
            select(Lease.holder).where(Lease.target_id == self.target_id).with_for_update()
        )
        if holder != self.holder:
            raise LeaseLost(f"the target is now recorded by {holder}")

    def renew(self) -> None:
        """Show a sign of life while not polling (a long backoff)."""
        with self.engine.begin() as conn:
            self.check(conn)
            conn.execute(
                update(Lease)
                .where(Lease.target_id == self.target_id)
                .values(renewed_at=_dt(self.clock()))
            )

    def release(self) -> None:
        """Give the lease up, so that a standby recorder takes over at once."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(Lease).where(Lease.target_id == self.target_id, Lease.holder == self.holder)
            )


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
