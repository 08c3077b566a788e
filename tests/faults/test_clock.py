"""A step of the host clock (NTP stepping it back or forward) during a run."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from recorder.client import SchedulerClient
from recorder.clock import SteadyClock
from recorder.daemon import _monitor
from recorder.models import Job
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.stopping import STOP
from recorder.store import Store
from tests.waiting import DEADLINE_S, Unmet, wait_for


class SteppingWall:
    """The host's wall clock, stepped by `step` seconds after `after` readings."""

    def __init__(self, step: float, after: int) -> None:
        self.step, self.after, self.readings = step, after, 0

    def __call__(self) -> float:
        self.readings += 1
        return time.time() + (self.step if self.readings > self.after else 0.0)


def test_the_steady_clock_ignores_steps_of_the_wall_clock() -> None:
    monotonic = ManualClock(500.0)
    t0 = 1_750_000_000.0
    walls = iter([t0, t0 + 0.05 - 3600.0])  # the anchor, then a reading after a step back
    clock = SteadyClock(wall=lambda: next(walls), monotonic=monotonic)
    first = clock()
    monotonic.advance(0.05)
    second = clock()
    assert second - first == pytest.approx(0.05)  # the monotonic clock's advance, not -1 h
    assert clock.drift() == pytest.approx(-3600.0)  # and the step is visible as drift


def finished_jobs(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.scalar(select(func.count()).where(Job.status == "finished")) or 0


def poll_across_a_step(store: Store, sim: Simulator, step: float) -> None:
    """Poll through a SteadyClock whose wall steps by `step`: 25 polls, and until 3 jobs ended."""
    wall = SteppingWall(step=step, after=5)
    client = SchedulerClient(sim.url, sim.config.token, wall_clock=SteadyClock(wall=wall))
    recorder = Pipeline(store, sim.url, client.poll, gap_s=2.0)
    before = finished_jobs(store)
    polls = 0

    def polled_and_ended() -> bool | Unmet:
        nonlocal polls
        recorder.poll_once()
        polls += 1
        ended = finished_jobs(store) - before
        return (polls >= 25 and ended >= 3) or Unmet(f"{polls} polls, {ended} jobs ended")

    try:
        wait_for(polled_and_ended, interval=0.1, message=f"jobs ended, wall stepped {step:+g}s")
    finally:
        client.close()


def test_steps_during_a_run_give_no_negative_or_absurd_durations(store: Store) -> None:
    config = SimConfig(seed=6, kinds=(JobKind("image", 240.0, 0.6),), initial_jobs=2)
    began = time.monotonic()
    with Simulator(config) as sim:
        for step in (-3600.0, 3600.0):
            poll_across_a_step(store, sim, step)
        truth = {j.api_id: j for j in sim.truth()}
    span = time.monotonic() - began  # the whole run: no duration's bounds can be wider
    with store.engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__).where(Job.status == "finished")).all()
    assert len(jobs) > 5
    for job in jobs:
        assert 0 <= job.duration_min_s <= job.duration_s <= job.duration_max_s
        assert job.duration_max_s - job.duration_min_s < span
        true = truth[job.api_id]  # not an hour off either way
        assert job.duration_min_s - 0.01 <= true.end - true.start <= job.duration_max_s + 0.01


class FakeScheduler:
    running = True

    def __init__(self) -> None:
        self.modified: list[tuple[str, Any]] = []
        self.stopped = False

    def get_jobs(self) -> list[Any]:
        return [SimpleNamespace(id="poll")]

    def modify_job(self, job_id: str, **changes: Any) -> None:
        self.modified.append((job_id, changes))

    def shutdown(self, wait: bool = True) -> None:
        self.stopped, self.running = True, False


class Stepped(SteadyClock):
    def drift(self) -> float:
        return -3600.0


class Calm(SteadyClock):
    """No step; counts the monitor's looks."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def drift(self) -> float:
        self.looks += 1
        return 0.0


def test_the_monitor_polls_again_at_once_after_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """APScheduler times its runs on the wall clock; after a step back it would wait an hour."""
    monkeypatch.setattr(STOP, "requested", [])
    scheduler = FakeScheduler()
    done = threading.Event()
    calm = Calm()
    clocks = iter([Stepped(), calm])
    stops: list[bool] = []
    monitor = threading.Thread(
        target=_monitor,
        args=(scheduler, lambda: stops.append(True), done, lambda: next(clocks)),
        daemon=True,
    )
    monitor.start()
    try:
        # Having looked at the new clock a few times, it had every chance to re-time again.
        wait_for(lambda: calm.looks >= 3, message="the monitor to look again after the step")
    finally:
        done.set()
        monitor.join(timeout=DEADLINE_S)
    assert not monitor.is_alive()
    assert [job for job, _ in scheduler.modified] == ["poll"]
    assert not scheduler.stopped and not stops


def test_the_monitor_stops_the_scheduler_when_a_signal_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(STOP, "requested", ["SIGTERM"])
    scheduler = FakeScheduler()
    aborted: list[bool] = []
    monitor = threading.Thread(
        target=_monitor,
        args=(scheduler, lambda: aborted.append(True), threading.Event()),
        daemon=True,
    )
    monitor.start()
    monitor.join(timeout=DEADLINE_S)
    assert not monitor.is_alive()
    assert scheduler.stopped
    assert aborted == [True]  # the poll in flight was cut short, once
