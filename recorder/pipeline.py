"""One target's recording loop body: poll → normalized snapshot → inference → store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recorder import inference
from recorder.inference import StepResult, TargetState
from recorder.lease import RecordingLease
from recorder.snapshot import PollResult, Snapshot
from recorder.store import Store

PollSource = Callable[[], PollResult]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One poll as recorded: its row id, what the client got, and what it changed."""

    poll_id: int
    result: PollResult
    change: StepResult


class Pipeline:
    """Records successive polls of one target, carrying the inference state between them."""

    def __init__(self, store: Store, url: str, source: PollSource, *, gap_s: float) -> None:
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
        """Poll once and record it; the state advances only once the write committed."""
        return self.record(self.source())

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
