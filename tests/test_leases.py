"""One recorder per target: leases, standby and takeover, with real daemon processes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError

from recorder import db
from recorder.cli import cli
from recorder.lease import LeaseLost, RecordingLease
from recorder.models import Job, Poll, Target, Transition
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.store import Store
from tests.feeding import ok

TOKEN = "tok-lease-51c0"
INTERVAL = 0.2
TIMEOUT = 1.0
TTL = 3 * INTERVAL + TIMEOUT  # what `recorder run` derives from those two


# --- the lease itself, on a manual clock -----------------------------------------------------


def test_a_second_claim_waits_then_takes_over_after_the_ttl(store: Store, engine: Engine) -> None:
    clock = ManualClock(1_750_000_000.0)
    sim = Simulator(SimConfig(seed=1, initial_jobs=2), clock=clock)
    first = Pipeline(store, "http://127.0.0.1:9/x/", lambda: ok(sim, clock), gap_s=30.0)
    target_id = first.attach(clock.t)
    lease_a = RecordingLease(engine, target_id, ttl_s=10.0, holder="a", clock=clock)
    lease_b = RecordingLease(engine, target_id, ttl_s=10.0, holder="b", clock=clock)
    assert lease_a.acquire().acquired
    first.lease = lease_a
    first.poll_once()

    clock.advance(5.0)
    first.poll_once()  # a poll row is the holder's heartbeat
    clock.advance(8.0)
    waiting = lease_b.acquire()
    assert (waiting.acquired, waiting.holder) == (False, "a")
    assert waiting.silent_s == pytest.approx(8.0, abs=0.2)

    clock.advance(3.0)  # 11 s of silence: more than the TTL
    taken = lease_b.acquire()
    assert (taken.acquired, taken.previous) == (True, "a")

    with engine.connect() as conn:
        polls_before = conn.scalar(select(func.count()).select_from(Poll))
    with pytest.raises(LeaseLost, match="now recorded by b"):
        first.poll_once()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Poll)) == polls_before


def test_a_released_lease_is_free_at_once(engine: Engine, store: Store) -> None:
    target_id = store.target("http://127.0.0.1:9/y/", 1_750_000_000.0)
    a = RecordingLease(engine, target_id, ttl_s=60.0, holder="a")
    b = RecordingLease(engine, target_id, ttl_s=60.0, holder="b")
    assert a.acquire().acquired
    assert not b.acquire().acquired
    a.release()
    assert b.acquire().acquired


# --- real processes ----------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimConfig(seed=12, token=TOKEN, kinds=(JobKind("video", 60, 3.0),), initial_jobs=2)
    with Simulator(config) as simulator:
        yield simulator


def daemon(db_url: str, url: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url", url]
    command += ["--interval", str(INTERVAL), "--timeout", str(TIMEOUT)]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT
        )


def wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def poll_count(db_url: str, url: str | None = None) -> int:
    engine = db.create(db_url)
    query = select(func.count()).select_from(Poll).join(Target, Target.id == Poll.target_id)
    if url is not None:
        query = query.where(Target.url == url)
    try:
        with engine.connect() as conn:
            return conn.scalar(query) or 0
    except DBAPIError:  # the daemons have not created the schema yet
        return 0
    finally:
        engine.dispose()


def assert_history_consistent(db_url: str) -> None:
    """One row per job, and each job's transitions alternate as one writer would write them."""
    engine = db.create(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Transition.job_id, Transition.kind).order_by(Transition.poll_id, Transition.id)
        ).all()
        jobs = {row.id: row.status for row in conn.execute(select(Job.id, Job.status))}
        duplicates = conn.execute(
            select(Job.target_id, Job.api_id)
            .group_by(Job.target_id, Job.api_id)
            .having(func.count() > 1)
        ).all()
    engine.dispose()
    assert duplicates == []
    kinds = defaultdict(list)
    for row in rows:
        kinds[row.job_id].append(row.kind)
    for job_id, sequence in kinds.items():
        assert sequence[0] == "appeared", sequence
        for earlier, later in itertools.pairwise(sequence):
            assert (earlier == "vanished") == (later == "reappeared"), sequence
        assert (sequence[-1] == "vanished") == (jobs[job_id] == "finished"), sequence


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=10)


def test_a_second_daemon_stands_by_and_takes_over_when_the_first_dies(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    first = daemon(db_url, sim.url, tmp_path / "first.log")
    second = None
    try:
        assert wait_for(lambda: poll_count(db_url) >= 5, 15)
        second = daemon(db_url, sim.url, tmp_path / "second.log")
        assert wait_for(lambda: "standby:" in (tmp_path / "second.log").read_text(), 15)
        before = poll_count(db_url)
        time.sleep(1.5)
        assert poll_count(db_url) > before  # the first one goes on recording
        assert "appeared" not in (tmp_path / "second.log").read_text()

        first.send_signal(signal.SIGKILL)  # dies without releasing the lease
        first.wait(timeout=10)
        died = poll_count(db_url)
        assert wait_for(lambda: "took over" in (tmp_path / "second.log").read_text(), TTL + 10)
        assert wait_for(lambda: poll_count(db_url) > died + 5, 15)
    finally:
        if first.poll() is None:
            first.kill()
        code = stop(second) if second is not None else 0
    assert code == 0, (tmp_path / "second.log").read_text()
    assert_history_consistent(db_url)


def test_a_daemon_that_stops_hands_over_at_once(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    first = daemon(db_url, sim.url, tmp_path / "first.log")
    assert wait_for(lambda: poll_count(db_url) >= 3, 15)
    second = daemon(db_url, sim.url, tmp_path / "second.log")
    try:
        assert wait_for(lambda: "standby:" in (tmp_path / "second.log").read_text(), 15)
        assert stop(first) == 0
        began = time.monotonic()
        assert wait_for(lambda: "the lease is free" in (tmp_path / "second.log").read_text(), 10)
        assert time.monotonic() - began < TTL  # released, not timed out
    finally:
        assert stop(second) == 0
    assert_history_consistent(db_url)


def test_daemons_on_different_targets_record_side_by_side(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    other_config = SimConfig(
        seed=13, token=TOKEN, kinds=(JobKind("image", 60, 2.0),), initial_jobs=1
    )
    with Simulator(other_config) as other:
        first = daemon(db_url, sim.url, tmp_path / "first.log")
        second = daemon(db_url, other.url, tmp_path / "second.log")
        try:
            assert wait_for(
                lambda: poll_count(db_url, sim.url) >= 10 and poll_count(db_url, other.url) >= 10,
                20,
            )
        finally:
            codes = (stop(first), stop(second))
    assert codes == (0, 0)
    for log in ("first.log", "second.log"):
        assert "standby" not in (tmp_path / log).read_text()
    assert_history_consistent(db_url)


def test_a_one_shot_poll_will_not_write_under_a_running_daemon(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    process = daemon(db_url, sim.url, tmp_path / "daemon.log")
    try:
        assert wait_for(lambda: poll_count(db_url) >= 3, 15)
        result = CliRunner().invoke(
            cli, ["--db", db_url, "poll", "--url", sim.url], env={"USEAPI_TOKEN": TOKEN}
        )
    finally:
        assert stop(process) == 0
    assert result.exit_code == 1
    assert "is being recorded by" in result.output and "not polling" in result.output
