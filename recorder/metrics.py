"""The figures `recorder run --metrics-port` exports, kept per target from the daemon's own polls.

Plain Python, no prometheus_client (recorder.exporter serves these figures): a daemon updates
its target's figures after each poll it records, under a lock held for a few dictionary
updates; a scrape copies them under the same lock. A scrape never reads the database, and never
waits for a poll. The counters start from the database's counts, read once when the daemon
starts recording the target, so that they never go backwards across restarts.

`recorder_jobs_finished_total` counts the jobs closed at least once: in the database, the jobs
with a ``vanished`` transition (`closed_once`), which only grows. A job that reappears after
its end (a glitch upstream) is running again, but stays counted, and its next end is not
counted again. The clock offset is the skew the latest successful poll implies
(recorder.inference.poll_offset), as `recorder status` shows it.

Labels: ``target`` is the target's name (targets.name), ``type`` the jobs' type ("" when the
API gives none), ``outcome`` a poll's outcome (recorder.snapshot.Outcome).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, case, exists, func, select

from recorder.inference import JobState, poll_offset
from recorder.models import (
    Job,
    JobStatus,
    Poll,
    Target,
    Transition,
    TransitionKind,
    has_status,
    latest_ok_id,
    running_jobs,
)
from recorder.pipeline import Recorded
from recorder.snapshot import Outcome, Snapshot

# Upper bounds of the duration buckets, in seconds: jobs of seconds to an hour, and a little more.
BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700)
BUCKETS += (3600, 5400, 7200)


def type_label(job_type: str | None) -> str:
    """A job type as a label value: "" when the API gave none."""
    return job_type or ""


@dataclass
class Durations:
    """A histogram of durations: a count per bucket (the last for those above every bound)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: int = 0
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += 1
        self.sum_s += seconds

    def cumulative(self) -> list[int]:
        """The count at or below each bound of BUCKETS, then the total (+Inf)."""
        running, found = 0, []
        for count in self.counts:
            running += count
            found.append(running)
        return found


@dataclass
class Figures:
    """One target's figures at one moment (a copy: the daemon goes on updating its own)."""

    target: str
    running: dict[str, int] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)
    durations: dict[str, Durations] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    overdue: dict[str, int] = field(default_factory=dict)
    last_success_s: float | None = None
    offset_s: float | None = None


class TargetMetrics:
    """One target's figures, updated by its daemon and read by scrapes."""

    def __init__(self) -> None:
        """Empty until `load` reads the database's counts: nothing is exported before."""
        self._lock = threading.Lock()
        self._figures: Figures | None = None
        self._types: dict[str, str | None] = {}  # the open jobs' types, by id
        # Running jobs counted as finished already (they reappeared after an end), by id: True
        # when that end's duration is in the histogram too (False: it was before a restart,
        # and the database no longer holds it, so their next end's duration is observed).
        self._reappeared: dict[str, bool] = {}

    @property
    def loaded(self) -> bool:
        """Whether the starting counts have been read."""
        return self._figures is not None

    def load(self, conn: Connection, target_id: int) -> None:
        """Start from what the database holds about the target (its counts, running jobs and
        latest successful poll); the figures from an earlier load are replaced."""
        figures, types, reopened = _from_database(conn, target_id)
        with self._lock:
            self._figures, self._types = figures, types
            self._reappeared = dict.fromkeys(reopened, False)

    def forget(self) -> None:
        """Drop the figures until the next `load` (another recorder writes the target now)."""
        with self._lock:
            self._figures, self._types, self._reappeared = None, {}, {}

    def record(self, recorded: Recorded) -> None:
        """Count one recorded poll and the jobs it closed."""
        result = recorded.result
        answer = result.answer
        outcome = Outcome.OK if isinstance(answer, Snapshot) else answer.outcome
        change = recorded.change
        with self._lock:
            figures = self._figures
            if figures is None:
                return
            figures.polls[outcome.value] = figures.polls.get(outcome.value, 0) + 1
            if result.ok:
                figures.last_success_s = result.sent_at
                if change.server_time is not None and math.isfinite(change.server_time):
                    figures.offset_s = poll_offset(
                        result.sent_at, result.received_at, change.server_time
                    )
            # A job that reappears after its end (a glitch upstream) was counted when it ended:
            # its next end is not counted again, as the database counts it closed once.
            self._reappeared.update((event.job.api_id, True) for event in change.reopened)
            for closed in change.closed:
                label = type_label(self._types.get(closed.api_id))
                timed = self._reappeared.pop(closed.api_id, None)
                if timed is None:
                    figures.finished[label] = figures.finished.get(label, 0) + 1
                if timed is not True and math.isfinite(closed.duration.at):  # as stored
                    figures.durations.setdefault(label, Durations()).observe(closed.duration.at)
            if change.changed:
                # A closed job's type is in the state before its close only: keep it at hand.
                self._types = {i: job.item.type for i, job in change.state.open_jobs.items()}

    def set_running(self, open_jobs: Iterable[JobState], overdue: Mapping[str, int]) -> None:
        """The jobs running now, and how many of each type are overdue."""
        running: dict[str, int] = {}
        for job in open_jobs:
            label = type_label(job.item.type)
            running[label] = running.get(label, 0) + 1
        with self._lock:
            figures = self._figures
            if figures is None:
                return
            # A type that ran earlier stays at 0 rather than vanishing from the export.
            figures.running = dict.fromkeys(figures.running, 0) | running
            figures.overdue = dict.fromkeys([*figures.overdue, *running], 0) | dict(overdue)

    def snapshot(self) -> Figures | None:
        """A copy of the figures, or None before `load`."""
        with self._lock:
            figures = self._figures
            if figures is None:
                return None
            return Figures(
                figures.target,
                dict(figures.running),
                dict(figures.finished),
                {
                    label: Durations(list(d.counts), d.total, d.sum_s)
                    for label, d in figures.durations.items()
                },
                dict(figures.polls),
                dict(figures.overdue),
                figures.last_success_s,
                figures.offset_s,
            )


def closed_before() -> Any:
    """SQL: the job (correlated) has a vanished transition: it was closed at least once."""
    return exists().where(
        Transition.job_id == Job.id, Transition.kind == TransitionKind.VANISHED.value
    )


def _from_database(
    conn: Connection, target_id: int
) -> tuple[Figures, dict[str, str | None], list[str]]:
    """A target's figures as the database holds them, its running jobs' types by id, and the
    ids of those among them that were closed before (they reappeared)."""
    name = conn.scalar(select(Target.name).where(Target.id == target_id))
    figures = Figures(str(name))
    # Closed at least once: every finished job, and the running ones that reappeared (read
    # through the few running jobs, not along every transition).
    finished = select(Job.type, func.count()).where(
        Job.target_id == target_id, has_status(JobStatus.FINISHED)
    )
    for job_type, count in conn.execute(finished.group_by(Job.type)):
        label = type_label(job_type)
        figures.finished[label] = figures.finished.get(label, 0) + int(count)
    reopened: list[str] = []
    query: Any = select(Job.api_id, Job.type).where(Job.target_id == target_id, closed_before())
    for api_id, job_type in conn.execute(running_jobs(query)):
        reopened.append(api_id)
        label = type_label(job_type)
        figures.finished[label] = figures.finished.get(label, 0) + 1
    # Per bucket, the jobs at or below its bound (cumulative), in one pass over the durations.
    at_or_below = [func.sum(case((Job.duration_s <= bound, 1), else_=0)) for bound in BUCKETS]
    durations = select(Job.type, func.count(), func.sum(Job.duration_s), *at_or_below).where(
        Job.target_id == target_id,
        has_status(JobStatus.FINISHED),
        Job.duration_s.is_not(None),
    )
    for row in conn.execute(durations.group_by(Job.type)):
        job_type, total, sum_s, *cumulative = row
        histogram = figures.durations.setdefault(type_label(job_type), Durations())
        below = 0
        for index, count in enumerate([*(int(c or 0) for c in cumulative), int(total)]):
            histogram.counts[index] += count - below
            below = count
        histogram.total += int(total)
        histogram.sum_s += float(sum_s or 0.0)
    polls = select(Poll.outcome, func.count()).where(Poll.target_id == target_id)
    figures.polls = {outcome: int(n) for outcome, n in conn.execute(polls.group_by(Poll.outcome))}
    last_ok = conn.execute(
        select(Poll.sent_at, Poll.received_at, Poll.server_time).where(
            Poll.id == latest_ok_id(target_id)
        )
    ).first()
    if last_ok is not None:
        figures.last_success_s = last_ok.sent_at.timestamp()
        if last_ok.server_time is not None:
            sent, received = last_ok.sent_at.timestamp(), last_ok.received_at.timestamp()
            figures.offset_s = poll_offset(sent, received, last_ok.server_time)
    types: dict[str, str | None] = {}
    query = select(Job.api_id, Job.type).where(Job.target_id == target_id)
    for api_id, job_type in conn.execute(running_jobs(query)):
        types[api_id] = job_type
        label = type_label(job_type)
        figures.running[label] = figures.running.get(label, 0) + 1
    return figures, types, reopened
