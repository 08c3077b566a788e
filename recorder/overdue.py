"""Overdue jobs: running for longer than nearly every recent job of their type took.

A running job is overdue when the lower bound of its age (now minus its start's upper bound,
``start_max``, or ``start_at`` when the start has none) exceeds the p95 duration of its type:
the nearest-rank 95th percentile (as in recorder.stats) of the finished jobs of the same
target and type that ended in the last WINDOW_S. With fewer than MIN_FINISHED such jobs the
p95 says too little, and no job of the type is ever overdue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from recorder.clock import to_datetime
from recorder.models import Job, JobStatus, has_status, running_jobs

if TYPE_CHECKING:
    from recorder.inference import JobState

WINDOW_S = 7 * 86400.0
MIN_FINISHED = 20
PERCENTILE = 95
# The daemon reads the p95s again at most this often: they move slowly, and polls are cheap.
REFRESH_S = 300.0


@dataclass(frozen=True, slots=True)
class Typical:
    """The p95 duration of one target's jobs of one type, and how many finished jobs it is of."""

    p95_s: float
    finished: int


# (target id, type): a type missing from the API is None.
TypeKey = tuple[int, str | None]


def age_floor(now: float, start_at: float, start_max: float | None) -> float:
    """The least a job started at `start_at` (at the latest `start_max`) can have run by `now`."""
    return now - (start_at if start_max is None else start_max)


def is_overdue(age_floor_s: float, p95_s: float | None, finished: int) -> bool:
    """Whether a job that has run at least `age_floor_s` is overdue for a type whose p95 is
    `p95_s` over `finished` recent jobs."""
    return p95_s is not None and finished >= MIN_FINISHED and age_floor_s > p95_s


def overdue_for(age_floor_s: float, typical: Typical | None) -> bool:
    """is_overdue with the type's figures, or none known."""
    if typical is None:
        return False
    return is_overdue(age_floor_s, typical.p95_s, typical.finished)


def typical_durations(
    conn: Connection, now: float, target_ids: Sequence[int] | None = None
) -> dict[TypeKey, Typical]:
    """The p95 duration per (target, type) of the finished jobs that ended in the last
    WINDOW_S before `now` (of `target_ids`, or of every target), for the types with at least
    MIN_FINISHED of them."""
    since: datetime = to_datetime(now - WINDOW_S)
    partition = (Job.target_id, Job.type)
    ranked = select(
        Job.target_id,
        Job.type,
        Job.duration_s,
        func.row_number().over(partition_by=partition, order_by=Job.duration_s).label("rank"),
        func.count().over(partition_by=partition).label("n"),
    ).where(
        has_status(JobStatus.FINISHED),
        Job.end_at >= since,
        Job.duration_s.is_not(None),
    )
    if target_ids is not None:
        ranked = ranked.where(Job.target_id.in_(list(target_ids)))
    inner = ranked.subquery()
    # Nearest rank: ceil(95 n / 100), in integers on every backend.
    wanted = (PERCENTILE * inner.c.n + 99) // 100
    query = select(inner.c.target_id, inner.c.type, inner.c.duration_s, inner.c.n).where(
        inner.c.rank == wanted, inner.c.n >= MIN_FINISHED
    )
    return {
        (int(row.target_id), row.type): Typical(float(row.duration_s), int(row.n))
        for row in conn.execute(query)
    }


@dataclass(frozen=True, slots=True)
class Running:
    """A running job as the overdue rule sees it."""

    target_id: int
    api_id: str
    type: str | None
    start_at: float
    start_max: float | None


def overdue(
    jobs: Iterable[Running], typical: Mapping[TypeKey, Typical], now: float
) -> list[tuple[Running, Typical]]:
    """The overdue ones among `jobs`, each with its type's figures."""
    found = []
    for job in jobs:
        figures = typical.get((job.target_id, job.type))
        if figures is not None and overdue_for(
            age_floor(now, job.start_at, job.start_max), figures
        ):
            found.append((job, figures))
    return found


def running(conn: Connection, target_ids: Sequence[int] | None = None) -> list[Running]:
    """The running jobs (of `target_ids`, or of every target)."""
    query: Any = select(Job.target_id, Job.api_id, Job.type, Job.start_at, Job.start_max)
    query = running_jobs(query)
    if target_ids is not None:
        query = query.where(Job.target_id.in_(list(target_ids)))
    return [
        Running(
            int(row.target_id),
            row.api_id,
            row.type,
            row.start_at.timestamp(),
            None if row.start_max is None else row.start_max.timestamp(),
        )
        for row in conn.execute(query)
    ]


class OverdueWatch:
    """A daemon's view of its target's overdue jobs: the p95s, read again at most every
    `refresh_s`, and the jobs already reported, so that each is logged once."""

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        """Read nothing yet: the first `check` reads the p95s."""
        self.refresh_s = refresh_s
        self.typical: dict[TypeKey, Typical] = {}
        self._read_at: float | None = None
        self._told: set[str] = set()

    def due(self, now: float) -> bool:
        """Whether the p95s are to be read again (never read, old, or the clock stepped back)."""
        read_at = self._read_at
        return read_at is None or not 0 <= now - read_at < self.refresh_s

    def refresh(self, conn: Connection, target_id: int, now: float) -> None:
        """Read the target's p95s."""
        self.typical = typical_durations(conn, now, [target_id])
        self._read_at = now

    def postpone(self, now: float) -> None:
        """Keep the p95s as they are until the next refresh is due (the read failed)."""
        self._read_at = now

    def check(
        self, target_id: int, open_jobs: Iterable[JobState], now: float
    ) -> tuple[list[tuple[Running, Typical]], dict[str, int]]:
        """The jobs that became overdue since the last check, and the overdue count per type
        ("" for none) of `open_jobs`, the target's running jobs."""
        if not self.typical:  # no type has enough history: spare the per-poll walk
            self._told = set()
            return [], {}
        jobs = [
            Running(target_id, job.api_id, job.item.type, job.start.at, job.start.hi)
            for job in open_jobs
        ]
        late = overdue(jobs, self.typical, now)
        counts: dict[str, int] = {}
        for job, _ in late:
            counts[job.type or ""] = counts.get(job.type or "", 0) + 1
        ids = {job.api_id for job, _ in late}
        new = [(job, figures) for job, figures in late if job.api_id not in self._told]
        self._told = ids  # a job that ends, or is no longer late, is forgotten
        return new, counts
