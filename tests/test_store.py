"""The store: one transaction per poll, a poll with no change writes one row, lossless history."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import Engine, func, select, text

from recorder import db
from recorder.models import Base, Job, Transition
from recorder.parse import normalize_items
from recorder.pipeline import Pipeline
from recorder.simulator import Faults, JobKind, ManualClock, SimConfig, Simulator
from recorder.snapshot import PollResult, Snapshot
from recorder.store import Store
from tests.feeding import empty, failed, ok

URL = "http://127.0.0.1:9/v2/pixverse/scheduler/"
T0 = 1_750_000_000.0


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.scalar(select(func.count()).select_from(table)) or 0
            for name, table in Base.metadata.tables.items()
        }


def pipeline(store: Store, clock: ManualClock, results: list[PollResult]) -> Pipeline:
    return Pipeline(store, URL, lambda: results.pop(0), gap_s=30.0)


def many_jobs(n: int, now: float, skew: float = 7.0) -> PollResult:
    """A list of `n` jobs that started at known times, as the API shows them at `now`."""
    items = []
    for k in range(n):
        start = T0 - 60 - k * 0.37
        items.append(
            {
                "id": f"user:1-pixverse:a{k % 5}@example.com-video:{k}",
                "type": "video",
                "started": f"{_iso(start + skew)}",
                "elapsed": f"{int(now - start) // 60:02d}:{int(now - start) % 60:02d}",
            }
        )
    return PollResult(now, now + 0.01, 200, normalize_items(items))


def _iso(ts: float) -> str:
    from recorder.simulator import format_started

    return format_started(ts)


def test_a_poll_with_1000_jobs_in_flight_and_no_change_writes_one_row(
    store: Store, engine: Engine
) -> None:
    results = [many_jobs(1000, T0), many_jobs(1000, T0 + 10.0), many_jobs(1000, T0 + 20.3)]
    recorder = pipeline(store, ManualClock(T0), results)
    recorder.poll_once()
    before = row_counts(engine)
    assert before["jobs"] == 1000
    second = recorder.poll_once()
    after_second = row_counts(engine)
    recorder.poll_once()
    after_third = row_counts(engine)
    assert not second.change.changed
    assert {k: after_second[k] - before[k] for k in before} == {
        "targets": 0,
        "polls": 1,
        "jobs": 0,
        "transitions": 0,
        "observations": 0,
        "leases": 0,
        "quarantine": 0,
    }
    assert sum(after_third.values()) - sum(after_second.values()) == 1


def simulated_run(
    store: Store, seed: int, n_polls: int = 120, *, glitches: bool = True
) -> tuple[Pipeline, list, Simulator]:
    """Drive a pipeline over a simulated world with failures and glitches, on a manual clock."""
    clock = ManualClock(T0)
    config = SimConfig(
        seed=seed,
        kinds=(JobKind("video", 12.0, 40.0), JobKind("image", 20.0, 8.0)),
        faults=Faults(skew_s=-45.0),
        initial_jobs=4,
    )
    sim = Simulator(config, clock=clock)
    rng = random.Random(seed)
    results: list[PollResult] = []
    for _ in range(n_polls):
        roll = rng.random()
        if roll < 0.1:
            results.append(failed(clock))
        elif glitches and roll < 0.13:
            results.append(empty(clock))
        else:
            results.append(ok(sim, clock))
        clock.advance(rng.uniform(1.5, 2.5))
    recorder = Pipeline(store, URL, lambda: results.pop(0), gap_s=10.0)
    recorded = [recorder.poll_once() for _ in range(n_polls)]
    return recorder, recorded, sim


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_past_list_is_rebuilt_exactly_from_the_tables(store: Store, seed: int) -> None:
    _, recorded, _ = simulated_run(store, seed)
    checked = 0
    for rec in recorded:
        if not isinstance(rec.result.answer, Snapshot):
            continue
        rebuilt = {i.api_id: i for i in store.listing_at(rec.poll_id)}
        seen = {i.api_id: i for i in rec.result.answer.items}
        assert set(rebuilt) == set(seen)
        for api_id, item in seen.items():
            got = rebuilt[api_id]
            assert (got.type, got.started_raw, got.elapsed_s) == (
                item.type,
                item.started_raw,
                item.elapsed_s,
            )
            assert (got.reply_url, got.reply_ref) == (item.reply_url, item.reply_ref)
        checked += 1
    assert checked > 80


def test_rows_grow_with_changes_not_with_polls(store: Store, engine: Engine) -> None:
    _, recorded, _ = simulated_run(store, seed=5)
    counts = row_counts(engine)
    transitions = sum(
        len(r.change.opened) + len(r.change.reopened) + len(r.change.closed) for r in recorded
    )
    observations = sum(len(r.change.observed) for r in recorded)
    assert counts["transitions"] == transitions
    assert counts["observations"] == observations
    # `elapsed` advances at every poll, yet almost no observation beyond the first per job.
    assert observations <= counts["jobs"] + counts["transitions"] // 10 + 2


def test_one_row_per_job_even_after_glitches(store: Store, engine: Engine) -> None:
    simulated_run(store, seed=7)
    with engine.connect() as conn:
        dupes = conn.execute(
            select(Job.api_id).group_by(Job.target_id, Job.api_id).having(func.count() > 1)
        ).all()
        reappeared = conn.scalar(
            select(func.count()).select_from(Transition).where(Transition.kind == "reappeared")
        )
    assert dupes == []
    assert reappeared and reappeared > 0


def test_recorded_history_matches_the_simulators_truth(store: Store, engine: Engine) -> None:
    _, _, sim = simulated_run(store, seed=11, n_polls=150, glitches=False)
    truth = {j.api_id: j for j in sim.truth()}
    with engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__).where(Job.status == "finished")).all()
    assert len(jobs) > 20
    for job in jobs:
        true = truth[job.api_id]
        assert job.end_min is not None and job.end_max is not None
        assert job.end_min.timestamp() - 1e-3 <= true.end <= job.end_max.timestamp() + 1e-3
        assert job.duration_min_s is not None and job.duration_max_s is not None
        assert job.duration_min_s - 1e-3 <= true.end - true.start <= job.duration_max_s + 1e-3
        assert abs(job.start_at.timestamp() - true.start) <= 1.0


def test_a_restarted_recorder_continues_where_the_last_one_stopped(store: Store) -> None:
    clock = ManualClock(T0)
    sim = Simulator(SimConfig(seed=3, initial_jobs=5), clock=clock)
    first = Pipeline(store, URL, lambda: ok(sim, clock), gap_s=30.0)
    first.poll_once()
    running = set(first.state.open_jobs)
    assert running
    clock.advance(3600)  # the recorder was down for an hour
    second = Pipeline(store, URL, lambda: ok(sim, clock), gap_s=30.0)
    rec = second.poll_once()
    assert not rec.change.opened or not running & {e.job.api_id for e in rec.change.opened}
    closed = {e.api_id: e for e in rec.change.closed}
    assert running <= set(closed) | set(second.state.open_jobs)
    assert all(e.across_gap for e in closed.values())


def test_failed_polls_are_recorded_with_their_kind(store: Store, engine: Engine) -> None:
    clock = ManualClock(T0)
    recorder = Pipeline(store, URL, lambda: failed(clock), gap_s=30.0)
    recorder.poll_once()
    with engine.connect() as conn:
        row = conn.execute(text("SELECT outcome, http_status, error, item_count FROM polls")).one()
    assert tuple(row) == ("server", 503, "HTTP 503", None)


def test_a_database_from_a_newer_recorder_is_refused(db_url: str, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    with pytest.raises(db.DatabaseError, match="newer recorder"):
        db.open_database(db_url)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_sqlite_database_runs_in_wal_mode(engine: Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_restarted_postgresql_is_reconnected_to(
    store: Store, engine: Engine, pg_server: object
) -> None:
    clock = ManualClock(T0)
    sim = Simulator(SimConfig(seed=3, initial_jobs=3), clock=clock)
    recorder = Pipeline(store, URL, lambda: ok(sim, clock), gap_s=30.0)
    recorder.poll_once()
    pg_server.restart()  # type: ignore[attr-defined]  # every pooled connection is now dead
    clock.advance(5.0)
    recorded = recorder.poll_once()  # pre-ping replaces the dead connection
    assert recorded.poll_id > 0
    assert row_counts(engine)["polls"] == 2
