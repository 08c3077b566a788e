"""Overdue jobs: the rule, `recorder jobs --overdue`, `recorder status`, the daemon's log."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert

from recorder import reports
from recorder.cli import cli
from recorder.clock import to_datetime
from recorder.daemon import Daemon
from recorder.metrics import TargetMetrics
from recorder.models import Job, Poll
from recorder.overdue import MIN_FINISHED, age_floor, is_overdue, typical_durations
from recorder.pipeline import Pipeline
from recorder.simulator import ManualClock
from recorder.snapshot import Item, PollResult, Snapshot
from recorder.store import Store

URL_A = "http://127.0.0.1:9/v2/pixverse/scheduler/"
URL_B = "http://127.0.0.1:9/v2/kling/scheduler/"


@pytest.mark.parametrize(
    ("age", "p95", "finished", "expected"),
    [
        (100.0, 50.0, MIN_FINISHED - 1, False),  # 19 finished jobs: too few to judge
        (100.0, 50.0, MIN_FINISHED, True),  # 20: enough
        (50.0, 50.0, 20, False),  # at the p95: not past it
        (50.001, 50.0, 20, True),
        (49.0, 50.0, 1000, False),
        (100.0, None, 0, False),  # no finished job of the type at all
    ],
)
def test_the_rule(age: float, p95: float | None, finished: int, expected: bool) -> None:
    assert is_overdue(age, p95, finished) is expected


@pytest.mark.parametrize(
    ("start_at", "start_max", "age"),
    [
        (900.0, 950.0, 50.0),  # the least age: from the latest possible start
        (900.0, None, 100.0),  # a job without a start bound: from its estimate
    ],
)
def test_the_age_is_its_lower_bound(start_at: float, start_max: float | None, age: float) -> None:
    assert age_floor(1000.0, start_at, start_max) == age


def add_job(engine: Engine, target_id: int, poll_id: int, api_id: str, **values: Any) -> None:
    row = {
        "target_id": target_id,
        "api_id": api_id,
        "status": "running",
        "first_poll_id": poll_id,
        "start_source": "elapsed",
        "closed_across_gap": False,
    } | values
    with engine.begin() as conn:
        conn.execute(insert(Job).values(**row))


def finished(
    engine: Engine,
    target_id: int,
    poll_id: int,
    prefix: str,
    job_type: str,
    durations: Any,
    end: float,
) -> None:
    for index, duration in enumerate(durations):
        add_job(
            engine,
            target_id,
            poll_id,
            f"{prefix}-{index}",
            type=job_type,
            status="finished",
            start_at=to_datetime(end - duration),
            end_at=to_datetime(end),
            duration_s=float(duration),
        )


def build(engine: Engine, now: float) -> dict[str, int]:
    """Two targets with known jobs at `now`; their ids by name."""
    store = Store(engine)
    a = store.target(URL_A, now - 86400, name="alpha")
    b = store.target(URL_B, now - 86400, name="beta")
    polls = {}
    for target_id in (a, b):
        with engine.begin() as conn:
            polls[target_id] = conn.execute(
                insert(Poll)
                .values(
                    target_id=target_id,
                    sent_at=to_datetime(now - 5),
                    received_at=to_datetime(now - 4.9),
                    latency_s=0.1,
                    outcome="ok",
                    http_status=200,
                    item_count=0,
                    after_gap=False,
                )
                .returning(Poll.id)
            ).scalar_one()
    pa, pb = polls[a], polls[b]
    # alpha: 20 videos of 1..20 s in the last hour (p95: the 19th, 19 s); 19 images (too few).
    finished(engine, a, pa, "v", "video", range(1, 21), now - 3600)
    finished(engine, a, pa, "i", "image", range(1, 20), now - 3600)
    # One long video that ended 8 days ago: outside the window (it would make the p95 20 s).
    finished(engine, a, pa, "old", "video", [5000], now - 8 * 86400)
    # beta: its own videos take long; the same age is nothing there.
    finished(engine, b, pb, "bv", "video", [1000] * 20, now - 3600)

    def running(target_id: int, api_id: str, job_type: str, start: float, hi: float | None) -> None:
        poll = polls[target_id]
        add_job(
            engine,
            target_id,
            poll,
            api_id,
            type=job_type,
            start_at=to_datetime(start),
            start_max=None if hi is None else to_datetime(hi),
        )

    running(a, "late-video", "video", now - 100, now - 60)  # at least 60 s > 19 s
    running(a, "fresh-video", "video", now - 100, now - 10)  # may be only 10 s old
    running(a, "unbounded-video", "video", now - 80, None)  # no bound: 80 s by its estimate
    running(a, "late-image", "image", now - 5000, now - 4000)  # images: too few to judge
    running(b, "beta-video", "video", now - 100, now - 60)  # beta's p95 is 1000 s
    return {"alpha": a, "beta": b}


def test_the_p95_per_target_and_type(engine: Engine) -> None:
    now = time.time()
    ids = build(engine, now)
    with engine.connect() as conn:
        typical = typical_durations(conn, now)
    assert {key: (t.p95_s, t.finished) for key, t in typical.items()} == {
        (ids["alpha"], "video"): (19.0, 20),
        (ids["beta"], "video"): (1000.0, 20),
    }


def test_the_boundary_against_the_database(engine: Engine) -> None:
    now = time.time()
    ids = build(engine, now)
    # late-video's age floor is 60 s: overdue as long as the p95 (19 s) is below it.
    with engine.connect() as conn:
        assert reports.overdue_counts(conn, to_datetime(now)) == {ids["alpha"]: 2}
        # 41 s earlier, unbounded-video is 39 s old, late-video 19 s: exactly the p95, not past it.
        assert reports.overdue_counts(conn, to_datetime(now - 41)) == {ids["alpha"]: 1}


def run_cli(db_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--db", db_url, *args], catch_exceptions=False)


def test_jobs_overdue_lists_only_the_overdue_running_jobs(db_url: str, engine: Engine) -> None:
    build(engine, time.time())
    result = run_cli(db_url, "jobs", "--overdue", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert sorted(row["id"] for row in rows) == ["late-video", "unbounded-video"]
    assert {row["status"] for row in rows} == {"running"}
    assert {row["target_name"] for row in rows} == {"alpha"}
    limited = json.loads(
        run_cli(db_url, "jobs", "--overdue", "--limit", "1", "--format", "json").output
    )
    assert len(limited) == 1
    beta = run_cli(db_url, "jobs", "--overdue", "--target", "beta", "--format", "json")
    assert json.loads(beta.output) == []


def test_status_counts_the_overdue_jobs(db_url: str, engine: Engine) -> None:
    build(engine, time.time())
    result = run_cli(db_url, "status", "--format", "json", "--max-age", "3600")
    rows = {row["target"]: row for row in json.loads(result.output)}
    assert rows[URL_A]["overdue"] == 2
    assert rows[URL_A]["running_jobs"] == 4
    assert rows[URL_B]["overdue"] == 0


def test_a_job_becoming_overdue_is_logged_once(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    url = "http://127.0.0.1:9/v2/minimax/scheduler/"
    target_id = Store(engine).target(url, now - 86400, name="gamma")
    with engine.begin() as conn:
        poll_id = conn.execute(
            insert(Poll)
            .values(
                target_id=target_id,
                sent_at=to_datetime(now - 3700),
                received_at=to_datetime(now - 3700),
                latency_s=0.0,
                outcome="ok",
                after_gap=False,
            )
            .returning(Poll.id)
        ).scalar_one()
    finished(engine, target_id, poll_id, "v", "video", range(1, 21), now - 3600)
    clock = ManualClock(now)
    wall = ManualClock(now)

    def source() -> PollResult:
        # A video that has run for 30 s when first seen, listed at every poll from then on.
        items = (Item("slow-1", type="video", elapsed_s=int(30 + wall.t - now)),)
        return PollResult(wall.t, wall.t + 0.05, 200, Snapshot(items))

    pipeline = Pipeline(Store(engine), url, source, gap_s=10.0)
    metrics = TargetMetrics()
    daemon = Daemon(pipeline, 1.0, monotonic=clock, wall_clock=wall, name="gamma", metrics=metrics)
    caplog.set_level(logging.INFO, logger="recorder")
    for _ in range(4):
        daemon.tick()
        clock.advance(1.0)
        wall.advance(1.0)
    lines = [r.getMessage() for r in caplog.records if "overdue" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("[gamma] overdue   slow-1 type=video running for ")
    assert lines[0].endswith("(p95 of its type 19s)")
    figures = metrics.snapshot()
    assert figures is not None and figures.target == "gamma"
    assert figures.overdue == {"video": 1}
    assert figures.running == {"video": 1}
    assert figures.finished == {"video": 20}
