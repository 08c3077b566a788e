"""`recorder demo`: the simulator and the daemon together, then a look at what was recorded."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, func, select

from recorder import db, reports
from recorder.client import SchedulerClient
from recorder.daemon import Daemon
from recorder.gaps import gap_threshold
from recorder.models import JobStatus, Poll
from recorder.output import human_duration, render
from recorder.pipeline import Pipeline, Recorded
from recorder.simulator import Faults, JobKind, SimConfig, Simulator
from recorder.store import Store

DEMO_KINDS = (JobKind("video", 12.0, 14.0), JobKind("image", 24.0, 4.0))
DEMO_FAULTS = Faults(server_error=0.05, rate_limit=0.03, retry_after_s=1, garbage=0.02, skew_s=42.0)


def run_demo(
    *, seconds: float, interval: float, seed: int, keep: Path | None, out: IO[str]
) -> None:
    """Record a seeded simulator for `seconds`, printing progress, then the recorded history."""
    config = SimConfig(seed=seed, kinds=DEMO_KINDS, faults=DEMO_FAULTS, initial_jobs=3)
    with tempfile.TemporaryDirectory(prefix="recorder-demo-") as tmp, Simulator(config) as sim:
        path = keep if keep is not None else Path(tmp) / "demo.db"
        engine = db.open_database(f"sqlite:///{path}")
        try:
            _record(sim, engine, seconds, interval, out)
            _summarize(sim, engine, out)
        finally:
            engine.dispose()
        if keep is not None:
            out.write(f"\nThe database is kept: recorder --db sqlite:///{path} jobs\n")


def _record(sim: Simulator, engine: Engine, seconds: float, interval: float, out: IO[str]) -> None:
    faults = sim.config.faults
    out.write(
        f"Recording the built-in simulator at {sim.url}\n"
        f"every {interval:g}s for {seconds:g}s. "
        f"The simulated server's clock is {faults.skew_s:+g}s "
        f"off, and it answers {faults.server_error:.0%} 5xx, {faults.rate_limit:.0%} 429 and "
        f"{faults.garbage:.0%} garbage.\nJob transitions are logged as they happen:\n\n"
    )
    out.flush()
    client = SchedulerClient(sim.url, sim.config.token, timeout=(2.0, 5.0))
    pipeline = Pipeline(Store(engine), sim.url, client.poll, gap_s=gap_threshold(interval))
    began = time.monotonic()
    tally: Counter[str] = Counter()

    def progress(recorded: Recorded | None) -> None:
        tally["polls"] += 1
        if recorded is None or not recorded.result.ok:
            tally["failed"] += 1
        elapsed = time.monotonic() - began
        if tally["polls"] % max(1, round(5 / interval)) == 0:
            running = len(pipeline.state.open_jobs)
            out.write(
                f"  [{elapsed:4.0f}s] {tally['polls']} polls ({tally['failed']} failed), "
                f"{running} running\n"
            )
            out.flush()

    with client:
        Daemon(pipeline, interval, on_poll=progress).run(stop_after=seconds)


def _summarize(sim: Simulator, engine: Engine, out: IO[str]) -> None:
    jobs = list(reports.jobs(engine))
    finished = [j for j in jobs if j["status"] == JobStatus.FINISHED]
    with engine.connect() as conn:
        outcomes: dict[str, int] = dict(
            conn.execute(select(Poll.outcome, func.count()).group_by(Poll.outcome)).all()
        )
    out.write(
        "\nPolls by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + "\n"
    )
    running = len(jobs) - len(finished)
    out.write(f"Jobs recorded: {len(jobs)} ({len(finished)} finished, {running} running)\n\n")
    out.write("Most recent jobs:\n")
    recent = sorted(jobs, key=lambda j: j["started_at"])[-10:]
    render((reports.table_row(j) for j in recent), "table", out, reports.TABLE_COLUMNS)
    _per_type(finished, out)
    _against_truth(sim, finished, out)


def _per_type(finished: list[dict[str, Any]], out: IO[str]) -> None:
    by_type: dict[str, list[float]] = {}
    for job in finished:
        by_type.setdefault(str(job["type"]), []).append(float(job["duration_s"]))
    out.write("\nFinished jobs by type:\n")
    rows = [
        {
            "type": kind,
            "finished": len(durations),
            "mean": human_duration(statistics.fmean(durations)),
            "max": human_duration(max(durations)),
        }
        for kind, durations in sorted(by_type.items())
    ]
    render(rows, "table", out, ("type", "finished", "mean", "max"))


def _against_truth(sim: Simulator, finished: list[dict[str, Any]], out: IO[str]) -> None:
    truth = {job.api_id: job for job in sim.truth()}
    errors, inside = [], 0
    for job in finished:
        true = truth[str(job["id"])]
        true_duration = true.end - true.start
        errors.append(abs(float(job["duration_s"]) - true_duration))
        low, high = job["duration_min_s"], job["duration_max_s"]
        if (
            float(low) - 1e-3
            <= true_duration
            <= (float(high) if high is not None else float("inf")) + 1e-3
        ):
            inside += 1
    if not errors:
        return
    out.write(
        f"\nAgainst the simulator's ground truth: {inside} of {len(errors)} finished jobs have the "
        f"true duration within their recorded bounds;\nduration error mean "
        f"{statistics.fmean(errors):.2f}s, max {max(errors):.2f}s.\n"
    )
