"""The store: one transaction per poll, a poll with no change writes one row, lossless history."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select, text

from recorder import db
from recorder.models import (
    Base,
    Job,
    Observation,
    Poll,
    Target,
    Transition,
    TransitionKind,
    succeeded,
)
from recorder.parse import normalize_items
from recorder.pipeline import Pipeline
from recorder.simulator import Faults, JobKind, ManualClock, SimConfig, Simulator
from recorder.snapshot import PollResult, Snapshot
from recorder.store import Store, TargetNameTaken
from tests.feeding import empty, failed, ok
from tests.plans import plans

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
        "rollup_hours": 0,
        "rollup_peaks": 0,
        "capacity": 0,
        "outcomes": 0,
    }
    assert sum(after_third.values()) - sum(after_second.values()) == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_stores_lookups_of_jobs_use_their_indexes(store: Store, engine: Engine) -> None:
    # Running and finished jobs, so that an index on status would look attractive.
    recorder = pipeline(store, ManualClock(T0), [many_jobs(50, T0), many_jobs(20, T0 + 10.0)])
    recorder.poll_once()
    recorder.poll_once()
    target_id = recorder.attach(T0)
    ids = [f"user:1-pixverse:a{k % 5}@example.com-video:{k}" for k in range(50)]
    # The open jobs, by the partial index of running jobs; the finished ones among some ids,
    # by the unique index (not by status: every finished job).
    (running,) = plans(engine, lambda: store.load(target_id))
    assert running == "SEARCH jobs USING INDEX ix_jobs_running (target_id=?)"
    (closed,) = plans(engine, lambda: store.closed_jobs(target_id, ids))
    assert closed == "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (target_id=? AND api_id=?)"
    assert len(store.closed_jobs(target_id, ids)) == 30


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


@dataclass(frozen=True, slots=True)
class ListedItem:
    """An item of a past list, rebuilt from the tables."""

    api_id: str
    type: str | None
    started_raw: str | None
    elapsed_s: int | None
    reply_url: str | None
    reply_ref: str | None


def listing_at(engine: Engine, poll_id: int) -> list[ListedItem]:
    """The list a past successful poll saw, rebuilt from the tables as docs/schema.md says."""
    with engine.connect() as conn:
        poll = conn.execute(
            select(Poll.target_id, Poll.server_time).where(Poll.id == poll_id, succeeded())
        ).one()
        listed = conn.execute(_listed_jobs(poll.target_id, poll_id)).all()
        return [_rebuild(conn, row.id, row.api_id, poll_id, poll.server_time) for row in listed]


def _listed_jobs(target_id: int, poll_id: int) -> Any:
    """Jobs whose latest transition at or before the poll is not `vanished`."""
    latest = (
        select(Transition.job_id, func.max(Transition.poll_id).label("poll_id"))
        .join(Job, Job.id == Transition.job_id)
        .where(Job.target_id == target_id, Transition.poll_id <= poll_id)
        .group_by(Transition.job_id)
        .subquery()
    )
    return (
        select(Job.id, Job.api_id)
        .join(latest, latest.c.job_id == Job.id)
        .join(
            Transition,
            (Transition.job_id == latest.c.job_id) & (Transition.poll_id == latest.c.poll_id),
        )
        .where(Transition.kind != TransitionKind.VANISHED)
        .order_by(Job.id)
    )


def _rebuild(
    conn: Connection, job_id: int, api_id: str, poll_id: int, server_time: float | None
) -> ListedItem:
    """The job's fields from its latest observation at or before the poll."""
    obs = conn.execute(
        select(
            Observation.poll_id,
            Observation.type,
            Observation.started_raw,
            Observation.reply_url,
            Observation.reply_ref,
            Observation.elapsed_s,
            Observation.elapsed_origin,
        )
        .where(Observation.job_id == job_id, Observation.poll_id <= poll_id)
        .order_by(Observation.poll_id.desc(), Observation.id.desc())
        .limit(1)
    ).one()
    if obs.poll_id == poll_id:
        elapsed = obs.elapsed_s
    elif obs.elapsed_origin is None or server_time is None:
        elapsed = None
    else:
        elapsed = math.floor(server_time - obs.elapsed_origin)
    return ListedItem(api_id, obs.type, obs.started_raw, elapsed, obs.reply_url, obs.reply_ref)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_past_list_is_rebuilt_exactly_from_the_tables(
    store: Store, engine: Engine, seed: int
) -> None:
    _, recorded, _ = simulated_run(store, seed)
    checked = 0
    for rec in recorded:
        if not isinstance(rec.result.answer, Snapshot):
            continue
        rebuilt = {i.api_id: i for i in listing_at(engine, rec.poll_id)}
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


def targets(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = select(Target.id, Target.url, Target.name, Target.service).order_by(Target.id)
        return [tuple(row) for row in conn.execute(query)]


def test_every_spelling_of_a_url_is_one_target(store: Store, engine: Engine) -> None:
    """Host case, a trailing slash, a default port, localhost: one target, whose URL stays as
    first given; a query makes another, of the same service, named apart."""
    first = store.target("https://API.useapi.net/v2/pixverse/scheduler/", T0)
    for spelling in (
        "https://api.useapi.net/v2/pixverse/scheduler",
        "https://api.useapi.net:443/v2/pixverse/scheduler/",
        "HTTPS://api.useapi.net/v2/pixverse/scheduler#x",
    ):
        assert store.target(spelling, T0 + 1) == first
    local = store.target("http://localhost:8765/v2/pixverse/scheduler/", T0)
    assert store.target("http://127.0.0.1:8765/v2/pixverse/scheduler", T0) == local
    queried = store.target("https://api.useapi.net/v2/pixverse/scheduler/?email=b@x.org", T0)
    kling = store.target("https://api.useapi.net/v1/kling/scheduler/", T0)
    other = store.target("http://127.0.0.1:9/a/", T0)
    assert targets(engine) == [
        (first, "https://API.useapi.net/v2/pixverse/scheduler/", "pixverse", "pixverse"),
        (local, "http://localhost:8765/v2/pixverse/scheduler/", "pixverse-2", "pixverse"),
        (queried, "https://api.useapi.net/v2/pixverse/scheduler/?email=b@x.org", "pixverse-3",
         "pixverse"),
        (kling, "https://api.useapi.net/v1/kling/scheduler/", "kling", "kling"),
        (other, "http://127.0.0.1:9/a/", "generic", "generic"),
    ]  # fmt: skip


def test_a_target_is_named_and_renamed_by_its_config(store: Store, engine: Engine) -> None:
    """Names are labels, ids the identity: a config's name (and service) relabels the target
    found by its URL, unless another target holds the name; a target created with a name has
    it, and without one keeps what it has."""
    main = store.target("http://127.0.0.1:9/v2/pixverse/scheduler/", T0, name="main")
    assert store.target("http://127.0.0.1:9/v2/pixverse/scheduler/", T0) == main
    assert targets(engine)[0][2:] == ("main", "pixverse")
    assert store.target("http://127.0.0.1:9/v2/pixverse/scheduler", T0, name="prod") == main
    kling = store.target("http://127.0.0.1:9/proxy/", T0, service="kling")
    assert store.target("http://127.0.0.1:9/proxy/", T0, name="k", service="kling2") == kling
    assert [row[2:] for row in targets(engine)] == [("prod", "pixverse"), ("k", "kling2")]
    with pytest.raises(TargetNameTaken, match="'prod' is taken by http://127\\.0"):
        store.target("http://127.0.0.1:9/proxy/", T0, name="prod")
    with pytest.raises(TargetNameTaken, match="'k' is taken"):
        store.target("http://127.0.0.1:9/new/", T0, name="k")
    with pytest.raises(ValueError, match="cannot be empty"):
        store.target("http://127.0.0.1:9/new/", T0, name=" ")
    assert [row[2:] for row in targets(engine)] == [("prod", "pixverse"), ("k", "kling2")]
    # A default name is the service's first free one, whatever names configs gave.
    assert store.target("http://127.0.0.1:9/v1/kling/scheduler/", T0) not in (main, kling)
    assert targets(engine)[-1][2:] == ("kling", "kling")


def test_a_recording_names_its_target(store: Store, engine: Engine) -> None:
    clock = ManualClock(T0)
    sim = Simulator(SimConfig(seed=3, initial_jobs=2), clock=clock)
    Pipeline(store, URL, lambda: ok(sim, clock), gap_s=30.0).poll_once()
    assert [row[1:] for row in targets(engine)] == [(URL, "pixverse", "pixverse")]
