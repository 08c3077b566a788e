"""A step of the host clock (NTP stepping it back or forward) during a run."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import select

from recorder.client import SchedulerClient
from recorder.clock import SteadyClock
from recorder.daemon import _monitor
from recorder.models import Job
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, SimConfig, Simulator
from recorder.store import Store


class SteppingWall:
    """The host's wall clock, stepped by `step` seconds after `after` readings."""

    def __init__(self, step: float, after: int) -> None:
        self.step, self.after, self.readings = step, after, 0

    def __call__(self) -> float:
        self.readings += 1
        return time.time() + (self.step if self.readings > self.after else 0.0)


def test_the_steady_clock_ignores_steps_of_the_wall_clock() -> None:
    wall = SteppingWall(step=-3600.0, after=1)
    clock = SteadyClock(wall=wall)
    first = clock()
    time.sleep(0.05)
    second = clock()
    assert 0.04 < second - first < 1.0  # advanced with the monotonic clock, not an hour back
    assert clock.drift() < -3500  # and the step is visible as drift


def test_steps_during_a_run_give_no_negative_or_absurd_durations(store: Store) -> None:
    config = SimConfig(seed=6, kinds=(JobKind("image", 240.0, 0.6),), initial_jobs=2)
    with Simulator(config) as sim:
        for step in (-3600.0, 3600.0):
            wall = SteppingWall(step=step, after=5)
            client = SchedulerClient(sim.url, sim.config.token, wall_clock=SteadyClock(wall=wall))
            recorder = Pipeline(store, sim.url, client.poll, gap_s=2.0)
            for _ in range(25):
                recorder.poll_once()
                time.sleep(0.1)
    with store.engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__).where(Job.status == "finished")).all()
    assert len(jobs) > 5
    for job in jobs:
        assert 0 <= job.duration_min_s <= job.duration_s <= job.duration_max_s < 10


class FakeScheduler:
    running = True

    def __init__(self) -> None:
        self.modified: list[tuple[str, Any]] = []
        self.stopped = False

    def modify_job(self, job_id: str, **changes: Any) -> None:
        self.modified.append((job_id, changes))

    def shutdown(self, wait: bool = True) -> None:
        self.stopped, self.running = True, False


class Stepped(SteadyClock):
    def drift(self) -> float:
        return -3600.0


def test_the_monitor_polls_again_at_once_after_a_step() -> None:
    """APScheduler times its runs on the wall clock; after a step back it would wait an hour."""
    scheduler = FakeScheduler()
    done = threading.Event()
    clocks = iter([Stepped(), SteadyClock(), SteadyClock(), SteadyClock()])
    monitor = threading.Thread(
        target=_monitor, args=(scheduler, [], done, lambda: next(clocks)), daemon=True
    )
    monitor.start()
    time.sleep(0.5)
    done.set()
    monitor.join(timeout=2)
    assert [job for job, _ in scheduler.modified] == ["poll"]
    assert not scheduler.stopped


def test_the_monitor_stops_the_scheduler_when_a_signal_asked() -> None:
    scheduler = FakeScheduler()
    done = threading.Event()
    monitor = threading.Thread(target=_monitor, args=(scheduler, ["SIGTERM"], done), daemon=True)
    monitor.start()
    monitor.join(timeout=2)
    assert scheduler.stopped
