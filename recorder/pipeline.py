"""One target's recording loop body: poll → normalized snapshot → inference → store."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from recorder import inference
from recorder.db import DatabaseGone, one_line
from recorder.gaps import CADENCE_POLLS, observed_threshold
from recorder.inference import StepResult, TargetState
from recorder.lease import LeaseLost, RecordingLease
from recorder.snapshot import Failure, Outcome, PollResult, Snapshot
from recorder.store import SetAside, Store

PollSource = Callable[[], PollResult]
# About a day of polls at the default interval, yet small in memory for ordinary lists.
MAX_PENDING = 10_000
# A poll whose write failed this often (on separate ticks) is set aside, if the database then
# takes a write: the database is up, and it is this poll that it refuses.
SET_ASIDE_AFTER = 2
_ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Recorded:
    """One poll as recorded: its row id, what the client got, and what it changed."""

    poll_id: int
    result: PollResult
    change: StepResult


class Pipeline:
    """Records successive polls of one target, carrying the inference state between them."""

    def __init__(
        self,
        store: Store,
        url: str,
        source: PollSource,
        *,
        gap_s: float | None,
        max_pending: int = MAX_PENDING,
        set_aside_after: int = SET_ASIDE_AFTER,
        name: str | None = None,
        service: str | None = None,
    ) -> None:
        """Prepare to record `url` into `store`; nothing is read or written yet.

        `gap_s` is the gap threshold (see recorder.gaps); None takes it from the cadence of the
        target's recent polls, for a one-shot poll whose schedule the recorder does not know.
        `name` and `service` label the target (see Store.target); None keeps its labels, or
        gives a new target those its URL implies.
        """
        self.store = store
        self.url = url
        self.name = name
        self.service = service
        self.source = source
        self.gap_s = gap_s
        self.target_id: int | None = None
        self.state = TargetState()
        self.last_ok_poll_id: int | None = None
        # When set, every write first checks that this process still holds the target.
        self.lease: RecordingLease | None = None
        # Polls made while the database could not take them, oldest first; written in order
        # once it can. Bounded: when full, newer polls are dropped and the record shows a gap.
        self.pending: deque[PollResult] = deque()
        self.max_pending = max_pending
        self.dropped = 0
        self.set_aside_after = set_aside_after
        self._head_failures = 0  # failed writes of pending[0]
        self._loaded = False

    def attach(self, now: float) -> int:
        """The target's id, created at `now` if the database has never seen it."""
        if self.target_id is None:
            self.target_id = self.store.target(self.url, now, name=self.name, service=self.service)
        return self.target_id

    def reload(self) -> None:
        """Continue from what the database holds (at start, or after another recorder wrote)."""
        assert self.target_id is not None, "attach() first"
        loaded = self.store.load(self.target_id)
        self.state, self.last_ok_poll_id = loaded.state, loaded.last_ok_poll_id
        self._loaded = True

    def poll_once(self) -> Recorded:
        """Poll once and record it (after any polls still waiting); returns this poll's record."""
        return self.collect()[-1]

    def collect(self) -> list[Recorded]:
        """Poll once, then write every poll waiting, oldest first.

        When the database fails, the poll waits in `pending` and the error propagates; the
        inference state advances only as each poll's write commits.
        """
        result = self.source()
        if len(self.pending) < self.max_pending:
            self.pending.append(result)
        else:
            self.dropped += 1
        return self.flush()

    def flush(self) -> list[Recorded]:
        """Write the waiting polls in order; stop at the first that fails.

        A poll that keeps failing while the database takes other writes is poison (a value
        no backend accepts): it is set aside whole, recorded as an `unstorable` failed poll,
        and the queue moves on. One bad poll never stops the recording.
        """
        written = []
        while self.pending:
            result = self.pending[0]
            try:
                recorded = self.record(result)
            except LeaseLost:
                raise
            except Exception as exc:
                if not poisonous(exc):
                    raise  # the database's trouble (full, locked, down): wait for it
                self._head_failures += 1
                if self._head_failures < self.set_aside_after:
                    raise
                recorded = self._set_aside(result, exc)
            self._head_failures = 0
            written.append(recorded)
            self.pending.popleft()
        return written

    def _set_aside(self, result: PollResult, exc: Exception) -> Recorded:
        error = f"could not be stored ({type(exc).__name__}: {one_line(exc)})"[:_ERROR_CHARS]
        failure = Failure(Outcome.UNSTORABLE, f"{error}; kept whole in the quarantine table")
        stand_in = dataclasses.replace(result, answer=failure)
        try:
            return self.record(stand_in, SetAside(result.received_at, error, poll_json(result)))
        except LeaseLost:
            raise
        except Exception:
            raise exc from None  # the database takes nothing: keep the poll and wait

    def record(self, result: PollResult, quarantine: SetAside | None = None) -> Recorded:
        """Infer what `result` changed and store it in one transaction."""
        target_id = self.attach(result.sent_at)
        if not self._loaded:
            self.reload()
        closed = {}
        if isinstance(result.answer, Snapshot):
            unknown = [
                i.api_id for i in result.answer.items if i.api_id not in self.state.open_jobs
            ]
            if unknown:
                closed = self.store.closed_jobs(target_id, unknown)
        timing = inference.PollTime(result.sent_at, result.received_at)
        gap_s = self.gap_s
        if gap_s is None:
            recent = self.store.recent_ok_polls(target_id, CADENCE_POLLS)
            gap_s = observed_threshold([*recent, result.sent_at]) or math.inf
        change = inference.step(self.state, timing, result.answer, closed, gap_s)
        poll_id = self.store.record(
            target_id, result, change, self.last_ok_poll_id, self.lease, quarantine
        )
        self.state = change.state
        if result.ok:
            self.last_ok_poll_id = poll_id
        return Recorded(poll_id, result, change)


# SQLite result codes and PostgreSQL SQLSTATE classes that a value causes, not the database's
# condition: too big, a constraint, a type mismatch, out of range; data exceptions, integrity,
# program limits (such as an index row over its size limit).
_SQLITE_DATA_ERRORS = frozenset({18, 19, 20, 25})
_POSTGRES_DATA_CLASSES = frozenset({"22", "23", "54"})


def poisonous(exc: Exception) -> bool:
    """True when a failed write is the poll's fault (a value), not the database's (full, locked,
    unreachable, read-only): only such a poll may be set aside."""
    if isinstance(exc, DatabaseGone):
        return False
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in _SQLITE_DATA_ERRORS
        state = getattr(orig, "sqlstate", None)
        if isinstance(state, str):
            return state[:2] in _POSTGRES_DATA_CLASSES
        return isinstance(exc, DataError | IntegrityError)
    # Anything else failed before the database saw it (a value no column type converts).
    return not isinstance(exc, SQLAlchemyError) or isinstance(exc, StatementError)


def poll_json(result: PollResult) -> str:
    """A poll as JSON (ASCII, so that any text survives storage), for the quarantine."""
    return json.dumps(dataclasses.asdict(result), ensure_ascii=True, default=str)
