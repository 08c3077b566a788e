"""One recorder per target: leases, standby and takeover, with real daemon processes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from recorder import db
from recorder.cli import cli
from recorder.lease import LeaseLost, RecordingLease
from recorder.models import Job, Poll, Target, Transition
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.store import Store
from tests.feeding import ok
from tests.waiting import DEADLINE_S, peek, reader, running, stop, wait_for

TOKEN = "tok-lease-51c0"
INTERVAL = 0.2
TIMEOUT = 1.0


# --- the lease itself, on a manual clock -----------------------------------------------------


def test_a_live_holder_keeps_its_target_and_a_dead_one_hands_it_over_at_once(
    store: Store, engine: Engine
) -> None:
    clock = ManualClock(1_750_000_000.0)
    sim = Simulator(SimConfig(seed=1, initial_jobs=2), clock=clock)
    first = Pipeline(store, "http://127.0.0.1:9/x/", lambda: ok(sim, clock), gap_s=30.0)
    target_id = first.attach(clock.t)
    lease_a = RecordingLease(engine, target_id, ttl_s=10.0, holder="a", clock=clock)
    lease_b = RecordingLease(engine, target_id, ttl_s=10.0, holder="b", clock=clock)
    try:
        assert lease_a.acquire().acquired
        first.lease = lease_a
        first.poll_once()

        clock.advance(5.0)
        first.poll_once()
        clock.advance(3600.0)  # an hour of silence: far past the TTL, but `a` is alive
        waiting = lease_b.acquire()
        assert (waiting.acquired, waiting.holder) == (False, "a")
        assert waiting.silent_s == pytest.approx(3600.0, abs=0.2)

        lease_a.lock.release()  # what the OS does when a's process dies: the row stays
        taken = lease_b.acquire()
        assert (taken.acquired, taken.previous) == (True, "a")

        with engine.connect() as conn:
            polls_before = conn.scalar(select(func.count()).select_from(Poll))
        with pytest.raises(LeaseLost, match="now recorded by b"):
            first.poll_once()  # a recorder that lost its lock never writes after another took over
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Poll)) == polls_before
        assert not lease_a.keep()  # and it cannot take the lock back while b holds it
    finally:
        lease_a.lock.release()
        lease_b.release()


def test_a_released_lease_is_free_at_once(engine: Engine, store: Store) -> None:
    target_id = store.target("http://127.0.0.1:9/y/", 1_750_000_000.0)
    a = RecordingLease(engine, target_id, ttl_s=60.0, holder="a")
    b = RecordingLease(engine, target_id, ttl_s=60.0, holder="b")
    try:
        assert a.acquire().acquired
        assert not b.acquire().acquired
        a.release()
        assert b.acquire().acquired
    finally:
        a.release()
        b.release()


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


def poll_count(live: Engine, url: str | None = None) -> int:
    query = select(func.count()).select_from(Poll).join(Target, Target.id == Poll.target_id)
    if url is not None:
        query = query.where(Target.url == url)
    rows = peek(live, query)  # none before the daemons have created the schema
    return int(rows[0][0]) if rows else 0


def in_log(log: Path, text: str, *processes: subprocess.Popen[bytes]) -> bool:
    """Whether `text` is in the log yet (failing at once if a daemon has died)."""
    for process in processes:
        running(process, log)
    return text in log.read_text()


def assert_history_consistent(db_url: str) -> None:
    """One row per job, and each job's transitions alternate as one writer would write them."""
    engine = db.create(db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Transition.job_id, Transition.kind).order_by(
                Transition.poll_id, Transition.job_id
            )
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


def test_a_second_daemon_stands_by_and_takes_over_when_the_first_dies(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = daemon(db_url, sim.url, first_log)
    second = None
    try:
        with reader(db_url) as live:
            wait_for(lambda: running(first, first_log) or poll_count(live) >= 5, message="5 polls")
            second = daemon(db_url, sim.url, second_log)
            wait_for(lambda: in_log(second_log, "standby:", second), message="a standby")
            before = poll_count(live)
            wait_for(
                lambda: running(first, first_log) or poll_count(live) > before,
                message="the first daemon to go on recording",
            )
            assert "appeared" not in second_log.read_text()

            first.send_signal(signal.SIGKILL)  # dies without releasing the lease
            first.wait(timeout=DEADLINE_S)
            died = poll_count(live)
            wait_for(lambda: in_log(second_log, "took over", second), message="a takeover")
            wait_for(
                lambda: running(second, second_log) or poll_count(live) > died + 5,
                message="the second daemon to record",
            )
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        code = stop(second, second_log) if second is not None else 0
    assert code == 0, second_log.read_text()
    assert_history_consistent(db_url)


def test_a_daemon_that_stops_hands_over_at_once(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = daemon(db_url, sim.url, first_log)
    with reader(db_url) as live:
        wait_for(lambda: running(first, first_log) or poll_count(live) >= 3, message="3 polls")
    second = daemon(db_url, sim.url, second_log)
    try:
        wait_for(lambda: in_log(second_log, "standby:", second), message="a standby")
        assert stop(first, first_log) == 0
        wait_for(lambda: in_log(second_log, "the lease is free", second), message="a handover")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        code = stop(second, second_log)
    assert code == 0, second_log.read_text()
    # Released, not taken over from a holder presumed dead: whatever the time it took.
    assert "took over" not in second_log.read_text()
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
            with reader(db_url) as live:

                def both_recorded() -> bool:
                    running(first, tmp_path / "first.log")
                    running(second, tmp_path / "second.log")
                    return poll_count(live, sim.url) >= 10 and poll_count(live, other.url) >= 10

                wait_for(both_recorded, message="10 polls of each target")
        finally:
            codes = (stop(first, tmp_path / "first.log"), stop(second, tmp_path / "second.log"))
    assert codes == (0, 0)
    for log in ("first.log", "second.log"):
        assert "standby" not in (tmp_path / log).read_text()
    assert_history_consistent(db_url)


def test_a_one_shot_poll_will_not_write_under_a_running_daemon(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    process = daemon(db_url, sim.url, log)
    try:
        with reader(db_url) as live:
            wait_for(lambda: running(process, log) or poll_count(live) >= 3, message="3 polls")
        result = CliRunner().invoke(
            cli, ["--db", db_url, "poll", "--url", sim.url], env={"USEAPI_TOKEN": TOKEN}
        )
    finally:
        code = stop(process, log)
    assert code == 0, log.read_text()
    assert result.exit_code == 1
    assert "is being recorded by" in result.output and "not polling" in result.output
