"""Infer when jobs start and end from successive snapshots of the executing list.

Everything here is pure: no I/O, no clock reads. The daemon feeds one poll at a time to
:func:`step` together with the state the previous poll left, and stores what comes out.

Times are floats, seconds since the epoch, UTC, on the recorder's clock unless a name says
``server``. The API server's clock may be skewed: we never subtract a server timestamp from one
of ours. Instead each successful poll yields an estimate of the *server time* at which the list
was taken (``server_time``), found from the largest group of items whose ``started`` (with
``elapsed``) agree; its difference from our clock is the skew (``offset``), which converts
``started`` to our clock. An item outside that group is an outlier: its ``started`` is never
read with the skew, and it never moves the skew (see :func:`estimate_clock`).

How the bounds are derived (``sent``/``received`` are a poll's times on our clock):

* A job listed by a poll was running at some instant in ``[sent, received]``.
* A job missing from a successful poll was not running at some instant in ``[sent, received]``.
* So a job closed by poll N, last listed by poll L, ended in ``[L.sent, N.received]``.
* ``elapsed`` is whole seconds, truncated, so the job's age at the listing instant was in
  ``[elapsed, elapsed + 1)``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from recorder.snapshot import Failure, Item, Snapshot

# `started` carries milliseconds; a value rounded to them is off by at most half of one.
_STARTED_RESOLUTION_S = 0.001
# Server-time windows are widened by that, so that honest items always share a point.
_PAD_S = _STARTED_RESOLUTION_S
# How far an `elapsed` may sit past the boundary that an origin at the item's own `started`
# predicts and still count as predicted: an upstream that rounds `started` from a finer clock
# puts each job up to half a millisecond off, and the server time is estimated from such items.
_ELAPSED_TOLERANCE_S = _STARTED_RESOLUTION_S
# How far the server clock may drift from the previous poll's skew and still agree with it.
_PRIOR_SLACK_S = 2.0
# More camps of equal size than this: the list has no consensus about the server's clock.
_MAX_CAMPS = 8

# A start on our clock: (estimate, low bound, high bound).
_Span = tuple[float, float, float]


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


def poll_offset(sent_at: float, received_at: float, server_time: float) -> float:
    """The skew that a recorded successful poll implies: the server time the list was taken
    at (``polls.server_time``) minus the middle of the poll on our clock. Every reader of the
    skew takes it from the latest successful poll this way: a restarted daemon
    (Store.load), the metrics' gauge and `recorder status`."""
    return server_time - (sent_at + received_at) / 2


@dataclass(frozen=True, slots=True)
class ServerClock:
    """What one poll says about the server's clock."""

    server_time: float  # when the server took the list, on its clock
    offset: Offset | None = None  # the consensus's skew; None when no trusted window sets it
    # Items whose `started` the consensus cannot explain; their starts ignore that skew.
    outliers: frozenset[str] = frozenset()
    skews: tuple[Offset, ...] = ()  # every skew an outlier's `started` might be read with


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

    def predicts(self, item: Item, server_time: float) -> bool:
        """True when this state predicts the item's `elapsed` at `server_time`.

        Exactly, or, when the origin is the item's own `started`, within _ELAPSED_TOLERANCE_S
        of the second that `elapsed` names: what rounding `started` from a finer clock explains.
        """
        if self.predict_elapsed(server_time) == item.elapsed_s:
            return True
        if item.elapsed_s is None or item.started is None or self.elapsed_origin != item.started:
            return False
        return _explains(item.started, item.elapsed_s, server_time)


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

    clock = estimate_clock(answer.items, poll, state, closed_jobs)
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
            job = _open(item, poll, state.last_ok, clock)
            opened.append(Opened(job, item))
            observed.append(Observed(item.api_id, job.item, item.elapsed_s))
        else:
            change = _observe(job.item, item, clock.server_time, item.api_id not in clock.outliers)
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
        open_jobs=open_jobs, last_ok=poll, failures_since_ok=0, offset=clock.offset or state.offset
    )
    return StepResult(
        state=next_state,
        server_time=clock.server_time,
        after_gap=across_gap,
        opened=tuple(opened),
        reopened=tuple(reopened),
        observed=tuple(observed),
        closed=closed,
    )


def estimate_clock(
    items: Iterable[Item],
    poll: PollTime,
    state: TargetState,
    closed_jobs: Mapping[str, JobState] | None = None,
) -> ServerClock:
    """What this poll's list says about the server's clock: a consensus, and who disagrees with it.

    Every item with `started` is a witness of the server time at which the list was taken (see
    :func:`_witnesses`). The largest group of witnesses that share a point is the consensus; a
    tie is broken by the previous poll's skew, else the poll stays unresolved. Only the
    consensus's started+elapsed windows set the server time and the skew; an item outside it is
    an outlier, whose `started` nobody reads with that skew. `closed_jobs` is as for :func:`step`.
    """
    items = list(items)
    witnesses = _witnesses(items, poll, state, closed_jobs or {})
    found = _largest_groups([(w.lo, w.hi) for w in witnesses])
    fallback = _fallback_time(items, poll, state)
    if found is None:
        # Items that all disagree (a server that computes `elapsed` at other instants than
        # `started`, or lies): no skew, and no `started` is read; starts rest on `elapsed`
        # and the polls.
        return ServerClock(
            fallback, None, frozenset(i.api_id for i in items if i.started is not None)
        )
    camps = _prefer_prior(found, witnesses, state, poll)
    if not camps:
        return ServerClock(fallback)
    groups = [[witnesses[k] for k in camp] for camp in camps]
    skews = tuple(_camp_skew(group, poll) for group in groups)
    if len(groups) > 1:
        # Equal camps that the previous skew cannot tell apart: any of them may be the clock,
        # so no `started` is read with one skew; each start covers every camp's reading.
        dated = frozenset(i.api_id for i in items if i.started is not None)
        return ServerClock(fallback, None, dated, skews)
    camp = groups[0]
    outliers = _outside(items, camp, witnesses)
    windows = [w for w in camp if w.window]
    if not windows:
        # Only items with `started` alone agree, within their poll bounds: too loose a skew.
        return ServerClock(fallback, None, outliers, skews)
    lo, hi = max(w.lo for w in windows), min(w.hi for w in windows)
    return ServerClock((lo + hi) / 2, skews[0], outliers, skews)


def _outside(items: list[Item], camp: list[_Witness], witnesses: list[_Witness]) -> frozenset[str]:
    """The items with `started` that the winning camp cannot explain."""
    members = {w.key for w in camp}
    witnessed = {w.key for w in witnesses}
    camp_hi = min(w.hi for w in camp)
    return frozenset(
        i.api_id
        for i in items
        if i.started is not None
        and i.api_id not in members
        # An item that is no witness only proves it started before the list was taken.
        and (i.api_id in witnessed or i.started - _PAD_S > camp_hi)
    )


@dataclass(frozen=True, slots=True)
class _Witness:
    """An interval of server time in which one piece of evidence puts the list."""

    key: str
    lo: float
    hi: float
    window: bool  # from `started` + `elapsed`: the only evidence precise enough to set the skew


def _witnesses(
    items: list[Item], poll: PollTime, state: TargetState, closed_jobs: Mapping[str, JobState]
) -> list[_Witness]:
    """The server-time intervals in which the items' `started` put the list.

    `elapsed` is truncated, so an item with both says ``[started + elapsed, started + elapsed
    + 1)``. An item with `started` alone says that ``server time - started``, the job's age, is
    an age its start bounds on our clock allow at this poll: the polls' bounds for a new job,
    the stored ones for a known job (none before a first successful poll: no witness).
    Intervals are widened by the millisecond rounding of `started`.
    """
    found = []
    for item in items:
        if item.started is None:
            continue
        if item.elapsed_s is not None:
            low = item.started + item.elapsed_s
            found.append(_Witness(item.api_id, low - _PAD_S, low + 1.0 + _PAD_S, window=True))
            continue
        start = _known_start(item.api_id, poll, state, closed_jobs)
        if start is not None and start.lo is not None and start.hi is not None:
            # A job listed by this list started before it was taken, on any clock.
            youngest = max(0.0, poll.sent_at - start.hi)
            oldest = poll.received_at - start.lo
            lo, hi = item.started + youngest - _PAD_S, item.started + oldest + _PAD_S
            found.append(_Witness(item.api_id, lo, hi, window=False))
    return found


def _known_start(
    api_id: str, poll: PollTime, state: TargetState, closed_jobs: Mapping[str, JobState]
) -> Bounded | None:
    """What we know of a job's start on our clock before reading this item's `started`."""
    job = state.open_jobs.get(api_id) or closed_jobs.get(api_id)
    if job is not None:
        return job.start
    if state.last_ok is None:
        return None
    # New: not listed by the previous successful poll (barring a glitch), listed by this one.
    return Bounded(poll.received_at, state.last_ok.sent_at, poll.received_at)


def _largest_groups(spans: list[tuple[float, float]]) -> list[list[int]] | None:
    """The largest sets of closed spans that share a point (max overlap), each set once.

    None when more than _MAX_CAMPS sets tie: no clock is the consensus of such a list, and
    listing every set would cost a hostile list of n items n² work.
    """
    if not spans:
        return []
    lows = sorted(lo for lo, _ in spans)
    highs = sorted(hi for _, hi in spans)
    # Where closed spans overlap most, some span begins; count the spans covering each start.
    counts = {lo: bisect_right(lows, lo) - bisect_left(highs, lo) for lo in lows}
    most = max(counts.values())
    points = sorted(p for p, n in counts.items() if n == most)
    if len(points) > _MAX_CAMPS:
        return None
    # Distinct starts with the same count cover distinct sets: between two of them a span
    # began, so (the counts being equal) another one ended.
    return [[k for k, (lo, hi) in enumerate(spans) if lo <= point <= hi] for point in points]


def _prefer_prior(
    camps: list[list[int]], witnesses: list[_Witness], state: TargetState, poll: PollTime
) -> list[list[int]]:
    """Break a tie between equal camps by the previous poll's skew, when it picks exactly one.

    The previous skew is not a vote: a unique largest camp wins even against it, because a
    server clock may step and an item that disagrees alone gets its start from its own window,
    which equals what its `elapsed` gives.
    """
    if len(camps) < 2 or state.offset is None:
        return camps
    slack = state.offset.error + _PRIOR_SLACK_S
    lo = poll.sent_at + state.offset.seconds - slack
    hi = poll.received_at + state.offset.seconds + slack
    agreeing = [
        camp
        for camp in camps
        if max(witnesses[k].lo for k in camp) <= hi and lo <= min(witnesses[k].hi for k in camp)
    ]
    return agreeing if len(agreeing) == 1 else camps


def _camp_skew(camp: list[_Witness], poll: PollTime) -> Offset:
    """The skew a camp implies: list taken at an instant in ``[sent, received]`` on our clock."""
    windows = [w for w in camp if w.window]
    if windows:
        lo, hi = max(w.lo for w in windows), min(w.hi for w in windows)
    else:
        # Loose witnesses only: their hull, so that the skew holds if any one of them is true.
        lo, hi = min(w.lo for w in camp), max(w.hi for w in camp)
    low_offset, high_offset = lo - poll.received_at, hi - poll.sent_at
    return Offset((low_offset + high_offset) / 2, (high_offset - low_offset) / 2)


def _fallback_time(items: list[Item], poll: PollTime, state: TargetState) -> float:
    """The server time when no trusted window sets it: from known jobs, else our clock."""
    lows = []
    for i in items:
        job = state.open_jobs.get(i.api_id)
        if i.elapsed_s is not None and job is not None and job.item.elapsed_origin is not None:
            lows.append(job.item.elapsed_origin + i.elapsed_s)
    groups = _largest_groups([(low, low + 1.0) for low in lows])
    if groups:  # (None: no agreement to speak of)
        # Stored origins were all set against our own estimates, so they rarely disagree;
        # when they do, the largest agreeing group keeps the most predictions intact.
        lo, hi = max(lows[k] for k in groups[0]), min(lows[k] for k in groups[0]) + 1.0
        return (lo + hi) / 2
    skew = state.offset.seconds if state.offset else 0.0
    return poll.mid + skew


def _open(item: Item, poll: PollTime, last_ok: PollTime | None, clock: ServerClock) -> JobState:
    # Had the job run at the previous successful poll, that poll would have listed it.
    poll_lo = last_ok.sent_at if last_ok is not None else None
    poll_hi = poll.received_at
    trusted = item.api_id not in clock.outliers
    if not trusted:
        start, source = _untrusted_start(item, poll, poll_lo, clock.skews)
    elif item.started is not None and clock.offset is not None:
        at = item.started - clock.offset.seconds
        err = clock.offset.error + _STARTED_RESOLUTION_S
        start, source = _within(at, at - err, at + err, poll_lo, poll_hi), StartSource.STARTED
    elif item.elapsed_s is not None:
        at, lo, hi = _elapsed_span(item.elapsed_s, poll)
        start, source = _within(at, lo, hi, poll_lo, poll_hi), StartSource.ELAPSED
    elif item.started is not None:
        # No trusted window sets the skew (no item shows `elapsed`, or only `started`-alone
        # items agree): trust `started` as is, but keep the bounds that the polls alone give.
        start, source = _clamp(item.started, poll_lo, poll_hi), StartSource.STARTED
    else:
        start, source = _poll_start(poll_lo, poll_hi), StartSource.POLL
    origin = _origin(item, clock.server_time, trust_started=trusted)
    return JobState(item.api_id, start, source, _item_state(item, origin=origin))


def _untrusted_start(
    item: Item, poll: PollTime, poll_lo: float | None, skews: tuple[Offset, ...]
) -> tuple[Bounded, StartSource]:
    """A start for an item the consensus cannot vouch for, true whichever of its fields lied.

    Each reading is a possible truth: its `elapsed` (if `started` lied), and its `started`
    under each camp's skew (if `elapsed` lied, or that camp is the real clock). The polls
    rule readings out; the start covers every reading left.
    """
    poll_hi = poll.received_at
    if item.started is not None and not skews:
        # No skew to read its `started` with: only the polls bound the start, whichever field
        # lied; `elapsed`, when shown, is the best guess within them.
        bounds = _poll_start(poll_lo, poll_hi)
        if item.elapsed_s is None:
            return bounds, StartSource.POLL
        guess = min(_elapsed_span(item.elapsed_s, poll)[0], poll_hi)
        if poll_lo is not None:
            guess = max(guess, poll_lo)
        return Bounded(guess, bounds.lo, bounds.hi), StartSource.ELAPSED
    readings: list[tuple[_Span, StartSource]] = []
    if item.elapsed_s is not None:
        readings.append((_elapsed_span(item.elapsed_s, poll), StartSource.ELAPSED))
    if item.started is not None:
        for skew in skews:
            at, err = item.started - skew.seconds, skew.error + _STARTED_RESOLUTION_S
            readings.append(((at, at - err, at + err), StartSource.STARTED))
    # Listed by this poll, so started before it was answered: a later reading is a lie.
    possible = [r for r in readings if r[0][1] <= poll_hi]
    # Not listed by the previous poll, so it started after that poll was sent. Unlike _within,
    # the polls win here: the item is already suspect, so a reading from before is taken for a
    # lie rather than for a glitch of that list.
    kept = [r for r in possible if poll_lo is None or r[0][2] >= poll_lo]
    if not kept:
        return _poll_start(poll_lo, poll_hi), StartSource.POLL
    # `elapsed` comes first: it needs no skew, so it is the best single guess.
    (at, _, _), source = kept[0]
    lo = min(span[1] for span, _ in kept)
    hi = max(span[2] for span, _ in kept)
    return _within(at, lo, hi, poll_lo, poll_hi), source


def _elapsed_span(elapsed: int, poll: PollTime) -> _Span:
    """Start (estimate, low, high) on our clock from an `elapsed` seen by this poll."""
    return poll.mid - elapsed - 0.5, poll.sent_at - elapsed - 1.0, poll.received_at - elapsed


def _poll_start(poll_lo: float | None, poll_hi: float) -> Bounded:
    at = (poll_lo + poll_hi) / 2 if poll_lo is not None else poll_hi
    return Bounded(at, poll_lo, poll_hi)


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


def _origin(item: Item, server_time: float, *, trust_started: bool) -> float | None:
    """An elapsed origin that reproduces this item's `elapsed` at `server_time`."""
    if item.elapsed_s is None:
        return None
    # An outlier's `started` is not on the clock `server_time` reads, whatever it happens to fit.
    if (
        trust_started
        and item.started is not None
        and _explains(item.started, item.elapsed_s, server_time)
    ):
        return item.started
    return server_time - item.elapsed_s - 0.5


def _explains(started: float, elapsed: int, server_time: float) -> bool:
    """True when `started` gives `elapsed` at `server_time`, to _ELAPSED_TOLERANCE_S.

    The age `server_time - started` lies in ``[elapsed, elapsed + 1)`` widened by the tolerance
    on both sides. An origin at `started` then predicts the exact `elapsed` at every later poll
    but those where the job's age is again within the tolerance of a whole second.
    """
    age = server_time - started
    return elapsed - _ELAPSED_TOLERANCE_S <= age < elapsed + 1.0 + _ELAPSED_TOLERANCE_S


def _observe(current: ItemState, item: Item, server_time: float, trusted: bool) -> ItemState | None:
    """The job's new state if the item differs from what `current` predicts, else None."""
    same_fields = (
        current.type == item.type
        and current.started_raw == item.started_raw
        and current.reply_url == item.reply_url
        and current.reply_ref == item.reply_ref
    )
    if same_fields and current.predicts(item, server_time):
        return None
    return _item_state(item, origin=_origin(item, server_time, trust_started=trusted))


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
