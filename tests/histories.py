"""A recorded history for report tests: five busy hours with outages, a restart, two targets,
and outcomes for most of the finished jobs."""

from __future__ import annotations

import random

from sqlalchemy import Engine, insert, select

from recorder.clock import to_datetime
from recorder.models import Job, JobOutcome, JobStatus
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.store import Store
from tests.feeding import failed, ok

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
URL_A = "http://127.0.0.1:9/a/"
URL_B = "http://127.0.0.1:9/b/"


def record_history(engine: Engine) -> None:
    """Five hours of a busy target with outages and a restart, and a second short-lived one."""
    store = Store(engine)
    clock = ManualClock(T0)
    kinds = (JobKind("video", 3.0, 240.0), JobKind("image", 6.0, 40.0))
    sim = Simulator(SimConfig(seed=9, kinds=kinds, initial_jobs=5), clock=clock)
    rng = random.Random(9)
    results = []
    while clock.t < T0 + 5 * 3600:
        if T0 + 7200 <= clock.t < T0 + 7200 + 1500:  # the recorder was down for 25 minutes
            clock.advance(1500)
        results.append(failed(clock) if rng.random() < 0.06 else ok(sim, clock))
        clock.advance(rng.uniform(25, 35))
    results.append(failed(clock))  # it is failing at the end: an open gap
    pipeline = Pipeline(store, URL_A, lambda: results.pop(0), gap_s=90.0)
    while results:
        pipeline.poll_once()

    clock_b = ManualClock(T0 + 600)
    sim_b = Simulator(SimConfig(seed=10, kinds=kinds[:1], initial_jobs=2), clock=clock_b)
    results_b = []
    for _ in range(60):
        results_b.append(ok(sim_b, clock_b))
        clock_b.advance(30)
    pipeline_b = Pipeline(store, URL_B, lambda: results_b.pop(0), gap_s=90.0)
    while results_b:
        pipeline_b.poll_once()
    add_outcomes(engine, random.Random(11))


# What became of the finished jobs: None for no row (never asked), "pending" for a pending row.
OUTCOME_WEIGHTS = {
    "completed": 45,
    "failed": 10,
    "moderated": 5,
    "unknown": 5,
    "pending": 10,
    None: 25,
}


def add_outcomes(engine: Engine, rng: random.Random) -> None:
    """Outcome rows for the finished jobs, drawn with OUTCOME_WEIGHTS."""
    kinds = list(OUTCOME_WEIGHTS)
    weights = list(OUTCOME_WEIGHTS.values())
    with engine.begin() as conn:
        finished = conn.execute(
            select(Job.id, Job.end_at).where(Job.status == JobStatus.FINISHED).order_by(Job.id)
        ).all()
        rows = []
        for job in finished:
            kind = rng.choices(kinds, weights)[0]
            if kind is None:
                continue
            pending = kind == "pending"
            rows.append(
                {
                    "job_id": job.id,
                    "outcome": None if pending else kind,
                    "attempts": 1,
                    "next_attempt_at": job.end_at if pending else None,
                    "checked_at": to_datetime(job.end_at.timestamp() + 5),
                }
            )
        if rows:
            conn.execute(insert(JobOutcome), rows)
