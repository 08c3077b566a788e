"""One recorder per target: a lock the operating system holds for the recording process, and a
lease row that says who records.

Two recorders writing one target would each infer from their own view of the open jobs and
corrupt the history, so only one process records a target. Liveness comes from a lock that
dies with its process: a session-level advisory lock on PostgreSQL (held by a connection of
its own), an exclusive ``flock`` on a file beside the database on SQLite. A standby recorder
takes the target over the moment that lock is free, so a restart after a crash (SIGKILL, OOM)
resumes at once instead of waiting out a timeout. A live recorder keeps its target, however
long it is silent.

The lease row (``leases``) names the holder for people and for ``recorder status``, and every
poll's transaction checks it under a lock (a row lock on PostgreSQL, SQLite's write lock): if
another process took the target over, the write is refused, so two recorders never both write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from recorder.clock import to_datetime
from recorder.db import sqlite_path
from recorder.dialect import Dialect
from recorder.models import Lease, Poll

# The first half of the advisory lock key; the target id is the second.
_ADVISORY_CLASS = zlib.crc32(b"recorder target lease") & 0x7FFFFFFF


class ProcessLock(Protocol):
    """A lock that the operating system releases when the holding process dies."""

    def acquire(self) -> bool:
        """Take the lock if no live process holds it; True when held (re-entrant)."""

    def held(self) -> bool:
        """True while this process still holds the lock."""

    def release(self) -> None:
        """Let the lock go (never raises)."""


class LeaseLost(Exception):
    """Another recorder took this target over; this one must stop writing."""


@dataclass(frozen=True, slots=True)
class Holding:
    """The outcome of an attempt to take the lease."""

    acquired: bool
    holder: str  # who holds it now
    previous: str | None = None  # whom we took it from (a recorder that died), if anyone
    silent_s: float = 0.0  # how long the holder has been silent, when we did not get it


def new_holder() -> str:
    """A name for this process, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FileLock:
    """An exclusive flock on a file: free again the moment its process dies.

    flock belongs to the open file, not the process, so two claims in one process exclude
    each other too. A lock file that was deleted or replaced no longer counts as held.
    """

    def __init__(self, path: Path) -> None:
        """A lock on `path` (created when first taken)."""
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock unless another open file holds it."""
        if self.held():
            return True
        self.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def held(self) -> bool:
        """True while we hold the lock on the file that is at the path now."""
        if self._fd is None:
            return False
        try:
            return os.path.samestat(os.fstat(self._fd), os.stat(self.path))
        except OSError:
            return False

    def release(self) -> None:
        """Unlock and close the file."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


class AdvisoryLock:
    """A session-level PostgreSQL advisory lock, held by a connection of its own.

    The server frees it when the session ends: the process died, or its host stopped answering
    (TCP keepalives on the session notice within about half a minute).
    """

    def __init__(self, engine: Engine, target_id: int) -> None:
        """A lock for one target on the database behind `engine`."""
        self.engine = engine
        self.key = {"cls": _ADVISORY_CLASS, "target": target_id}
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        """Take the lock unless another session holds it."""
        if self.held():
            return True
        self.release()
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            for setting in ("tcp_keepalives_idle = 10", "tcp_keepalives_interval = 5"):
                conn.exec_driver_sql(f"SET {setting}")
            got = conn.scalar(text("SELECT pg_try_advisory_lock(:cls, :target)"), self.key)
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """True while the lock's session is alive (a round trip to the server)."""
        if self._conn is None:
            return False
        try:
            self._conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return False
        return True

    def release(self) -> None:
        """End the lock's session, which frees the lock."""
        if self._conn is not None:
            # Invalidate, not close: a closed connection goes back to the pool with its
            # session, and a session-level lock, still open.
            with contextlib.suppress(SQLAlchemyError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None


class NoLock:
    """For a database only this process can see (SQLite in memory): always free."""

    def acquire(self) -> bool:
        """Always True."""
        return True

    def held(self) -> bool:
        """Always True."""
        return True

    def release(self) -> None:
        """Nothing to release."""


def process_lock(engine: Engine, target_id: int) -> ProcessLock:
    """The OS-held lock for one target of the database behind `engine`."""
    if Dialect.of(engine).postgresql:
        return AdvisoryLock(engine, target_id)
    path = sqlite_path(engine.url)
    if path is None:
        return NoLock()
    return FileLock(path.with_name(f"{path.name}.target-{target_id}.lock"))


class RecordingLease:
    """This process's claim to record one target."""

    def __init__(
        self,
        engine: Engine,
        target_id: int,
        ttl_s: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
        lock: ProcessLock | None = None,
    ) -> None:
        """Prepare a claim; nothing is taken or written until acquire().

        `ttl_s` is the longest silence expected of the holder between polls, kept in the row
        for people; takeover waits for the process lock, not for the silence.
        """
        self.engine = engine
        self.target_id = target_id
        self.ttl_s = ttl_s
        self.holder = holder or new_holder()
        self.clock = clock
        self.lock = lock if lock is not None else process_lock(engine, target_id)

    def acquire(self) -> Holding:
        """Take the target if no live recorder holds it (a dead one's claim is void)."""
        now = self.clock()
        if not self.lock.acquire():
            return self._busy(now)
        try:
            with self.engine.begin() as conn:
                self._ensure_row(conn, now)
                row = conn.execute(
                    select(Lease.holder).where(Lease.target_id == self.target_id).with_for_update()
                ).one()
                self._claim(conn, now, renew_only=row.holder == self.holder)
        except BaseException:
            self.lock.release()
            raise
        previous = None if row.holder == self.holder else row.holder
        return Holding(True, self.holder, previous=previous)

    def keep(self) -> bool:
        """Make sure this process still holds its lock (taking it again if it was lost and is
        free, e.g. after a database restart); False when another process has it now."""
        return self.lock.held() or self.lock.acquire()

    def _busy(self, now: float) -> Holding:
        with self.engine.connect() as conn:
            holder = conn.scalar(select(Lease.holder).where(Lease.target_id == self.target_id))
            last_poll = conn.scalar(
                select(func.max(Poll.sent_at)).where(Poll.target_id == self.target_id)
            )
        silent = now - last_poll.timestamp() if last_poll is not None else 0.0
        return Holding(False, holder or "another recorder", silent_s=max(0.0, silent))

    def _ensure_row(self, conn: Connection, now: float) -> None:
        values = {
            "target_id": self.target_id,
            "holder": self.holder,
            "acquired_at": to_datetime(now),
            "renewed_at": to_datetime(now),
            "ttl_s": self.ttl_s,
        }
        conn.execute(Dialect.of(conn).insert_new(Lease, values))

    def _claim(self, conn: Connection, now: float, *, renew_only: bool) -> None:
        values = {"holder": self.holder, "renewed_at": to_datetime(now), "ttl_s": self.ttl_s}
        if not renew_only:
            values["acquired_at"] = to_datetime(now)
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
                .values(renewed_at=to_datetime(self.clock()))
            )

    def release(self) -> None:
        """Give the target up: the lease row goes, then the process lock."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(Lease).where(
                        Lease.target_id == self.target_id, Lease.holder == self.holder
                    )
                )
        finally:
            self.lock.release()
