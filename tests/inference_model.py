"""A ground-truth model for inference tests: true jobs, polls, and what the API would list."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from recorder.inference import (
    Bounded,
    Closed,
    JobState,
    PollTime,
    StepResult,
    TargetState,
    step,
)
from recorder.snapshot import Failure, Item, Outcome, Snapshot


@dataclass(frozen=True)
class TrueJob:
    api_id: str
    start: float
    end: float
    show_started: bool = True
    show_elapsed: bool = True
    started_shift: float = 0.0  # a bogus `started`: the API shows it off by this much

    @property
    def honest(self) -> bool:
        """True when the API shows this job's `started` as its server clock stamped it."""
        return self.started_shift == 0.0


@dataclass(frozen=True)
class TruePoll:
    sent_at: float
    latency: float
    listed_at: float  # the instant in [sent, sent + latency] the server took its list
    ok: bool = True
    drop: frozenset[str] = frozenset()  # ids a glitching list leaves out


def iso(ts: float) -> str:
    """Format like the API: ISO-8601 UTC with milliseconds and Z."""
    whole = datetime.fromtimestamp(ts, tz=UTC)
    return whole.strftime("%Y-%m-%dT%H:%M:%S.") + f"{whole.microsecond // 1000:03d}Z"


def listing(jobs: list[TrueJob], poll: TruePoll, skew: float) -> Snapshot:
    """The snapshot the API would answer at `poll.listed_at` with its clock off by `skew`."""
    items = []
    for job in jobs:
        if not (job.start <= poll.listed_at < job.end) or job.api_id in poll.drop:
            continue
        started_ms = round((job.start + skew + job.started_shift) * 1000) / 1000
        items.append(
            Item(
                api_id=job.api_id,
                type="video",
                started_raw=iso(started_ms) if job.show_started else None,
                started=started_ms if job.show_started else None,
                elapsed_s=math.floor(poll.listed_at - job.start) if job.show_elapsed else None,
            )
        )
    return Snapshot(items=tuple(items))


@dataclass
class Record:
    """A job as the store would hold it after replaying events."""

    state: JobState
    opened: int = 1
    reopened: int = 0
    end: Bounded | None = None
    duration: Bounded | None = None
    across_gap: bool = False


@dataclass
class Replay:
    """Feeds polls to the inference and keeps what a store would keep."""

    gap_s: float
    state: TargetState = field(default_factory=TargetState)
    records: dict[str, Record] = field(default_factory=dict)
    results: list[StepResult] = field(default_factory=list)

    def feed(self, poll: PollTime, answer: Snapshot | Failure) -> StepResult:
        closed = {}
        if isinstance(answer, Snapshot):
            closed = {
                i.api_id: rec.state
                for i in answer.items
                if (rec := self.records.get(i.api_id)) is not None and rec.end is not None
            }
        result = step(self.state, poll, answer, closed, self.gap_s)
        self._apply(result)
        self.state = result.state
        self.results.append(result)
        return result

    def _apply(self, result: StepResult) -> None:
        for opened in result.opened:
            assert opened.job.api_id not in self.records, "a second row for one id"
            self.records[opened.job.api_id] = Record(state=opened.job)
        for reopened in result.reopened:
            rec = self.records[reopened.job.api_id]
            rec.reopened += 1
            rec.end = rec.duration = None
            rec.across_gap = False
        for event in result.closed:
            self._close(event)

    def _close(self, event: Closed) -> None:
        rec = self.records[event.api_id]
        assert rec.end is None, "closed twice"
        rec.end, rec.duration, rec.across_gap = event.end, event.duration, event.across_gap


def run(jobs: list[TrueJob], polls: list[TruePoll], skew: float, gap_s: float) -> Replay:
    """Replay `polls` over `jobs` through the inference."""
    replay = Replay(gap_s=gap_s)
    for poll in polls:
        timing = PollTime(poll.sent_at, poll.sent_at + poll.latency)
        answer: Snapshot | Failure = (
            listing(jobs, poll, skew) if poll.ok else Failure(Outcome.SERVER, "HTTP 503")
        )
        replay.feed(timing, answer)
    return replay


def contains(bounded: Bounded, truth: float, slack: float = 1e-6) -> bool:
    """True when the bounds of `bounded` contain `truth`."""
    lo_ok = bounded.lo is None or bounded.lo - slack <= truth
    hi_ok = bounded.hi is None or truth <= bounded.hi + slack
    return lo_ok and hi_ok
