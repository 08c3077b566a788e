"""Rollups: their definition (table tests), and kept by the store exactly as a rebuild makes them,
through closes, reappearances and pruning, with every stats figure still the brute-force model's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select

from recorder import db, rollups, stats
from recorder.clock import EARLIEST, LATEST, to_datetime
from recorder.models import (
    Base,
    Job,
    Poll,
    RollupHour,
    RollupPeak,
    Target,
    Transition,
    TransitionKind,
)
from recorder.parse import normalize_items
from recorder.pipeline import Pipeline
from recorder.retention import prune
from recorder.rollups import Finished, peak, summarize
from recorder.simulator import format_started
from recorder.snapshot import Failure, Outcome, PollResult
from recorder.store import Store
from tests import stats_model
from tests.plans import planned
from tests.test_stats import assert_report_is_the_truth

H = 3600
T0 = 1_750_000_000.0 // H * H  # on an hour's edge
URLS = ("http://127.0.0.1:9/a/scheduler/", "http://127.0.0.1:9/b/scheduler/")  # both generic
# Two targets of two services: by service, each group is one target's.
TWO_SERVICES = (
    "http://127.0.0.1:9/v2/pixverse/scheduler/",
    "http://127.0.0.1:9/v1/kling/scheduler/",
)


def job(s: float, e: float, **kw: Any) -> Finished:
    values: dict[str, Any] = {
        "id": 1,
        "target_id": 1,
        "type": "video",
        "account": "a",
        "duration": e - s,
        "wide": False,
        "long": e - s > rollups.LONG_JOB_S,
    }
    return Finished(s=s, e=e, **(values | kw))


# --- the definition -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], 0),
        ([(0.0, 1), (10.0, -1)], 1),
        ([(0.0, 1), (10.0, -1), (10.0, 1), (20.0, -1)], 1),  # back to back: never together
        ([(0.0, 1), (10.0, -1), (5.0, 1), (20.0, -1)], 2),
        ([(0.0, 1), (30.0, -1), (5.0, 1), (6.0, -1), (7.0, 1), (8.0, -1)], 2),
    ],
)
def test_peak(events: list[tuple[float, int]], expected: int) -> None:
    assert peak(events) == expected


def test_a_job_counts_where_it_ends_starts_and_runs() -> None:
    hours, peaks = summarize([job(T0 + 1800, T0 + 2 * H + 600, duration=4200.0)], 0, 10**9)
    by_hour = {row["hour"] - int(T0 // H): row for row in hours}
    assert set(by_hour) == {0, 1, 2}
    assert (by_hour[0]["started"], by_hour[0]["finished"], by_hour[0]["busy_s"]) == (1, 0, 1800)
    assert (by_hour[1]["started"], by_hour[1]["finished"], by_hour[1]["busy_s"]) == (0, 0, H)
    assert by_hour[2]["finished"] == 1 and by_hour[2]["busy_s"] == 600
    assert by_hour[2]["duration_sum"] == by_hour[2]["duration_max"] == 4200.0
    assert len(peaks) == 3 * 8  # every hour, every grouping
    assert {p["peak"] for p in peaks} == {1}


def test_summarize_only_the_hours_asked_for() -> None:
    hours, peaks = summarize([job(T0 + 1800, T0 + 2 * H + 600)], int(T0 // H) + 1, int(T0 // H) + 1)
    assert [(r["hour"] - int(T0 // H), r["finished"], r["busy_s"]) for r in hours] == [(1, 0, H)]
    assert {p["hour"] for p in peaks} == {int(T0 // H) + 1}


def test_peaks_are_per_grouping_not_summed() -> None:
    jobs = [
        job(T0, T0 + 100, id=1, type="video"),
        job(T0 + 200, T0 + 300, id=2, type="image"),
        job(T0 + 50, T0 + 250, id=3, type="image", account="b"),
    ]
    _, peaks = summarize(jobs, 0, 10**9)
    found = {(p["scope"], p["type"], p["account"]): p["peak"] for p in peaks}
    assert found[(0, None, None)] == 2  # all jobs: never three at once
    assert found[(rollups.BY_TYPE, "video", None)] == 1
    assert found[(rollups.BY_TYPE, "image", None)] == 2
    assert found[(rollups.BY_TYPE | rollups.BY_ACCOUNT, "image", "a")] == 1


def test_a_long_job_counts_but_stays_out_of_the_concurrency_rollups() -> None:
    absurd = job(0.0, T0, id=1)  # a start in 1970: one row each for its start and its end
    hours, peaks = summarize([absurd], 0, 10**9)
    assert sorted((r["hour"], r["started"], r["finished"], r["busy_s"]) for r in hours) == [
        (0, 1, 0, 0.0),
        (int(T0 // H), 0, 1, 0.0),
    ]
    assert peaks == []
    assert rollups.touched(absurd) == {0, int(T0 // H)}


def test_an_empty_or_backwards_interval_counts_but_is_never_in_flight() -> None:
    hours, peaks = summarize([job(T0 + 10, T0 + 10), job(T0 + 20, T0 + 5, id=2)], 0, 10**9)
    (row,) = hours
    assert (row["started"], row["finished"], row["busy_s"]) == (2, 2, 0.0)
    assert peaks == []


# --- kept in step with the jobs -------------------------------------------------------------


@dataclass(frozen=True)
class Scripted:
    """A job of the script: listed from poll `first` to poll `last`, missing at `glitches`."""

    k: int
    target: int
    kind: str
    start_ahead: float  # how long before its first listing it started
    first: int
    last: int
    glitches: frozenset[int]


@st.composite
def scripts(draw: st.DrawFn) -> tuple[list[float], list[bool], list[Scripted]]:
    n = draw(st.integers(4, 24), label="polls")
    gaps = draw(
        st.lists(
            st.one_of(st.floats(20, 1500), st.sampled_from([3599.5, 3600.0, 40_000.0])),
            min_size=n,
            max_size=n,
        ),
        label="gaps",
    )
    times = [T0 + sum(gaps[:i]) for i in range(n)]
    failed = draw(st.lists(st.booleans(), min_size=n, max_size=n), label="failed")
    jobs = []
    for k in range(draw(st.integers(1, 12), label="jobs")):
        first = draw(st.integers(0, n - 1))
        last = draw(st.integers(first, n - 1))
        glitches = draw(st.frozensets(st.integers(first + 1, max(first + 1, last - 1))))
        jobs.append(
            Scripted(
                k,
                draw(st.integers(0, 1)),
                draw(st.sampled_from(["video", "image"])),
                draw(st.floats(0, 900)),
                first,
                last,
                frozenset(g for g in glitches if first < g < last),
            )
        )
    return times, failed, jobs


def listing(times: list[float], jobs: list[Scripted], target: int, i: int) -> PollResult:
    now = times[i]
    items = []
    for j in jobs:
        if j.target != target or not j.first <= i <= j.last or i in j.glitches:
            continue
        start = times[j.first] - j.start_ahead
        elapsed = int(now - start)
        items.append(
            {
                "id": f"user:1-pixverse:a{j.k % 3}@example.com-{j.kind}:{j.k}",
                "type": j.kind,
                "started": format_started(start),
                "elapsed": f"{elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}",
            }
        )
    return PollResult(now, now + 0.05, 200, normalize_items(items))


def record(
    engine: Engine,
    script: tuple[list[float], list[bool], list[Scripted]],
    urls: tuple[str, str] = URLS,
) -> None:
    times, failed, jobs = script
    store = Store(engine)
    for target, url in enumerate(urls):
        results = []
        for i, now in enumerate(times):
            if failed[i] and 0 < i < len(times) - 1:
                results.append(PollResult(now, now + 0.05, 503, Failure(Outcome.SERVER, "503")))
            else:
                results.append(listing(times, jobs, target, i))
        recorder = Pipeline(store, url, lambda r=results: r.pop(0), gap_s=4000.0)
        for _ in times:
            recorder.poll_once()


def snapshot(engine: Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rollup tables' rows without their ids, in a canonical order (by every column that is
    not a float), floats wrapped to compare within a nanosecond: the store adds sums in another
    order than a rebuild does."""

    def canonical(rows: Any) -> list[tuple[Any, ...]]:
        out = [row[1:] for row in rows]
        out.sort(key=lambda r: [(v is None, str(v)) for v in r if not isinstance(v, float)])
        return [
            tuple(pytest.approx(v, rel=1e-12, abs=1e-9) if isinstance(v, float) else v for v in r)
            for r in out
        ]

    with engine.connect() as conn:
        return (
            canonical(conn.execute(select(RollupHour.__table__))),
            canonical(conn.execute(select(RollupPeak.__table__))),
        )


def empty_database(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def report_is_the_truth(engine: Engine, since: float, until: float, by: tuple[str, ...]) -> None:
    now = T0 + 86400 * 30
    query = stats.StatsQuery(
        to_datetime(since), to_datetime(until), to_datetime(now), by, histogram=True
    )
    jobs, polls = stats_model.load(engine)
    truth = stats_model.compute(jobs, polls, since, until, now, by)
    assert_report_is_the_truth(stats.compute(engine, query), truth, by)


def job_figures(report: stats.Report) -> list[tuple[Any, ...]]:
    return [
        (
            g.key,
            g.finished,
            g.started,
            g.running,
            g.duration,
            g.peak_concurrency,
            round(g.mean_concurrency, 9),
        )
        for g in report.groups
    ]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    script=scripts(),
    window=st.tuples(st.integers(-2, 30), st.integers(1, 40), st.sampled_from([0.0, 0.5, 1234.5])),
    by=st.sampled_from(
        [
            (),
            ("type",),
            ("account",),
            ("hour",),
            ("day",),
            ("type", "hour"),
            ("service",),
            ("target",),
            ("service", "hour"),
            ("target", "type"),
            ("service", "account", "day"),
        ]
    ),
    cutoff=st.integers(0, 40),
    urls=st.sampled_from([URLS, TWO_SERVICES]),
)
def test_the_store_keeps_the_rollups_a_rebuild_would_make(
    engine: Engine,
    script: tuple[list[float], list[bool], list[Scripted]],
    window: tuple[int, int, float],
    by: tuple[str, ...],
    cutoff: int,
    urls: tuple[str, str],
) -> None:
    """Jobs close, vanish for a poll and reappear (withdrawing what they added), run for
    hours or past a day, on two targets of one service or of two; polls fail. The rollups the
    store kept are the ones a rebuild makes from the jobs, every stats figure over a window of
    whole and partial hours is the model's, and pruning changes none of it."""
    empty_database(engine)
    record(engine, script, urls)
    jobs, _ = stats_model.load(engine)
    spans = [j.end_at.timestamp() - j.start_at.timestamp() for j in jobs if j.end_at]
    event(f"a job over a day: {any(span > rollups.LONG_JOB_S for span in spans)}")
    event(f"a job over an hour: {any(span > H for span in spans)}")
    with engine.connect() as conn:
        reappeared = conn.scalar(
            select(func.count()).where(Transition.kind == TransitionKind.REAPPEARED)
        )
    event(f"reappearances: {min(int(reappeared or 0), 2)}")
    kept = snapshot(engine)
    with engine.begin() as conn:
        rollups.rebuild(conn)
    assert snapshot(engine) == kept

    first, hours, offset = window
    since = T0 + first * H + offset
    until = since + hours * H + offset
    report_is_the_truth(engine, since, until, by)

    query = stats.StatsQuery(
        to_datetime(since), to_datetime(until), to_datetime(T0 + 86400 * 30), by
    )
    before = job_figures(stats.compute(engine, query))
    prune(engine, to_datetime(T0 + cutoff * H))
    assert snapshot(engine) == kept
    assert job_figures(stats.compute(engine, query)) == before


def test_a_reappearing_job_withdraws_what_it_added(engine: Engine) -> None:
    """Closed at the third poll, listed again at the fourth: the rollups forget it, and
    count it once more only when it really ends."""
    times = [T0 + 600 * i for i in range(8)]
    jobs = [Scripted(1, 0, "video", 30.0, 0, 6, frozenset({2}))]
    store = Store(engine)
    results = [listing(times, jobs, 0, i) for i in range(len(times))]
    recorder = Pipeline(store, URLS[0], lambda: results.pop(0), gap_s=4000.0)

    def finished() -> int:
        with engine.connect() as conn:
            return sum(conn.scalars(select(RollupHour.finished)).all())

    counts = []
    for _ in times:
        recorder.poll_once()
        counts.append(finished())
    assert counts == [0, 0, 1, 0, 0, 0, 0, 1]
    hours, peaks = snapshot(engine)
    with engine.begin() as conn:
        rollups.rebuild(conn)
    assert snapshot(engine) == (hours, peaks)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_close_reads_its_jobs_by_id(engine: Engine) -> None:
    """The jobs a poll closes or reopens are read by their ids: SQLite, which plans without
    statistics, must not look for them among every finished job by their status."""
    times = [T0 + 600 * i for i in range(6)]
    jobs = [Scripted(k, 0, "video", 30.0, 0, 2 + k % 3, frozenset()) for k in range(6)]
    record(engine, (times, [False] * len(times), jobs))
    with engine.connect() as conn:
        ids = list(conn.scalars(select(Job.id).where(Job.status == "finished")))
    assert ids

    def close() -> None:
        with engine.connect() as conn:
            transaction = conn.begin()
            rollups.refresh(conn, rollups.hours_of(conn, ids))
            rollups.add_finished(conn, ids, done=set())
            transaction.rollback()

    by_id = [plan for sql, plan in planned(engine, close) if "j.id IN" in sql]
    # The close reads too the polls its jobs' shares of the missed-jobs estimate need: by key.
    polls = (
        " / SEARCH f USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN"
        " / SEARCH prev USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN"
        " / CORRELATED SCALAR SUBQUERY 1"
        " / SEARCH q USING COVERING INDEX ix_polls_target_outcome_id"
        " (target_id=? AND outcome=? AND id<?)"
    )
    by_key = "SEARCH j USING INTEGER PRIMARY KEY (rowid=?)"
    assert by_id == [by_key, by_key + polls]


def test_reports_use_the_rollups(engine: Engine) -> None:
    """Whole hours are read from the rollups: a job the rollups do not know (inserted behind
    the store's back) is missing from them, and found once they are rebuilt."""
    times = [T0 + 600 * i for i in range(8)]
    jobs = [Scripted(1, 0, "video", 30.0, 1, 3, frozenset())]
    record(engine, (times, [False] * len(times), jobs))
    query = stats.StatsQuery(to_datetime(T0), to_datetime(T0 + 2 * H), to_datetime(T0 + 3 * H))
    assert stats.compute(engine, query).groups[0].finished == 1
    with engine.begin() as conn:
        conn.execute(RollupHour.__table__.delete())
        conn.execute(RollupPeak.__table__.delete())
    (group,) = stats.compute(engine, query).groups
    assert (group.finished, group.started, group.peak_concurrency) == (0, 0, 0)
    with engine.begin() as conn:
        rollups.rebuild(conn)
    assert stats.compute(engine, query).groups[0].finished == 1


def test_db_upgrade_fills_the_rollups_of_a_database_that_had_jobs(engine: Engine) -> None:
    """A database recorded before migration 0007 gets, on upgrade, the rollups the store
    would have kept."""
    times = [T0 + 900 * i for i in range(12)]
    jobs = [
        Scripted(1, 0, "video", 30.0, 0, 5, frozenset({2})),
        Scripted(2, 1, "image", 300.0, 3, 9, frozenset()),
        Scripted(3, 0, "image", 10.0, 4, 11, frozenset()),
    ]
    record(engine, (times, [False] * len(times), jobs))
    kept = snapshot(engine)
    assert kept[0] and kept[1]
    config = db.alembic_config(engine)
    command.downgrade(config, "0006")
    command.upgrade(config, "head")
    assert snapshot(engine) == kept


def test_jobs_at_the_ends_of_time_cost_their_own_rows(engine: Engine) -> None:
    """Clamped times (the epoch, the last second of year 9999) and a job that ends before it
    starts: the rollups hold a few rows for them, a rebuild and a refresh of their hours agree,
    and a report over all of time is the model's."""
    at = to_datetime
    with engine.begin() as conn:
        labels = {"name": "a", "service": "generic"}
        conn.execute(insert(Target).values(id=1, url=URLS[0], created_at=at(T0), **labels))
        poll = {"target_id": 1, "latency_s": 0.0, "outcome": "ok", "after_gap": False}
        conn.execute(insert(Poll).values(id=1, sent_at=at(T0), received_at=at(T0), **poll))
        spans = [(EARLIEST, T0), (LATEST, T0), (LATEST - 10, LATEST), (T0, T0 + 30)]
        for n, (start, end) in enumerate(spans, start=1):
            conn.execute(
                insert(Job).values(
                    target_id=1,
                    api_id=f"job-{n}",
                    type="video",
                    status="finished",
                    first_poll_id=1,
                    last_poll_id=1,
                    start_at=at(start),
                    start_source="poll",
                    end_at=at(end),
                    duration_s=end - start,
                    closed_across_gap=False,
                )
            )
        rollups.rebuild(conn)
    rebuilt = snapshot(engine)
    assert len(rebuilt[0]) <= 6  # start and end hours, not one row per hour since 1970
    with engine.begin() as conn:
        rollups.refresh(conn, rollups.hours_of(conn, [1, 2, 3, 4]))
    assert snapshot(engine) == rebuilt
    report_is_the_truth(engine, EARLIEST, LATEST, ())
    report_is_the_truth(engine, LATEST - 86400 * 3, LATEST, ("day",))
