"""The figures `recorder run --metrics-port` exports, kept per target from the daemon's own polls.

Plain Python, no prometheus_client (recorder.exporter serves these figures): a daemon updates
its target's figures after each poll it records, under a lock held for a few dictionary
updates; a scrape copies them under the same lock. A scrape never reads the database, and never
waits for a poll. The counters start from the database's counts, read once when the daemon
starts recording the target, so that they never go backwards across restarts.

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

from sqlalchemy import Connection, case, func, select

from recorder.inference import JobState
from recorder.models import Job, JobStatus, Poll, Target, has_status, latest_ok_id, running_jobs
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
        self._reappeared: set[str] = set()

    @property
    def loaded(self) -> bool:
        """Whether the starting counts have been read."""
        return self._figures is not None

    def load(self, conn: Connection, target_id: int) -> None:
        """Start from what the database holds about the target (its counts, running jobs and
        latest successful poll); the figures from an earlier load are replaced."""
        figures, types = _from_database(conn, target_id)
        with self._lock:
            self._figures, self._types, self._reappeared = figures, types, set()

    def forget(self) -> None:
        """Drop the figures until the next `load` (another recorder writes the target now)."""
        with self._lock:
            self._figures, self._types, self._reappeared = None, {}, set()

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
            if change.state.offset is not None:
                figures.offset_s = change.state.offset.seconds
            # A job that reappears after its end (a glitch upstream) was counted when it ended:
            # its next end is not counted again, as the database holds it finished once.
            self._reappeared.update(event.job.api_id for event in change.reopened)
            for closed in change.closed:
                if closed.api_id in self._reappeared:
                    self._reappeared.discard(closed.api_id)
                    continue
                label = type_label(self._types.get(closed.api_id))
                figures.finished[label] = figures.finished.get(label, 0) + 1
                if math.isfinite(closed.duration.at):  # as stored: a non-finite one is unknown
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


def _from_database(conn: Connection, target_id: int) -> tuple[Figures, dict[str, str | None]]:
    """A target's figures as the database holds them, and its running jobs' types by id."""
    name = conn.scalar(select(Target.name).where(Target.id == target_id))
    figures = Figures(str(name))
    finished = select(Job.type, func.count()).where(
        Job.target_id == target_id, has_status(JobStatus.FINISHED)
    )
    for job_type, count in conn.execute(finished.group_by(Job.type)):
        label = type_label(job_type)
        figures.finished[label] = figures.finished.get(label, 0) + int(count)
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
    last_ok = conn.scalar(select(Poll.sent_at).where(Poll.id == latest_ok_id(target_id)))
    figures.last_success_s = None if last_ok is None else last_ok.timestamp()
    types: dict[str, str | None] = {}
    query: Any = select(Job.api_id, Job.type).where(Job.target_id == target_id)
    for api_id, job_type in conn.execute(running_jobs(query)):
        types[api_id] = job_type
        label = type_label(job_type)
        figures.running[label] = figures.running.get(label, 0) + 1
    return figures, types
