"""Database faults: a locked, full, read-only, stopped or killed database loses no poll."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

from recorder import store as store_module
from recorder.daemon import Daemon
from recorder.models import Job, Poll
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.store import Store
from tests.feeding import ok

T0 = 1_750_000_000.0
URL = "http://127.0.0.1:9/v2/pixverse/scheduler/"


def world() -> tuple[ManualClock, Simulator]:
    clock = ManualClock(T0)
    config = SimConfig(seed=8, kinds=(JobKind("video", 12.0, 40.0),), initial_jobs=4)
    return clock, Simulator(config, clock=clock)


def polls(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(Poll.id, Poll.sent_at, Poll.outcome).order_by(Poll.id)).all()


def assert_true_to(sim: Simulator, engine: Engine) -> None:
    truth = {j.api_id: j for j in sim.truth()}
    with engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__).where(Job.status == "finished")).all()
    assert jobs
    for job in jobs:
        true = truth[job.api_id]
        assert job.end_min.timestamp() - 1e-3 <= true.end <= job.end_max.timestamp() + 1e-3


def run_with_outage(
    store: Store,
    outage: Any,
    before: int = 4,
    during: int = 5,
    after: int = 8,
    lease_ttl_s: float | None = None,
) -> Simulator:
    """Poll through an outage of the database; every poll must end up written, in order."""
    clock, sim = world()
    pipeline = Pipeline(store, URL, lambda: ok(sim, clock), gap_s=30.0)
    daemon = Daemon(pipeline, interval=10.0, lease_ttl_s=lease_ttl_s)
    failed = []
    for step in range(before + during + after):
        if step == before:
            outage.__enter__()
        if step == before + during:
            outage.__exit__(None, None, None)
        recorded = daemon.tick()
        if recorded is None:
            failed.append(step)
        clock.advance(10.0)
    # The outage bit (a full disk may still take a row or two into free space), and only then.
    assert failed and all(before <= step < before + during for step in failed)
    assert failed[-1] == before + during - 1
    written = polls(store.engine)
    assert len(written) == before + during + after
    assert [p.sent_at for p in written] == sorted(p.sent_at for p in written)
    assert {p.outcome for p in written} == {"ok"}
    assert daemon.pipeline.pending == type(daemon.pipeline.pending)()
    daemon.release()
    return sim


class SqlitePragma:
    """Sets a pragma on every connection the engine hands out while active."""

    def __init__(self, engine: Engine, on: str, off: str) -> None:
        self.engine, self.on, self.off, self.active = engine, on, off, False
        event.listen(engine, "checkout", self._checkout)

    def _checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        dbapi_connection.execute(self.on if self.active else self.off)

    def __enter__(self) -> None:
        self.active = True

    def __exit__(self, *_exc: object) -> None:
        self.active = False


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_full_disk_keeps_the_polls_and_writes_them_later(store: Store, engine: Engine) -> None:
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    # max_page_count at the current size: the next page the database needs fails as a full disk.
    full = SqlitePragma(
        engine, f"PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823"
    )
    sim = run_with_outage(store, full, during=12)
    assert_true_to(sim, engine)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_read_only_database_keeps_the_polls_and_writes_them_later(
    store: Store, engine: Engine
) -> None:
    read_only = SqlitePragma(engine, "PRAGMA query_only = ON", "PRAGMA query_only = OFF")
    sim = run_with_outage(store, read_only)
    assert_true_to(sim, engine)


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("lease_ttl_s", [None, 60.0], ids=["no-lease", "lease"])
def test_a_stopped_postgresql_keeps_the_polls_and_writes_them_later(
    store: Store, engine: Engine, pg_server: Any, lease_ttl_s: float | None
) -> None:
    # With a lease, the advisory lock's session dies with the server: the daemon polls on
    # (nobody can take the target meanwhile), takes the lock again, and writes what it kept.
    sim = run_with_outage(store, pg_server.down(), lease_ttl_s=lease_ttl_s)
    assert_true_to(sim, engine)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_locked_sqlite_database_is_waited_for(store: Store, engine: Engine, db_url: str) -> None:
    clock, sim = world()
    recorder = Pipeline(store, URL, lambda: ok(sim, clock), gap_s=30.0)
    recorder.poll_once()
    locked = threading.Event()

    def other_writer() -> None:
        other = sqlite3.connect(engine.url.database or "", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would take it
        locked.set()
        time.sleep(1.5)
        other.execute("ROLLBACK")
        other.close()

    holder = threading.Thread(target=other_writer)
    holder.start()
    locked.wait(5)
    began = time.monotonic()
    clock.advance(10.0)
    recorded = recorder.poll_once()  # waits on the busy timeout, then writes
    waited = time.monotonic() - began
    holder.join()
    assert recorded.poll_id > 0 and waited >= 1.0
    assert len(polls(engine)) == 2


def test_a_transaction_killed_mid_write_leaves_nothing_half_written(
    store: Store, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, sim = world()
    recorder = Pipeline(store, URL, lambda: ok(sim, clock), gap_s=30.0)
    insert_opened = store_module._insert_opened

    def dies_half_way(conn: Any, *args: Any) -> Any:
        insert_opened(conn, *args)  # the poll row and the jobs are written...
        if conn.dialect.name == "postgresql":  # ...then the server kills the transaction
            with engine.connect() as killer:
                pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
                killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                killer.commit()
            conn.exec_driver_sql("SELECT 1")
        raise RuntimeError("the process died mid-write")

    monkeypatch.setattr(store_module, "_insert_opened", dies_half_way)
    with pytest.raises(Exception):  # noqa: B017, PT011 (which one depends on the backend)
        recorder.poll_once()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Poll)) == 0
        assert conn.scalar(select(func.count()).select_from(Job)) == 0
    monkeypatch.undo()
    recorder.flush()  # the poll was kept: written now, whole
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Poll)) == 1
        assert conn.scalar(select(func.count()).select_from(Job)) == 4
