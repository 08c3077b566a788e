"""Reading a target's /scheduler/available on a schedule of its own, beside its polls.

Each read stores every account's maxJobs / executing / available where they changed
(Store.record_capacity). A read that fails, for any reason, is logged once per change of state
and otherwise ignored: it never touches the target's polls, jobs or lease, and it runs on its
own thread, so a slow /available delays no poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from recorder.client import SchedulerClient
from recorder.clock import SteadyClock
from recorder.db import one_line
from recorder.logs import about
from recorder.output import human_duration
from recorder.parse import PayloadError
from recorder.services import Service
from recorder.snapshot import Failure
from recorder.store import Store

__all__ = ["CapacityReader", "capacity_gap"]

log = logging.getLogger("recorder")


def capacity_gap(interval: float) -> float:
    """The longest silence between two reads that still joins their rows: 3 intervals."""
    return 3 * interval


class CapacityReader:
    """Reads one target's /scheduler/available every `interval` seconds and stores it."""

    def __init__(
        self,
        service: Service,
        client: SchedulerClient,
        store: Store,
        target_id: Callable[[], int | None],
        interval: float,
        *,
        name: str,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Prepare to read with `client` (on the service's /available URL) into `store`.

        `target_id` says which target to record into, or None while the reader must not record
        (the target's pipeline has not attached yet, or another recorder holds the target).
        """
        if interval <= 0:
            raise ValueError("the interval must be positive")
        self.service = service
        self.client = client
        self.store = store
        self.target_id = target_id
        self.interval = interval
        self.name = name
        self.clock = clock if clock is not None else SteadyClock()
        self.reads = 0  # reads stored
        self.failing: str | None = None  # why the latest read failed, if it did
        self._failures = 0
        self._since = 0.0

    def tick(self) -> int | None:
        """One read, stored; the rows it inserted, or None when it did not store. Never raises."""
        target_id = self.target_id()
        if target_id is None:
            return None
        try:
            status, body = self.client.fetch()
            read_at = self.clock()
            if isinstance(body, Failure):
                self._fail(body.outcome.value, body.message)
                return None
            try:
                capacities = self.service.parse_available(body)
            except PayloadError as exc:
                self._fail("bad_payload", f"HTTP {status}: {exc}")
                return None
            inserted = self.store.record_capacity(
                target_id, read_at, capacities, capacity_gap(self.interval)
            )
        except SQLAlchemyError as exc:
            self._fail("database", f"cannot write to the database: {one_line(exc)}")
            return None
        except Exception as exc:  # a read must never stop the recording, nor this reader
            self._fail("error", f"{type(exc).__name__}: {one_line(exc)}")
            return None
        self.reads += 1
        self._recover()
        return inserted

    def abort(self) -> None:
        """Cut the read in flight, if any, and fail every later one (the recorder is stopping)."""
        self.client.abort()

    def _fail(self, kind: str, message: str) -> None:
        self._failures += 1
        if self.failing != kind:
            if self.failing is None:
                self._since = self.clock()
            log.warning(
                "[%s] capacity: failing (%s): %s", self.name, kind, message, extra=about(self.name)
            )
            self.failing = kind

    def _recover(self) -> None:
        if self.failing is not None:
            log.info(
                "[%s] capacity: recovered after %d failed read(s) over %s",
                self.name,
                self._failures,
                human_duration(self.clock() - self._since),
                extra=about(self.name),
            )
        self.failing, self._failures = None, 0
