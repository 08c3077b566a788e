"""An upstream glitch: a list that comes back empty or shrunken, then whole again."""

from __future__ import annotations

from sqlalchemy import select

from recorder.models import Job, Transition
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.snapshot import PollResult, Snapshot
from recorder.store import Store
from tests.feeding import empty, ok

T0 = 1_750_000_000.0
URL = "http://127.0.0.1:9/v2/pixverse/scheduler/"


def shrunken(sim: Simulator, clock: ManualClock) -> PollResult:
    """A list that lost every other job."""
    whole = ok(sim, clock)
    assert isinstance(whole.answer, Snapshot)
    return PollResult(
        whole.sent_at, whole.received_at, 200, Snapshot(items=whole.answer.items[::2])
    )


def test_a_glitch_reopens_the_jobs_with_the_right_duration(store: Store) -> None:
    clock = ManualClock(T0)
    config = SimConfig(seed=4, kinds=(JobKind("video", 6.0, 120.0),), initial_jobs=6)
    sim = Simulator(config, clock=clock)
    glitches = {5: lambda: empty(clock), 9: lambda: shrunken(sim, clock)}

    def source() -> PollResult:
        index = round((clock.t - T0) / 10.0)
        return glitches.get(index, lambda: ok(sim, clock))()

    recorder = Pipeline(store, URL, source, gap_s=30.0)
    for _ in range(70):
        recorder.poll_once()
        clock.advance(10.0)

    truth = {j.api_id: j for j in sim.truth()}
    with store.engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__)).all()
        transitions = conn.execute(
            select(Job.api_id, Transition.kind)
            .join(Job, Job.id == Transition.job_id)
            .order_by(Transition.poll_id, Transition.job_id)
        ).all()
    assert len({j.api_id for j in jobs}) == len(jobs)  # one row per job
    reappeared = {t.api_id for t in transitions if t.kind == "reappeared"}
    assert len(reappeared) >= 4  # the empty list, then the shrunken one
    for job in jobs:
        if job.status != "finished":
            continue
        true = truth[job.api_id]
        if any(abs(true.end - (T0 + 10.0 * index)) <= 10.0 for index in glitches):
            # A list that drops a job just before it really ends looks exactly like its end.
            continue
        # The glitch's false end was withdrawn: the duration is the whole run's.
        assert job.duration_min_s - 1e-3 <= true.end - true.start <= job.duration_max_s + 1e-3
        kinds = [t.kind for t in transitions if t.api_id == job.api_id]
        assert kinds[0] == "appeared" and kinds[-1] == "vanished"
        assert kinds.count("vanished") == kinds.count("reappeared") + 1
