"""End to end: `recorder run` as a real process against the simulator, with faults and skew."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from recorder import db
from recorder.daemon import gap_threshold
from recorder.models import Job, Poll
from recorder.simulator import Account, Faults, JobKind, SimConfig, Simulator
from tests.waiting import (
    Unmet,
    exit_code,
    peek,
    reader,
    ready_for_sigterm,
    running,
    stop,
    wait_for,
)

TOKEN = "tok-e2e-8d02b7"
INTERVAL = 0.25
SKEW_S = 45.0
FINISHED = 15  # jobs the recorded history must have seen end
# The advisory lock that serializes migrations on PostgreSQL (LOCK_KEY in migrations/env.py).
MIGRATION_LOCK = 7_220_431_905


@pytest.fixture
def faulty_sim() -> Iterator[Simulator]:
    faults = Faults(
        server_error=0.08,
        rate_limit=0.04,
        retry_after_s=1,
        garbage=0.04,
        slow=0.04,
        slow_s=0.6,
        skew_s=SKEW_S,
    )
    config = SimConfig(
        seed=21,
        token=TOKEN,
        kinds=(JobKind("video", 60.0, 4.0), JobKind("image", 120.0, 1.5)),
        accounts=(
            Account("alice@example.com", "12345", 8),
            Account("render-farm@example.org", "12345", 8),
        ),
        faults=faults,
        initial_jobs=3,
    )
    with Simulator(config) as sim:
        yield sim


def start_daemon(
    db_url: str, url: str, log_path: Path, interval: float = INTERVAL
) -> subprocess.Popen[bytes]:
    env = os.environ | {"USEAPI_TOKEN": TOKEN}
    command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url", url]
    command += ["--interval", str(interval), "--timeout", "2"]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_the_daemon_records_the_simulators_truth(
    faulty_sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "daemon.log"
    process = start_daemon(db_url, faulty_sim.url, log_path)

    def seen_enough() -> bool | Unmet:
        """Enough history to check: jobs that ended, faults, and a job closed across a gap."""
        running(process, log_path)
        finished = peek(live, select(Job.closed_across_gap).where(Job.status == "finished"))
        outcomes = {row.outcome for row in peek(live, select(Poll.outcome).distinct())}
        across = sum(bool(row.closed_across_gap) for row in finished)
        if len(finished) >= FINISHED and {"ok", "server"} <= outcomes and across:
            return True
        return Unmet(f"{len(finished)} finished ({across} across a gap), outcomes {outcomes}")

    try:
        with reader(db_url) as live:
            wait_for(seen_enough, timeout=120, interval=0.2, message="the history to check")
    finally:
        code = stop(process, log_path)
    log = log_path.read_text()
    assert code == 0, log
    assert TOKEN not in log
    assert "Traceback" not in log

    engine = db.create(db_url)
    with engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__)).all()
        polls = conn.execute(select(Poll.__table__).order_by(Poll.id)).all()
    engine.dispose()
    truth = {j.api_id: j for j in faulty_sim.truth()}
    outcomes = {p.outcome for p in polls}
    assert {"ok", "server"} <= outcomes, outcomes  # faults really happened

    # Every job that a successful poll must have seen was recorded, once.
    ok_polls = [p for p in polls if p.outcome == "ok"]
    must_see = {
        j.api_id
        for j in truth.values()
        for p in ok_polls
        if j.start <= p.sent_at.timestamp() and p.received_at.timestamp() < j.end
    }
    recorded = {j.api_id for j in jobs}
    assert must_see <= recorded
    assert len(recorded) == len(jobs)
    assert recorded <= set(truth)

    finished = [j for j in jobs if j.status == "finished"]
    assert len(finished) >= FINISHED
    slack = 0.005  # timestamps are stored to the microsecond; starts to the millisecond
    sent = {round(p.sent_at.timestamp(), 3): p for p in ok_polls}
    received = {round(p.received_at.timestamp(), 3): p for p in polls}
    for job in finished:
        true = truth[job.api_id]
        assert job.start_min is None or job.start_min.timestamp() - slack <= true.start
        assert true.start <= job.start_max.timestamp() + slack
        assert job.end_min.timestamp() - slack <= true.end <= job.end_max.timestamp() + slack
        true_duration = true.end - true.start
        assert job.duration_min_s - slack <= true_duration <= job.duration_max_s + slack
        # Our clock, not the server's: a 45 s skew must not leak into the start.
        assert abs(job.start_at.timestamp() - true.start) < 1.0
        if not job.closed_across_gap:
            # The end lies between the last poll that saw the job and the first that did not;
            # without a gap those are at most the gap threshold apart (plus their own answer
            # times), and end_at, halfway, is within half that span of the truth.
            last_seen = sent[round(job.end_min.timestamp(), 3)]
            first_unseen = received[round(job.end_max.timestamp(), 3)]
            silence = (first_unseen.sent_at - last_seen.received_at).total_seconds()
            assert silence <= gap_threshold(INTERVAL) + slack, (job, last_seen, first_unseen)
            half_span = (job.end_max - job.end_min).total_seconds() / 2
            assert abs(job.end_at.timestamp() - true.end) <= half_span + slack
    assert any(j.closed_across_gap for j in finished) or all(p.outcome == "ok" for p in polls)


def poll_count(engine: Engine) -> int:
    rows = peek(engine, select(func.count()).select_from(Poll))
    return int(rows[0][0]) if rows else 0


def test_sigint_also_finishes_and_exits_zero(
    faulty_sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "daemon.log"
    process = start_daemon(db_url, faulty_sim.url, log_path)
    try:
        with reader(db_url) as live:

            def three_polls() -> bool:
                running(process, log_path)
                return poll_count(live) >= 3

            wait_for(three_polls, message="3 polls recorded")
    finally:
        code = stop(process, log_path, signal.SIGINT)
    assert code == 0, log_path.read_text()
    engine = db.create(db_url)
    with engine.connect() as conn:
        polls = conn.execute(select(Poll.id)).all()
    engine.dispose()
    assert len(polls) >= 3


def test_sigterm_at_any_moment_exits_zero_promptly(
    faulty_sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    """Signals land anywhere from the moment the process catches SIGTERM (its first act):
    start-up (imports, migrations, the lease) or the scheduler's loop. None may kill the
    daemon, and none may hang it (stop's deadline)."""
    rng = random.Random(5)
    for attempt in range(8):
        log_path = tmp_path / f"daemon-{attempt}.log"
        process = start_daemon(db_url, faulty_sim.url, log_path, interval=0.05)
        try:
            ready_for_sigterm(process, log_path)
            time.sleep(0.0 if attempt == 0 else rng.uniform(0.0, 2.0))
        finally:
            code = stop(process, log_path)
        assert code == 0, log_path.read_text()


def test_sigterm_during_start_up_exits_zero(
    faulty_sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    """A SIGTERM that certainly lands during start-up: the database is held, so the daemon
    cannot have finished opening it when the signal comes. It stops cleanly once let go."""
    log_path = tmp_path / "daemon.log"
    with held_database(db_url) as waiting_on_it:
        process = start_daemon(db_url, faulty_sim.url, log_path)
        try:
            ready_for_sigterm(process, log_path)
            process.send_signal(signal.SIGTERM)

            def blocked() -> bool:
                running(process, log_path)
                return waiting_on_it()

            # Still starting after the signal (PostgreSQL can show it; SQLite waits anyway).
            wait_for(blocked, message="the daemon to wait on the held database")
        except BaseException:
            process.kill()
            process.wait()
            raise
    code = exit_code(process, log_path, after="SIGTERM and the database let go")
    assert code == 0, log_path.read_text()


@contextmanager
def held_database(db_url: str) -> Iterator[Callable[[], bool]]:
    """Hold what a daemon's start-up on a new database must wait for, until the block ends:
    PostgreSQL's migration lock, SQLite's file lock. Yields a check that the daemon waits."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database or "", isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")  # not even a reader gets past this
            yield lambda: True  # not observable; the lock alone keeps it starting
        finally:
            conn.close()
        return
    engine = db.create(db_url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})

            def waiting() -> bool:
                return bool(
                    conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND NOT granted AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())"
                        )
                    )
                )

            try:
                yield waiting
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()
