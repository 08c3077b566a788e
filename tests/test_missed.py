"""`missed_estimate`: the estimator's definition, and its estimate against a simulator's truth."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import Engine

from recorder import missed, stats
from recorder.clock import to_datetime
from recorder.pipeline import Pipeline
from recorder.simulator import Account, JobKind, ManualClock, SimConfig, Simulator
from recorder.snapshot import PollResult
from recorder.store import Store
from tests import stats_model
from tests.feeding import ok
from tests.test_stats import assert_report_is_the_truth

T0 = 1_760_000_000.0
URL = "http://127.0.0.1:9/missed/"
AGE = missed.MISSED_AGE_S


@pytest.mark.parametrize(
    ("lower", "age", "gap", "latency", "p"),
    [
        (45.0, 10.0, 30.0, 0.05, 1.0),  # as long as the gap: it could not slip between polls
        (29.96, 10.0, 30.0, 0.05, 1.0),  # the latency counts towards the gap
        (29.9, 10.0, 30.0, 0.05, 0.0),  # shorter, listed late: not in the sample
        (3.0, 1.0, 30.0, 0.0, AGE / 30.0),  # listed within MISSED_AGE_S of its start
        (3.0, 1.0, 30.0, 1.0, (AGE + 0.5) / 30.0),  # half the latency widens the sampled starts
        (3.0, -0.2, 30.0, 0.5, (AGE + 0.25) / 30.0),  # started after the poll was sent
        (1.0, 1.0, 2.1, 0.6, 1.0),  # polls closer than MISSED_AGE_S: p is at most 1
        (0.0, 0.0, 0.0, 0.0, 1.0),  # no spacing at all
    ],
)
def test_seen_probability(lower: float, age: float, gap: float, latency: float, p: float) -> None:
    assert missed.seen_probability(lower, age, gap, latency) == pytest.approx(p)


@pytest.mark.parametrize(
    ("weight", "seen", "expected"), [(0.0, 0, 0.0), (150.0, 100, 50.0), (80.0, 100, 0.0)]
)
def test_missed_estimate_is_never_negative(weight: float, seen: int, expected: float) -> None:
    assert missed.estimate(weight - seen) == expected


def report(engine: Engine, since: float, until: float, by: tuple[str, ...] = ()) -> stats.Report:
    now = to_datetime(until + 1)
    query = stats.StatsQuery(to_datetime(since), to_datetime(until), now, by, histogram=True)
    return stats.compute(engine, query)


def sub_interval_sim(clock: ManualClock) -> Simulator:
    """Many jobs far shorter than the polls' spacing, and some longer, never short of slots."""
    kinds = (JobKind("image", 20.0, 6.0), JobKind("video", 5.0, 15.0), JobKind("long", 1.0, 90.0))
    accounts = (Account("a@example.com", "1", 200),)
    return Simulator(SimConfig(seed=12, kinds=kinds, accounts=accounts), clock=clock)


def test_no_polls_and_one_poll_estimate_nothing(engine: Engine) -> None:
    assert [g.missed_estimate for g in report(engine, T0, T0 + 3600).groups] == [0.0]
    clock = ManualClock(T0)
    sim = sub_interval_sim(clock)
    clock.advance(600)
    results = [ok(sim, clock)]
    Pipeline(Store(engine), URL, lambda: results.pop(0), gap_s=90.0).poll_once()
    # One poll: its jobs started before any covered time, so none is in the estimate.
    assert [g.missed_estimate for g in report(engine, T0, T0 + 3600).groups] == [0.0]


def record(engine: Engine, hours: float) -> tuple[Simulator, list[float], set[str]]:
    """Poll the simulator every 25 to 35 s for `hours`; the polls' times and the ids listed."""
    clock = ManualClock(T0)
    sim = sub_interval_sim(clock)
    rng = random.Random(12)
    listed: set[str] = set()
    times: list[float] = []
    results: list[PollResult] = []
    pipeline = Pipeline(Store(engine), URL, lambda: results.pop(0), gap_s=90.0)
    while clock.t < T0 + hours * 3600:
        latency = rng.uniform(0.02, 0.4)
        listed |= {job.api_id for job in sim.running(clock.t + latency / 2)}
        results.append(ok(sim, clock, latency))
        times.append(clock.t)
        pipeline.poll_once()
        clock.advance(rng.uniform(25, 35))
    return sim, times, listed


def test_the_estimate_is_within_a_quarter_of_the_simulators_truth(engine: Engine) -> None:
    """Thousands of jobs, most much shorter than the spacing of the polls: the jobs that no
    successful poll listed, among those that started between the first and the last poll."""
    sim, times, listed = record(engine, hours=5)
    since, until = times[0], times[-1]
    started = [j for j in sim.truth(until) if since < j.start < until]
    missed = sum(1 for j in started if j.api_id not in listed)
    assert len(started) > 6000 and missed > 4000

    estimate = report(engine, since, until).groups[0].missed_estimate
    assert estimate == pytest.approx(missed, rel=0.25), (missed, len(started))
    # The long jobs (about 3 gaps) have next to nothing missed; every grouping is the model's.
    by_type = report(engine, since, until, ("type",))
    long_jobs = next(g for g in by_type.groups if g.key["type"] == "long")
    assert long_jobs.missed_estimate < 0.05 * sum(g.missed_estimate for g in by_type.groups)
    jobs, polls = stats_model.load(engine)
    for by in ((), ("type",), ("hour",), ("type", "hour"), ("account", "day"), ("target",)):
        truth = stats_model.compute(jobs, polls, since, until, until + 1, by)
        assert_report_is_the_truth(report(engine, since, until, by), truth, by)
