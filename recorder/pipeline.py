"""One target's recording loop body: poll → normalized snapshot → inference → store."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from recorder import inference
from recorder.inference import StepResult, TargetState
from recorder.lease import RecordingLease
from recorder.snapshot import PollResult, Snapshot
from recorder.store import Store

PollSource = Callable[[], PollResult]
# About a day of polls at the default interval, yet small in memory for ordinary lists.
MAX_PENDING = 10_000


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
        gap_s: float,
        max_pending: int = MAX_PENDING,
    ) -> None:
        """Prepare to record `url` into `store`; nothing is read or written yet."""
        self.store = store
        self.url = url
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
        self._loaded = False

    def attach(self, now: float) -> int:
        """The target's id, created at `now` if the database has never seen it."""
        if self.target_id is None:
            self.target_id = self.store.target(self.url, now)
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
        """Write the waiting polls in order; stop at the first that fails."""
        written = []
        while self.pending:
            written.append(self.record(self.pending[0]))
            self.pending.popleft()
        return written

    def record(self, result: PollResult) -> Recorded:
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
        change = inference.step(self.state, timing, result.answer, closed, self.gap_s)
        poll_id = self.store.record(target_id, result, change, self.last_ok_poll_id, self.lease)
        self.state = change.state
        if result.ok:
            self.last_ok_poll_id = poll_id
        return Recorded(poll_id, result, change)
