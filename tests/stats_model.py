"""A brute-force, plain-Python computation of every `recorder stats` figure, by its definition."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from recorder.missed import MISSED_AGE_S
from recorder.models import Job, JobOutcome, Poll, Target
from recorder.stats import HISTOGRAM_EDGES, TIME_KEYS

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Truth:
    """One group's figures, computed naively."""

    since: float
    until: float
    durations: list[float] = field(default_factory=list)
    wide: int = 0
    started: int = 0
    running: int = 0
    intervals: list[tuple[float, float]] = field(default_factory=list)
    coverage: float = 0.0
    gaps: int = 0
    longest_gap: float = 0.0
    seen: int = 0  # jobs that started in the window, first listed in covered time
    weight: float = 0.0  # the sum of 1 / p over those that are sampled

    def missed(self) -> float:
        return max(0.0, self.weight - self.seen)

    outcomes: list[str | None] = field(default_factory=list)  # of the finished jobs

    def success_rate(self) -> float | None:
        known = [o for o in self.outcomes if o in ("completed", "failed", "moderated")]
        return known.count("completed") / len(known) if known else None

    def percentile(self, p: int) -> float | None:
        ordered = sorted(self.durations)
        if not ordered:
            return None
        return ordered[math.ceil(p * len(ordered) / 100) - 1]

    def peak(self) -> int:
        events = sorted([(s, 1) for s, _ in self.intervals] + [(e, -1) for _, e in self.intervals])
        level = best = 0
        for _, delta in events:  # ends sort before starts at the same instant
            level += delta
            best = max(best, level)
        return best

    def mean_concurrency(self) -> float:
        return sum(e - s for s, e in self.intervals) / (self.until - self.since)

    def histogram(self) -> dict[float, int]:
        bins: dict[float, int] = defaultdict(int)
        for d in self.durations:
            lower = max(
                (edge for edge in HISTOGRAM_EDGES if edge <= d), default=0
            )  # < 0: the first bin
            bins[float(lower)] += 1
        return dict(bins)


def load(engine: Engine) -> tuple[list[Any], list[Any]]:
    """Every job and every poll, as plain rows, each with its target's name (`target`) and
    `service`; a job also with its `outcome` (None without one)."""
    labels = (Target.name.label("target"), Target.service)
    with engine.connect() as conn:
        jobs = conn.execute(
            select(Job.__table__, *labels, JobOutcome.outcome)
            .join(Target, Target.id == Job.target_id)
            .outerjoin(JobOutcome, JobOutcome.job_id == Job.id)
        ).all()
        polls = conn.execute(
            select(Poll.__table__, *labels)
            .join(Target, Target.id == Poll.target_id)
            .order_by(Poll.id)
        ).all()
    return jobs, polls


def compute(
    jobs: list[Any], polls: list[Any], since: float, until: float, now: float, by: tuple[str, ...]
) -> dict[tuple[Any, ...], Truth]:
    """Every group's figures for the window [since, until); grouped by ``target``, a group's key
    is the target's name."""
    time_key = next((k for k in by if k in TIME_KEYS), None)
    size = TIME_KEYS[time_key] if time_key else None
    spans = _spans(since, until, size)
    groups: dict[tuple[Any, ...], Truth] = {}

    def bucket(t: float) -> float:
        return math.floor(t / size) * size if size else since

    def group(job: Any, t: float | None) -> Truth:
        key = tuple(bucket(t) if k in TIME_KEYS else getattr(job, k) for k in by)
        b0 = bucket(t) if t is not None else since
        lo, hi = (max(b0, since), min(b0 + size, until)) if size else (since, until)
        return groups.setdefault(key, Truth(lo, hi))

    if not by or by == (time_key,):
        for b0, lo, hi in spans:
            groups[(b0,) if by else ()] = Truth(lo, hi)

    latest = _latest_ok(polls)
    by_id = {p.id: p for p in polls}
    latest_sent = _latest_ok_sent(polls)
    previous_ok = _previous_ok(polls)
    for job in jobs:
        start = job.start_at.timestamp()
        end = job.end_at.timestamp() if job.end_at is not None else None
        if job.status == "finished" and since <= end < until:
            g = group(job, end)
            g.durations.append(job.duration_s)
            g.wide += int(job.closed_across_gap)
            g.outcomes.append(job.outcome)
        if since <= start < until:
            group(job, start).started += 1
            first = by_id[job.first_poll_id]
            prev = previous_ok.get(first.id)
            if not first.after_gap and prev is not None:
                g = group(job, start)
                g.seen += 1
                p = _p(job, first, prev, latest_sent[job.target_id])
                g.weight += 1 / p if p else 0.0
        if job.status == "running":
            if size is None:
                group(job, None).running += 1
            elif since < now <= until:
                group(job, min(now, until - 1e-6)).running += 1
        stop = end if end is not None else max(latest[job.target_id], start)
        for b0, lo, hi in spans:
            s, e = max(start, lo), min(stop, hi)
            if e > s:
                group(job, b0 if size else None).intervals.append((s, e))

    windows = {b0: (lo, hi) for b0, lo, hi in spans}
    for key, truth in groups.items():
        b0 = key[by.index(time_key)] if time_key else since
        # Grouped by target or service, a group's coverage is that of its own targets' polls.
        label = next((k for k in ("target", "service") if k in by), None)
        chosen = (
            polls
            if label is None
            else [p for p in polls if getattr(p, label) == key[by.index(label)]]
        )
        truth.coverage, truth.gaps, truth.longest_gap = _coverage(chosen, *windows[b0])
    return groups


def _previous_ok(polls: list[Any]) -> dict[int, Any]:
    """Each poll's id: its target's latest successful poll before it (if any)."""
    found: dict[int, Any] = {}
    last: dict[int, Any] = {}
    for poll in polls:  # in id order
        if poll.target_id in last:
            found[poll.id] = last[poll.target_id]
        if poll.outcome == "ok":
            last[poll.target_id] = poll
    return found


def _latest_ok_sent(polls: list[Any]) -> dict[int, float]:
    latest: dict[int, float] = {}
    for poll in polls:
        if poll.outcome == "ok":
            latest[poll.target_id] = poll.sent_at.timestamp()
    return latest


def _p(job: Any, first: Any, prev: Any, latest_sent: float) -> float:
    """The probability that the job was to be sampled, by its definition (docs/stats.md)."""
    gap = first.sent_at.timestamp() - prev.sent_at.timestamp()
    start = job.start_at.timestamp()
    lower = job.duration_min_s if job.duration_min_s is not None else latest_sent - start
    if gap <= 0 or lower + first.latency_s >= gap:
        return 1.0  # as long as the gap: it could not slip between the two polls
    if first.sent_at.timestamp() - start >= MISSED_AGE_S:
        return 0.0  # not in the sample
    return min(1.0, (MISSED_AGE_S + first.latency_s / 2) / gap)


def _spans(since: float, until: float, size: int | None) -> list[tuple[float, float, float]]:
    if size is None:
        return [(since, since, until)]
    spans = []
    b0 = math.floor(since / size) * size
    while b0 < until:
        spans.append((float(b0), max(b0, since), min(b0 + size, until)))
        b0 += size
    return spans


def _latest_ok(polls: list[Any]) -> dict[int, float]:
    latest: dict[int, float] = {}
    for poll in polls:
        if poll.outcome == "ok":
            latest[poll.target_id] = max(
                latest.get(poll.target_id, 0.0), poll.received_at.timestamp()
            )
    return latest


def _coverage(polls: list[Any], lo: float, hi: float) -> tuple[float, int, float]:
    """Mean covered share over targets, the number of gaps, the longest (clipped) gap."""
    by_target: dict[int, list[Any]] = defaultdict(list)
    for poll in polls:
        by_target[poll.target_id].append(poll)
    shares, gaps, longest = [], 0, 0.0
    for target_polls in by_target.values():
        ok = [p for p in target_polls if p.outcome == "ok"]
        covered = 0.0
        for prev, poll in itertools.pairwise(ok):
            overlap = _overlap(prev.sent_at.timestamp(), poll.sent_at.timestamp(), lo, hi)
            if poll.after_gap:
                if overlap > 0:
                    gaps += 1
                    longest = max(longest, overlap)
            else:
                covered += overlap
        if ok and target_polls[-1].id > ok[-1].id:  # failing now: an open gap
            overlap = _overlap(ok[-1].sent_at.timestamp(), math.inf, lo, hi)
            if overlap > 0:
                gaps += 1
                longest = max(longest, overlap)
        shares.append(covered / (hi - lo))
    return sum(shares) / len(shares), gaps, longest


def _overlap(s: float, e: float, lo: float, hi: float) -> float:
    return max(0.0, min(e, hi) - max(s, lo))


def capacity_truth(
    spans: list[Any], since_ms: int, until_ms: int
) -> tuple[int | None, float | None, float | None]:
    """`recorder.stats.capacity_figures` by its definition, for spans whose times are whole
    milliseconds: every millisecond of the window ``[since, until)`` is looked at in turn.

    A row holds the instants ``first_at <= t <= last_at`` (for the latest row per target that
    the window meets) and covers ``first_at <= t < last_at``, when it has max_jobs > 0 and
    executing. Returns (max_jobs, utilization, saturated_share).
    """
    latest: dict[int, Any] = {}
    samples = 0
    busy = 0.0
    saturated = 0
    for t_ms in range(since_ms, until_ms):
        t = t_ms / 1000
        for span in spans:
            if span.first_at <= t <= span.last_at:
                known = latest.get(span.target_id)
                if known is None or span.first_at > known.first_at:
                    latest[span.target_id] = span
            if not span.first_at <= t < span.last_at:
                continue
            if not span.max_jobs or span.executing is None:
                continue
            samples += 1
            busy += span.executing / span.max_jobs
            free = span.available if span.available is not None else None
            full = free == 0 if free is not None else span.executing >= span.max_jobs
            saturated += full
    limits = [s.max_jobs for s in latest.values() if s.max_jobs is not None]
    max_jobs = sum(limits) if limits else None
    if not samples:
        return max_jobs, None, None
    return max_jobs, busy / samples, saturated / samples
