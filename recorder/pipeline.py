"""One target's recording loop body: poll → normalized snapshot → inference → store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recorder import inference
from recorder.inference import StepResult
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
        """Attach to `url`'s history in `store`, continuing where the last recorder stopped."""
        self.store = store
        self.url = url
        self.source = source
        self.gap_s = gap_s
        self.target_id: int | None = None
        self._loaded = False

    def _ensure_loaded(self, now: float) -> None:
        if self._loaded:
            return
        self.target_id = self.store.target(self.url, now)
        loaded = self.store.load(self.target_id)
        self.state = loaded.state
        self.last_ok_poll_id = loaded.last_ok_poll_id
        self._loaded = True

    def poll_once(self) -> Recorded:
        """Poll once and record it; the state advances only once the write committed."""
        return self.record(self.source())

    def record(self, result: PollResult) -> Recorded:
        """Infer what `result` changed and store it in one transaction."""
        self._ensure_loaded(result.sent_at)
        assert self.target_id is not None
        closed = {}
        if isinstance(result.answer, Snapshot):
            unknown = [
                i.api_id for i in result.answer.items if i.api_id not in self.state.open_jobs
            ]
            if unknown:
                closed = self.store.closed_jobs(self.target_id, unknown)
        timing = inference.PollTime(result.sent_at, result.received_at)
        change = inference.step(self.state, timing, result.answer, closed, self.gap_s)
        poll_id = self.store.record(self.target_id, result, change, self.last_ok_poll_id)
        self.state = change.state
        if result.ok:
            self.last_ok_poll_id = poll_id
        return Recorded(poll_id, result, change)
