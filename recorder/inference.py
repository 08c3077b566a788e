"""Infer when jobs start and end from successive snapshots of the executing list.

Everything here is pure: no I/O, no clock reads. The daemon feeds one poll at a time to
:func:`step` together with the state the previous poll left, and stores what comes out.

Times are floats, seconds since the epoch, UTC, on the recorder's clock unless a name says
``server``. The API server's clock may be skewed: we never subtract a server timestamp from one
of ours. Instead each successful poll yields an estimate of the *server time* at which the list
was taken (``server_time``), found from the items that carry both ``started`` and ``elapsed``;
its difference from our clock is the skew (``offset``), which converts ``started`` to our clock.

How the bounds are derived (``sent``/``received`` are a poll's times on our clock):

* A job listed by a poll was running at some instant in ``[sent, received]``.
* A job missing from a successful poll was not running at some instant in ``[sent, received]``.
* So a job closed by poll N, last listed by poll L, ended in ``[L.sent, N.received]``.
* ``elapsed`` is whole seconds, truncated, so the job's age at the listing instant was in
  ``[elapsed, elapsed + 1)``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from recorder.snapshot import Failure, Item, Snapshot

# `started` carries milliseconds; a value rounded to them is off by at most half of one.
_STARTED_RESOLUTION_S = 0.001


class StartSource(StrEnum):
    """Which evidence a job's start estimate comes from."""

    STARTED = "started"  # the API's `started`, converted to our clock with the estimated skew
    ELAPSED = "elapsed"  # our poll time minus the API's `elapsed`
    POLL = "poll"  # only the polls: between the previous successful poll and this one


@dataclass(frozen=True, slots=True)
class PollTime:
    """When a poll was sent and answered, on the recorder's clock."""

    sent_at: float
    received_at: float

    @property
    def mid(self) -> float:
        """Best single guess of the instant the server took its list."""
        return (self.sent_at + self.received_at) / 2


@dataclass(frozen=True, slots=True)
class Bounded:
    """A value with the interval that certainly contains the truth (None: unbounded)."""

    at: float
    lo: float | None
    hi: float | None


@dataclass(frozen=True, slots=True)
class Offset:
    """Server clock minus our clock, with a half-width that bounds the error."""

    seconds: float
    error: float


@dataclass(frozen=True, slots=True)
class ItemState:
    """What the list says about a job, and how to predict its `elapsed` at later polls.

    ``elapsed_origin`` is an instant on the server's clock such that
    ``floor(server_time - elapsed_origin)`` gives the `elapsed` that a poll shows; None when
    the job shows no `elapsed`. Storing it once, instead of `elapsed` at every poll, is what
    lets a poll with no change write nothing per job.
    """

    type: str | None
    started_raw: str | None
    reply_url: str | None
    reply_ref: str | None
    elapsed_origin: float | None

    def predict_elapsed(self, server_time: float) -> int | None:
        """The `elapsed` this state predicts for a poll taken at `server_time`."""
        if self.elapsed_origin is None:
            return None
        return math.floor(server_time - self.elapsed_origin)


@dataclass(frozen=True, slots=True)
class JobState:
    """What the inference needs to know about a job between polls."""

    api_id: str
    start: Bounded
    start_source: StartSource
    item: ItemState


@dataclass(frozen=True, slots=True)
class TargetState:
    """Everything one poll leaves for the next, for one target."""

    open_jobs: Mapping[str, JobState] = field(default_factory=dict)
    last_ok: PollTime | None = None
    failures_since_ok: int = 0
    offset: Offset | None = None


@dataclass(frozen=True, slots=True)
class Opened:
    """A job seen for the first time."""

    job: JobState
    item: Item


@dataclass(frozen=True, slots=True)
class Reopened:
    """A closed job listed again: its close was wrong, so it runs on."""

    job: JobState


@dataclass(frozen=True, slots=True)
class Observed:
    """The list shows a job differently from what its stored state predicts."""

    api_id: str
    item: ItemState
    elapsed_s: int | None


@dataclass(frozen=True, slots=True)
class Closed:
    """A job no longer listed by a successful poll."""

    api_id: str
    end: Bounded
    duration: Bounded
    across_gap: bool


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one poll changed: the next state and the events to store."""

    state: TargetState
    server_time: float | None = None
    after_gap: bool = False  # a successful poll that ends a gap in the record
    opened: tuple[Opened, ...] = ()
    reopened: tuple[Reopened, ...] = ()
    observed: tuple[Observed, ...] = ()
    closed: tuple[Closed, ...] = ()

    @property
    def changed(self) -> bool:
        """True when the poll changed any job."""
        return bool(self.opened or self.reopened or self.observed or self.closed)


def step(
    state: TargetState,
    poll: PollTime,
    answer: Snapshot | Failure,
    closed_jobs: Mapping[str, JobState],
    gap_s: float,
) -> StepResult:
    """Advance `state` by one poll.

    Polls must come in order, each sent after the previous one was answered (the daemon polls
    one at a time, on a steady clock). `closed_jobs` holds the stored state of every
    already-closed job whose id is in this answer and not open (the caller looks them up).
    A gap is any failed poll, or more than `gap_s` seconds, between two successful polls;
    jobs closed across one are flagged.
    """
    if isinstance(answer, Failure):
        return StepResult(state=replace(state, failures_since_ok=state.failures_since_ok + 1))

    server_time, offset = estimate_server_time(answer.items, poll, state)
    opened: list[Opened] = []
    reopened: list[Reopened] = []
    observed: list[Observed] = []
    open_jobs = dict(state.open_jobs)

    for item in answer.items:
        job = open_jobs.get(item.api_id)
        if job is None and item.api_id in closed_jobs:
            job = closed_jobs[item.api_id]
            reopened.append(Reopened(job))
        if job is None:
            job = _open(item, poll, state.last_ok, offset, server_time)
            opened.append(Opened(job, item))
            observed.append(Observed(item.api_id, job.item, item.elapsed_s))
        else:
            change = _observe(job.item, item, server_time)
            if change is not None:
                observed.append(Observed(item.api_id, change, item.elapsed_s))
                job = replace(job, item=change)
        open_jobs[item.api_id] = job

    listed = {item.api_id for item in answer.items}
    across_gap = _gap_since_last_ok(state, poll, gap_s)
    closed = tuple(
        _close(job, state.last_ok, poll, across_gap)
        for api_id, job in state.open_jobs.items()
        if api_id not in listed
    )
    for event in closed:
        del open_jobs[event.api_id]

    next_state = TargetState(
        open_jobs=open_jobs, last_ok=poll, failures_since_ok=0, offset=offset or state.offset
    )
    return StepResult(
        state=next_state,
        server_time=server_time,
        after_gap=across_gap,
        opened=tuple(opened),
        reopened=tuple(reopened),
        observed=tuple(observed),
        closed=closed,
    )


def estimate_server_time(
    items: Iterable[Item], poll: PollTime, state: TargetState
) -> tuple[float, Offset | None]:
    """The server time at which the list was taken, and the skew it implies.

    Each item with `started` and `elapsed` says the server time was in
    ``[started + elapsed, started + elapsed + 1)``; the intersection over items bounds it.
    Without such items, known jobs' stored elapsed origins stand in; without those, our
    clock plus the last known skew.
    """
    items = list(items)
    windows = [
        i.started + i.elapsed_s for i in items if i.started is not None and i.elapsed_s is not None
    ]
    if windows:
        return _from_windows(windows, poll, exact=True)
    origins = [
        job.item.elapsed_origin + i.elapsed_s
        for i in items
        if i.elapsed_s is not None
        and (job := state.open_jobs.get(i.api_id)) is not None
        and job.item.elapsed_origin is not None
    ]
    if origins:
        server_time, _ = _from_windows(origins, poll, exact=False)
        return server_time, None
    skew = state.offset.seconds if state.offset else 0.0
    return poll.mid + skew, None


def _from_windows(lows: list[float], poll: PollTime, *, exact: bool) -> tuple[float, Offset | None]:
    lo, hi = max(lows), min(lows) + 1.0
    if lo < hi:
        server_time = (lo + hi) / 2
        # The list was taken at some instant in [sent, received] on our clock.
        low_offset, high_offset = lo - poll.received_at, hi - poll.sent_at
    else:
        # Items disagree (a server that computes `elapsed` at different instants): take the
        # median and widen the error to cover every item.
        server_time = statistics.median(low + 0.5 for low in lows)
        low_offset = min(lows) - poll.received_at
        high_offset = max(lows) + 1.0 - poll.sent_at
    if not exact:
        return server_time, None
    centre = (low_offset + high_offset) / 2
    return server_time, Offset(seconds=centre, error=(high_offset - low_offset) / 2)


def _open(
    item: Item,
    poll: PollTime,
    last_ok: PollTime | None,
    offset: Offset | None,
    server_time: float,
) -> JobState:
    # Had the job run at the previous successful poll, that poll would have listed it.
    poll_lo = last_ok.sent_at if last_ok is not None else None
    poll_hi = poll.received_at
    if item.started is not None and offset is not None:
        at = item.started - offset.seconds
        err = offset.error + _STARTED_RESOLUTION_S
        start, source = _within(at, at - err, at + err, poll_lo, poll_hi), StartSource.STARTED
    elif item.started is not None:
        # No item has ever shown `elapsed`, so the skew is unknown: trust `started` as is,
        # but keep the bounds that the polls alone give.
        start, source = _clamp(item.started, poll_lo, poll_hi), StartSource.STARTED
    elif item.elapsed_s is not None:
        age = item.elapsed_s
        start = _within(
            poll.mid - age - 0.5, poll.sent_at - age - 1.0, poll.received_at - age, poll_lo, poll_hi
        )
        source = StartSource.ELAPSED
    else:
        at = (poll_lo + poll_hi) / 2 if poll_lo is not None else poll_hi
        start, source = Bounded(at, poll_lo, poll_hi), StartSource.POLL
    origin = _origin(item, server_time)
    return JobState(item.api_id, start, source, _item_state(item, origin=origin))


def _within(at: float, lo: float, hi: float, poll_lo: float | None, poll_hi: float) -> Bounded:
    """Narrow item-based bounds by the polls' bounds, where the two agree."""
    hi = min(hi, poll_hi)
    if poll_lo is not None and poll_lo <= hi:
        lo = max(lo, poll_lo)
    # A list that missed a running job (an upstream glitch) can push poll_lo past the truth;
    # then the item's own evidence wins.
    lo = min(lo, hi)
    return Bounded(min(max(at, lo), hi), lo, hi)


def _clamp(at: float, lo: float | None, hi: float) -> Bounded:
    value = min(at, hi)
    if lo is not None:
        value = max(value, lo)
    return Bounded(value, lo, hi)


def _item_state(item: Item, origin: float | None) -> ItemState:
    return ItemState(
        type=item.type,
        started_raw=item.started_raw,
        reply_url=item.reply_url,
        reply_ref=item.reply_ref,
        elapsed_origin=origin,
    )


def _origin(item: Item, server_time: float) -> float | None:
    """An elapsed origin that reproduces this item's `elapsed` at `server_time`."""
    if item.elapsed_s is None:
        return None
    if item.started is not None and math.floor(server_time - item.started) == item.elapsed_s:
        return item.started
    return server_time - item.elapsed_s - 0.5


def _observe(current: ItemState, item: Item, server_time: float) -> ItemState | None:
    """The job's new state if the item differs from what `current` predicts, else None."""
    same_fields = (
        current.type == item.type
        and current.started_raw == item.started_raw
        and current.reply_url == item.reply_url
        and current.reply_ref == item.reply_ref
    )
    if same_fields and current.predict_elapsed(server_time) == item.elapsed_s:
        return None
    return _item_state(item, origin=_origin(item, server_time))


def _gap_since_last_ok(state: TargetState, poll: PollTime, gap_s: float) -> bool:
    if state.last_ok is None:
        return False
    return state.failures_since_ok > 0 or poll.sent_at - state.last_ok.received_at > gap_s


def _close(job: JobState, last_ok: PollTime | None, poll: PollTime, across_gap: bool) -> Closed:
    # Every open job was listed by the last successful poll (else that poll closed it).
    end_lo = last_ok.sent_at if last_ok is not None else job.start.at
    end = Bounded((end_lo + poll.received_at) / 2, end_lo, poll.received_at)
    return Closed(job.api_id, end, duration_of(job.start, end), across_gap)


def duration_of(start: Bounded, end: Bounded) -> Bounded:
    """A job's duration from its start and end, with bounds that contain the truth."""
    end_lo = end.lo if end.lo is not None else end.at
    start_hi = start.hi if start.hi is not None else start.at
    lo = max(0.0, end_lo - start_hi)
    hi = end.hi - start.lo if end.hi is not None and start.lo is not None else None
    at = max(end.at - start.at, lo)
    if hi is not None:
        at = min(at, hi)
    return Bounded(at, lo, hi)
