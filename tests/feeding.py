"""Build PollResults from a simulator's world, without HTTP, for store and pipeline tests."""

from __future__ import annotations

from recorder.parse import normalize_items
from recorder.simulator import ManualClock, Simulator
from recorder.snapshot import Failure, Outcome, PollResult, Snapshot


def ok(sim: Simulator, clock: ManualClock, latency: float = 0.05) -> PollResult:
    """A successful poll of `sim` at the clock's time."""
    snapshot = normalize_items(list(sim.listing(clock.t + latency / 2)))
    return PollResult(clock.t, clock.t + latency, 200, snapshot)


def failed(clock: ManualClock, outcome: Outcome = Outcome.SERVER) -> PollResult:
    """A failed poll at the clock's time."""
    return PollResult(clock.t, clock.t + 0.05, 503, Failure(outcome, "HTTP 503"))


def empty(clock: ManualClock) -> PollResult:
    """A glitching poll: an empty list although jobs run."""
    return PollResult(clock.t, clock.t + 0.05, 200, Snapshot(items=()))
